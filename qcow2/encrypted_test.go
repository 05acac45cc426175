package qcow2_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/encryption"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// passphrases answers each image's request from a table keyed by the
// image's name as the chain names it ("" for any image), once: a second
// request means the first opened no key slot.
func passphrases(keys map[string]string) func(qcow2.KeyRequest) ([]byte, error) {
	return func(r qcow2.KeyRequest) ([]byte, error) {
		if r.Tries > 0 {
			return nil, nil
		}
		for _, name := range []string{r.Name, filepath.Base(r.Name), ""} {
			if p, ok := keys[name]; ok {
				return []byte(p), nil
			}
		}
		return nil, nil
	}
}

// encryptedWrites put data across sectors, clusters and subclusters, with
// holes and zeros between them.
var encryptedWrites = []string{
	"write -P 0x11 0 64k", "write -P 0x22 70k 3k", "write -P 0x33 200k 130k",
	"write -z 256k 16k", "write -P 0x44 1M 512", "write -P 0x55 3M 1M",
}

// TestLUKSMatchesQEMU reads LUKS images of every cipher, mode, IV
// generator and hash QEMU creates and we support, and compares with
// qemu-img convert of the same image.
func TestLUKSMatchesQEMU(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	specs := []string{
		"aes-256 xts plain64 sha256", // QEMU's default
		"aes-128 xts plain64 sha1", "aes-192 xts plain64 sha512", "aes-256 xts plain sha256",
		"aes-256 xts essiv:sha256 sha256",
		"aes-128 cbc plain64 sha256", "aes-256 cbc essiv:sha256 sha384", "aes-128 cbc plain sha224",
		"aes-128 cbc essiv:sha256 ripemd160", "aes-256 cbc plain64 md5",
		"aes-256 ecb plain64 sha256", "aes-128 ctr plain64 sha256", "aes-256 ctr essiv:sha256 sha256",
		"twofish-256 xts plain64 sha256", "twofish-128 cbc essiv:sha256 sha1", "twofish-192 xts plain64 sha512",
		"cast5-128 cbc plain64 sha256", "cast5-128 cbc essiv:md5 sha256",
	}
	for _, spec := range specs {
		t.Run(strings.ReplaceAll(spec, " ", "-"), func(t *testing.T) {
			t.Parallel()
			f := strings.Fields(spec)
			ivgen, ivhash, _ := strings.Cut(f[2], ":")
			opts := []string{"encrypt.format=luks", "encrypt.iter-time=10", "encrypt.cipher-alg=" + f[0],
				"encrypt.cipher-mode=" + f[1], "encrypt.ivgen-alg=" + ivgen, "encrypt.hash-alg=" + f[3], "cluster_size=64k"}
			if ivhash != "" {
				opts = append(opts, "encrypt.ivgen-hash-alg="+ivhash)
			}
			path := filepath.Join(t.TempDir(), "luks.qcow2")
			qemutest.CreateEncrypted(t, path, "qcow2", "5M", "secret "+spec, opts...)
			qemutest.IOEncrypted(t, path, "qcow2", []string{"secret " + spec}, encryptedWrites...)
			img, err := qcow2.Open(path, qcow2.Options{Passphrase: passphrases(map[string]string{"": "secret " + spec})})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			compareWithRaw(t, img, qemutest.RawEncrypted(t, path, "qcow2", "secret "+spec))
			in, err := img.Info()
			if err != nil {
				t.Fatal(err)
			}
			e := in.FormatSpecific.Data.Encrypt
			if got := fmt.Sprintf("%s %s %s %s", e.CipherAlg, e.CipherMode, strings.TrimSuffix(e.IVGenAlg+":"+e.IVGenHashAlg, ":"), e.HashAlg); got != spec {
				t.Errorf("info says %q, the image was made as %q", got, spec)
			}
		})
	}
}

// TestEncryptedLayouts covers what beside the cipher changes where the
// bytes lie: subclusters, compressed clusters (QEMU stores them
// unencrypted), small clusters, version 2, an external data file, and the
// legacy AES scheme in qcow2 and qcow version 1.
func TestEncryptedLayouts(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	luks := []string{"encrypt.format=luks", "encrypt.iter-time=10"}
	tests := []struct {
		name   string
		format string
		opts   []string
		writes []string
	}{
		{"luks-extended-l2", "qcow2", append(luks, "extended_l2=on", "cluster_size=64k"),
			[]string{"write -P 0x11 2k 2k", "write -P 0x22 62k 4k", "write -z 128k 8k", "write -P 0x33 1M 100k"}},
		{"luks-compressed", "qcow2", luks, []string{"write -c -P 0x11 0 64k", "write -P 0x22 64k 64k", "write -c -P 0x33 1M 64k"}},
		{"luks-512-byte-clusters", "qcow2", append(luks, "cluster_size=512"), encryptedWrites},
		{"luks-v2", "qcow2", append(luks, "compat=0.10"), encryptedWrites},
		{"luks-data-file", "qcow2", append(luks, "data_file=data.raw"), encryptedWrites},
		{"aes-qcow2", "qcow2", []string{"encrypt.format=aes"}, encryptedWrites},
		{"aes-qcow2-4k", "qcow2", []string{"encrypt.format=aes", "cluster_size=4k"}, encryptedWrites},
		{"aes-qcow", "qcow", []string{"encrypt.format=aes"}, []string{"write -P 0x11 0 64k", "write -P 0x22 70k 3k", "write -P 0x55 3M 1M"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "enc."+tc.format)
			qemutest.CreateEncrypted(t, path, tc.format, "5M", "pass-"+tc.name, tc.opts...)
			qemutest.IOEncrypted(t, path, tc.format, []string{"pass-" + tc.name}, tc.writes...)
			img, err := qcow2.Open(path, qcow2.Options{Passphrase: passphrases(map[string]string{"": "pass-" + tc.name})})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			compareWithRaw(t, img, qemutest.RawEncrypted(t, path, tc.format, "pass-"+tc.name))
		})
	}
}

// TestEncryptedChains reads chains where only some layers are encrypted,
// each with its own passphrase, asked for by the name the chain gives it.
func TestEncryptedChains(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	luks := []string{"encrypt.format=luks", "encrypt.iter-time=10"}
	tests := []struct {
		name      string
		encrypted [2]bool // base, top
	}{
		{"encrypted-base", [2]bool{true, false}},
		{"encrypted-top", [2]bool{false, true}},
		{"both", [2]bool{true, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
			keys := map[string]string{}
			var basePass, topPass string
			if tc.encrypted[0] {
				basePass = "base secret"
				keys["base.qcow2"] = basePass
				qemutest.CreateEncrypted(t, base, "qcow2", "4M", basePass, luks...)
			} else {
				qemutest.Create(t, base, "qcow2", "4M")
			}
			qemutest.IOEncrypted(t, base, "qcow2", []string{basePass}, "write -P 0x11 0 1M", "write -P 0x12 3M 512k")
			backing := []string{"backing_file=base.qcow2", "backing_fmt=qcow2"}
			if tc.encrypted[1] {
				topPass = "top secret"
				keys["top.qcow2"] = topPass
				qemutest.CreateEncrypted(t, top, "qcow2", "4M", topPass, append(luks, backing...)...)
			} else {
				qemutest.Create(t, top, "qcow2", "4M", backing...)
			}
			qemutest.IOEncrypted(t, top, "qcow2", []string{topPass, basePass}, "write -P 0x21 512k 1M", "write -z 3M 64k")
			img, err := qcow2.Open(top, qcow2.Options{Passphrase: passphrases(keys)})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			compareWithRaw(t, img, qemutest.RawEncrypted(t, top, "qcow2", topPass, basePass))

			// One passphrase for every layer opens none that has another.
			if tc.encrypted[0] && tc.encrypted[1] {
				_, err := qcow2.Open(top, qcow2.Options{Passphrase: passphrases(map[string]string{"": topPass})})
				var pe *qcow2.PassphraseError
				if !errors.As(err, &pe) || pe.Image != "base.qcow2" || pe.Missing {
					t.Fatalf("base opened with the top's passphrase: %v", err)
				}
			}
		})
	}
}

// TestPassphraseErrors: a missing or wrong passphrase is one clear error
// naming the image; a caller may ask again; info opens the image locked.
func TestPassphraseErrors(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	path := filepath.Join(dir, "luks.qcow2")
	qemutest.CreateEncrypted(t, path, "qcow2", "1M", "right", "encrypt.format=luks", "encrypt.iter-time=10")
	qemutest.IOEncrypted(t, path, "qcow2", []string{"right"}, "write -P 0x11 0 64k")

	tests := []struct {
		name    string
		answers []string // one a request; past its end, none
		wantErr string
	}{
		{"no passphrase", nil, path + " is encrypted (LUKS) and no passphrase was given"},
		{"wrong", []string{"wrong"}, "no key slot of " + path + " opens with this passphrase"},
		{"wrong twice", []string{"wrong", "also wrong"}, "no key slot of " + path + " opens with this passphrase"},
		{"right after a wrong one", []string{"wrong", "right"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			asked := 0
			img, err := qcow2.Open(path, qcow2.Options{Passphrase: func(r qcow2.KeyRequest) ([]byte, error) {
				if r.Tries != asked || r.Method != "LUKS" || r.Name != path {
					t.Errorf("request %+v, want try %d for %s", r, asked, path)
				}
				asked++
				if r.Tries < len(tc.answers) {
					return []byte(tc.answers[r.Tries]), nil
				}
				return nil, nil
			}})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				img.Close()
				return
			}
			var pe *qcow2.PassphraseError
			if err == nil || err.Error() != tc.wantErr || !errors.As(err, &pe) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
		})
	}

	img, err := qcow2.Open(path, qcow2.Options{AllowLocked: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAt(make([]byte, 4096), 0); !errors.Is(err, qcow2.ErrNoKey) {
		t.Fatalf("reading a locked image: %v, want ErrNoKey", err)
	}
	if _, err := img.ReadAt(make([]byte, 4096), 512<<10); err != nil {
		t.Fatalf("reading an unallocated range of a locked image: %v", err)
	}
	if _, _, ok := img.HostRange(0, 64<<10); ok {
		t.Fatal("HostRange offers encrypted bytes for splicing")
	}
}

// TestUnsupportedCiphers: what we cannot decrypt fails at open, naming it.
func TestUnsupportedCiphers(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	path := filepath.Join(t.TempDir(), "serpent.qcow2")
	qemutest.CreateEncrypted(t, path, "qcow2", "1M", "p", "encrypt.format=luks", "encrypt.iter-time=10", "encrypt.cipher-alg=serpent-256")
	_, err := qcow2.Open(path, qcow2.Options{Passphrase: passphrases(map[string]string{"": "p"})})
	var fe *qcow2.FormatError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), `cipher "serpent" is not supported`) {
		t.Fatalf("serpent image: %v", err)
	}
}

// TestKDFLimit: a slot whose PBKDF2 would take longer than the limit is
// not tried, and the error says so.
func TestKDFLimit(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	path := filepath.Join(t.TempDir(), "slow.qcow2")
	// 300 ms of PBKDF2 where QEMU made it; the limit is far below that.
	qemutest.CreateEncrypted(t, path, "qcow2", "1M", "p", "encrypt.format=luks", "encrypt.iter-time=300")
	_, err := qcow2.Open(path, qcow2.Options{Passphrase: passphrases(map[string]string{"": "p"}), MaxKDFTime: 1})
	var le *encryption.KDFLimitError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), "slot 0:") {
		t.Fatalf("error %v, want the slot refused for its PBKDF2 time", err)
	}
	img, err := qcow2.Open(path, qcow2.Options{Passphrase: passphrases(map[string]string{"": "p"})})
	if err != nil {
		t.Fatalf("default limit: %v", err)
	}
	img.Close()
}
