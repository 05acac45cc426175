package encryption

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	//lint:ignore SA1019 the cipher of images QEMU makes.
	"golang.org/x/crypto/twofish"
	"golang.org/x/crypto/xts"
)

// testdata/aes-128-cbc.luks is the start of the LUKS area of the committed
// testdata/images/v3-luks.qcow2 (testdata/make-images.sh): the header and
// the material of its one active key slot, passphrase "qcowmount". The
// area QEMU made is 516 KiB (eight slots); the tests read the file as an
// area of that size, so that what lies past the file reads as missing.
const (
	fixture     = "testdata/aes-128-cbc.luks"
	fixtureArea = 528384
)

func readFixture(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseLUKS(t *testing.T) {
	l, err := ParseLUKS(bytes.NewReader(readFixture(t)), fixtureArea)
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{Cipher: "aes", Mode: "cbc", IVGen: "plain64", KeyBytes: 16}
	if l.Spec != want || l.Hash != "sha256" || l.PayloadOffset != fixtureArea || l.Spec.AlgorithmName() != "aes-128" {
		t.Fatalf("parsed %+v (%s), want %+v with sha256", l.Spec, l.Spec.AlgorithmName(), want)
	}
	for i, s := range l.Slots {
		if s.Active != (i == 0) || s.KeyOffset != 4096+int64(i)*65536 {
			t.Errorf("slot %d: %+v", i, s)
		}
	}
}

func TestUnlock(t *testing.T) {
	b := readFixture(t)
	l, err := ParseLUKS(bytes.NewReader(b), fixtureArea)
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.Unlock([]byte("qcowmount"), 0)
	if err != nil || c.spec != l.Spec {
		t.Fatalf("right passphrase: %v", err)
	}
	var wrong *WrongPassphraseError
	if _, err := l.Unlock([]byte("qcowmount\n"), 0); !errors.As(err, &wrong) || len(wrong.NotTried) != 0 {
		t.Fatalf("wrong passphrase: %v", err)
	}
	// Key material cut short is a header error, never a wrong passphrase.
	l, err = ParseLUKS(bytes.NewReader(b[:8192]), fixtureArea)
	if err != nil {
		t.Fatal(err)
	}
	var he *HeaderError
	if _, err := l.Unlock([]byte("qcowmount"), 0); !errors.As(err, &he) || !strings.Contains(err.Error(), "cut short") {
		t.Fatalf("material cut short: %v", err)
	}
}

func TestUnlockHonoursKDFLimit(t *testing.T) {
	b := readFixture(t)
	binary.BigEndian.PutUint32(b[luksSlotsAt+4:], 0xffffffff) // slot 0's iterations
	l, err := ParseLUKS(bytes.NewReader(b), fixtureArea)
	if err != nil {
		t.Fatal(err)
	}
	// Were the limit not honoured, the derivation would run for hours:
	// the test fails after 30 s instead of waiting for it.
	done := make(chan error, 1)
	go func() {
		_, err := l.Unlock([]byte("qcowmount"), time.Second)
		done <- err
	}()
	select {
	case err := <-done:
		var le *KDFLimitError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), "slot 0: 4294967295 + ") {
			t.Fatalf("error %v, want slot 0 refused for its iterations", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still deriving after 30 s: the limit was not honoured")
	}
}

// TestKDFLimitBoundsTheWholeAttempt: eight active slots, each alone just
// under the limit, cost a wrong passphrase about the limit, not eight
// times it divided by the CPUs: the slots that do not fit are listed as
// not tried.
func TestKDFLimitBoundsTheWholeAttempt(t *testing.T) {
	l, err := ParseLUKS(bytes.NewReader(readFixture(t)), fixtureArea)
	if err != nil {
		t.Fatal(err)
	}
	total, chain := kdfWork(hashes[l.Hash], 1, l.Spec.KeyBytes)
	perCPU := max(total/float64(cpus()), chain) // of one iteration of one slot
	rate := kdfRate(hashes[l.Hash], l.Hash)
	// Each slot takes 0.8 of the limit, and at least cheapIterations, below
	// which the plan does not time a slot: on a slow machine (an emulated
	// s390x) a second holds fewer than that, and the limit grows to fit.
	iters := uint32(max(0.8*rate, cheapIterations+1) / perCPU)
	limit := time.Duration(float64(iters) * perCPU / (0.8 * rate) * float64(time.Second))
	for i := range l.Slots {
		l.Slots[i] = l.Slots[0] // the same key material: a wrong passphrase opens none
		l.Slots[i].Iterations = iters
	}
	l.DigestIters = 1000
	start := time.Now()
	_, err = l.Unlock([]byte("not the passphrase"), limit)
	took := time.Since(start)
	var wrong *WrongPassphraseError
	if !errors.As(err, &wrong) || len(wrong.NotTried) == 0 || !strings.Contains(err.Error(), "would bring the attempt to about") {
		t.Fatalf("error %v, want a wrong passphrase with slots not tried", err)
	}
	// Each slot takes 0.8 of the limit on every CPU it can use: no more
	// slots than CPUs fit in it.
	if tried := len(l.Slots) - len(wrong.NotTried); tried < 1 || tried > cpus() {
		t.Errorf("%d slots tried, want 1 to %d", tried, cpus())
	}
	t.Logf("%d iterations a slot, %d slots not tried, %v in all (limit %v)", iters, len(wrong.NotTried), took, limit)
}

// TestHeadersMatchCryptsetup: LUKS headers QEMU writes, of every cipher,
// mode, IV generator and hash it makes and cryptsetup knows, read by
// ParseLUKS and by cryptsetup luksDump: the same fields.
func TestHeadersMatchCryptsetup(t *testing.T) {
	qemutest.Require(t, "qemu-img", "cryptsetup")
	// Each cipher, mode, IV generator and hash at least once.
	specs := []string{
		"aes-256 xts plain64 sha256", "aes-192 xts plain64 sha512", "aes-128 cbc plain sha224",
		"aes-256 cbc essiv:sha256 sha384", "aes-256 ecb plain64 ripemd160", "aes-128 ctr plain64 sha1",
		"twofish-128 cbc essiv:sha256 sha256", "cast5-128 cbc plain64 sha256", // cryptsetup refuses md5
	}
	for _, spec := range specs {
		t.Run(strings.ReplaceAll(spec, " ", "-"), func(t *testing.T) {
			t.Parallel()
			f := strings.Fields(spec)
			ivgen, ivhash, _ := strings.Cut(f[2], ":")
			opts := []string{"iter-time=10", "cipher-alg=" + f[0], "cipher-mode=" + f[1], "ivgen-alg=" + ivgen, "hash-alg=" + f[3]}
			if ivhash != "" {
				opts = append(opts, "ivgen-hash-alg="+ivhash)
			}
			path := filepath.Join(t.TempDir(), "disk.luks")
			qemutest.CreateEncrypted(t, path, "luks", "1M", "pass", opts...)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			l, err := ParseLUKS(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			ours := fmt.Sprintf("Version: 1\nCipher name: %s\nCipher mode: %s\nHash spec: %s\nPayload offset: %d\nMK bits: %d\nMK digest: %s\nMK salt: %s\nMK iterations: %d\nUUID: %s\n",
				l.Spec.Cipher, strings.TrimPrefix(l.Spec.String(), l.Spec.Cipher+"-"), l.Hash, l.PayloadOffset/SectorSize, 8*l.Spec.KeyBytes,
				hexSpaced(l.digest[:]), hexSpaced(l.salt[:]), l.DigestIters, l.UUID)
			for i, s := range l.Slots {
				if !s.Active {
					ours += fmt.Sprintf("Key Slot %d: DISABLED\n", i)
					continue
				}
				ours += fmt.Sprintf("Key Slot %d: ENABLED\nIterations: %d\nSalt: %s\nKey material offset: %d\nAF stripes: %d\n",
					i, s.Iterations, hexSpaced(s.Salt[:]), s.KeyOffset/SectorSize, s.Stripes)
			}
			// cryptsetup's lines, without its tabs and the wrapping of
			// long hex strings.
			dump := qemutest.Run(t, "cryptsetup", "luksDump", path)
			var theirs strings.Builder
			for _, line := range strings.Split(dump, "\n") {
				line = strings.Join(strings.Fields(line), " ")
				switch {
				case line == "" || strings.HasPrefix(line, "LUKS header information"):
				case !strings.Contains(line, ":"): // a continued hex string
					theirs.WriteString(" " + line)
				default:
					if theirs.Len() > 0 {
						theirs.WriteString("\n")
					}
					theirs.WriteString(line)
				}
			}
			if got := strings.TrimSpace(theirs.String()); got != strings.TrimSpace(ours) {
				t.Errorf("cryptsetup luksDump says\n%s\nParseLUKS read\n%s", got, ours)
			}
		})
	}
}

// hexSpaced writes bytes as cryptsetup luksDump does: hex pairs apart.
func hexSpaced(b []byte) string {
	var parts []string
	for _, c := range b {
		parts = append(parts, fmt.Sprintf("%02x", c))
	}
	return strings.Join(parts, " ")
}

// TestParseLUKSRefuses: each field QEMU checks, and what we check beside,
// is refused with an error naming it, at its offset in the header.
func TestParseLUKSRefuses(t *testing.T) {
	put32 := func(off int, v uint32) func([]byte) { return func(b []byte) { binary.BigEndian.PutUint32(b[off:], v) } }
	put16 := func(off int, v uint16) func([]byte) { return func(b []byte) { binary.BigEndian.PutUint16(b[off:], v) } }
	text := func(off int, s string) func([]byte) {
		return func(b []byte) { clear(b[off : off+32]); copy(b[off:], s) }
	}
	slot := func(i, field int) int { return luksSlotsAt + i*luksSlotBytes + field }
	tests := []struct {
		name   string
		patch  func([]byte)
		area   int64
		field  string
		offset int64
		msg    string
	}{
		{"area shorter than a header", nil, 591, "size", 0, "shorter than a LUKS1 header"},
		{"magic", put16(4, 0), fixtureArea, "magic", 0, "not LUKS's magic"},
		{"LUKS2", put16(6, 2), fixtureArea, "version", 6, "LUKS version 2"},
		{"cipher name unterminated", func(b []byte) { copy(b[8:40], strings.Repeat("a", 32)) }, fixtureArea, "cipher_name", 8, "not NUL terminated"},
		{"cipher mode unterminated", func(b []byte) { copy(b[40:72], strings.Repeat("a", 32)) }, fixtureArea, "cipher_mode", 40, "not NUL terminated"},
		{"hash unterminated", func(b []byte) { copy(b[72:104], strings.Repeat("a", 32)) }, fixtureArea, "hash_spec", 72, "not NUL terminated"},
		{"mode without IV generator", text(40, "cbc"), fixtureArea, "cipher_mode", 40, "not of the form"},
		{"essiv without hash", text(40, "cbc-essiv"), fixtureArea, "cipher_mode", 40, "essiv needs a hash"},
		{"essiv with a digest no key fits", text(40, "cbc-essiv:sha1"), fixtureArea, "cipher", 8, "no aes key has the 20 bytes"},
		{"unknown hash", text(72, "sha3-256"), fixtureArea, "hash_spec", 72, `hash "sha3-256" is not supported`},
		{"serpent", text(8, "serpent"), fixtureArea, "cipher", 8, `cipher "serpent" is not supported`},
		{"unknown mode", text(40, "ofb-plain64"), fixtureArea, "cipher", 8, `cipher mode "ofb" is not supported`},
		{"unknown IV generator", text(40, "cbc-benbi"), fixtureArea, "cipher", 8, `IV generator "benbi" is not supported`},
		{"key of 1000 bytes", put32(108, 1000), fixtureArea, "cipher", 8, "key of 1000 bytes"},
		{"cast5 in xts", func(b []byte) { text(8, "cast5")(b); text(40, "xts-plain64")(b); put32(108, 32)(b) }, fixtureArea, "cipher", 8, "xts mode cannot use"},
		{"payload over the header", put32(104, 7), fixtureArea, "payload_offset", 104, "overlaps the header"},
		{"payload past the area", put32(104, 0xffffffff), fixtureArea, "payload_offset", 104, "outside the LUKS area"},
		{"digest iterations zero", put32(164, 0), fixtureArea, "mk_digest_iter", 164, "zero"},
		{"stripes 3999", put32(slot(0, 44), 3999), fixtureArea, "key slot stripes", int64(slot(0, 44)), "3999 stripes"},
		{"stripes for gigabytes", put32(slot(3, 44), 1<<30), fixtureArea, "key slot stripes", int64(slot(3, 44)), "1073741824 stripes"},
		{"slot state", put32(slot(1, 0), 1), fixtureArea, "key slot active", int64(slot(1, 0)), "neither enabled nor disabled"},
		{"active slot without iterations", put32(slot(0, 4), 0), fixtureArea, "key slot iterations", int64(slot(0, 4)), "iteration count of zero"},
		{"key material over the header", put32(slot(0, 40), 1), fixtureArea, "key slot offset", int64(slot(0, 40)), "overlaps the header"},
		{"key material past the payload", put32(slot(7, 40), 0xffffff00), fixtureArea, "key slot offset", int64(slot(7, 40)), "overlaps the payload"},
		{"slots overlapping", put32(slot(2, 40), 136+8), fixtureArea, "key slot offset", int64(slot(2, 40)), "slots 1 and 2 overlap"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := readFixture(t)
			if tc.patch != nil {
				tc.patch(b)
			}
			_, err := ParseLUKS(bytes.NewReader(b), tc.area)
			var he *HeaderError
			if !errors.As(err, &he) || he.Field != tc.field || he.Offset != tc.offset || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %v, want field %s at %d saying %q", err, tc.field, tc.offset, tc.msg)
			}
		})
	}
	if _, err := ParseLUKS(bytes.NewReader(readFixture(t)[:300]), fixtureArea); err == nil || !strings.Contains(err.Error(), "cut short at 300 bytes") {
		t.Fatalf("header cut short: %v", err)
	}
}

// TestXTSMatchesXCrypto checks the XTS written here against x/crypto/xts
// for the tweaks both take (plain64 sector numbers), with a block cipher
// of each kind.
func TestXTSMatchesXCrypto(t *testing.T) {
	tests := []struct {
		cipher string
		key    int
		ref    func([]byte) (*xts.Cipher, error)
	}{
		{"aes", 64, func(k []byte) (*xts.Cipher, error) { return xts.NewCipher(aes.NewCipher, k) }},
		{"aes", 32, func(k []byte) (*xts.Cipher, error) { return xts.NewCipher(aes.NewCipher, k) }},
		{"twofish", 64, func(k []byte) (*xts.Cipher, error) {
			return xts.NewCipher(func(k []byte) (cipher.Block, error) { return twofish.NewCipher(k) }, k)
		}},
	}
	for _, tc := range tests {
		key := make([]byte, tc.key)
		rand.Read(key)
		ref, err := tc.ref(key)
		if err != nil {
			t.Fatal(err)
		}
		ours, err := NewSectorCipher(Spec{Cipher: tc.cipher, Mode: "xts", IVGen: "plain64", KeyBytes: tc.key}, key)
		if err != nil {
			t.Fatal(err)
		}
		plain := make([]byte, 4*SectorSize)
		rand.Read(plain)
		enc := make([]byte, len(plain))
		const first = 0x1_0000_0003 // above 32 bits, as plain64 allows
		for i := 0; i < len(plain); i += SectorSize {
			ref.Encrypt(enc[i:i+SectorSize], plain[i:i+SectorSize], first+uint64(i/SectorSize))
		}
		if err := ours.Decrypt(enc, first); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, plain) {
			t.Fatalf("%s-xts with a %d-byte key: our decryption differs from x/crypto/xts", tc.cipher, tc.key)
		}
	}
}

// TestDecryptInParallel: a large buffer, spread over the CPUs, decrypts as
// it does sector by sector.
func TestDecryptInParallel(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	c, err := NewSectorCipher(Spec{Cipher: "aes", Mode: "cbc", IVGen: "essiv", IVHash: "sha256", KeyBytes: 32}, key)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 4*parallelMin+3*SectorSize)
	rand.Read(big)
	one := bytes.Clone(big)
	if err := c.Decrypt(big, 77); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(one); i += SectorSize {
		c.decryptSectors(one[i:i+SectorSize], 77+uint64(i/SectorSize))
	}
	if !bytes.Equal(big, one) {
		t.Fatal("parallel decryption differs")
	}
	if err := c.Decrypt(make([]byte, 100), 0); err == nil {
		t.Fatal("a partial sector decrypted")
	}
}

// overlay reads head over the bytes of rest: a fuzzed header over the
// fixture's key material, so that inputs stay small.
type overlay struct{ head, rest []byte }

func (o overlay) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(o.rest)) {
		return 0, io.EOF
	}
	n := copy(p, o.rest[off:])
	if off < int64(len(o.head)) {
		copy(p[:n], o.head[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// FuzzLUKS parses fuzzed LUKS1 headers (the first 592 bytes of the LUKS
// area, over the fixture's key material) and tries the passphrase on what
// parses: no panic, no unbounded allocation, an error or a cipher.
func FuzzLUKS(f *testing.F) {
	fixture := readFixture(f)
	f.Add(fixture[:luksHeaderBytes])
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseLUKS(overlay{b, fixture}, fixtureArea)
		if err != nil {
			_ = err.Error() // the message names hostile fields: it must not fail either
			return
		}
		// Few iterations keep it fast; the key material, its decryption
		// and the merge still run on whatever the fuzzer made.
		for i := range l.Slots {
			l.Slots[i].Iterations = min(l.Slots[i].Iterations, 16)
		}
		l.DigestIters = min(l.DigestIters, 16)
		if _, err := l.Unlock([]byte("qcowmount"), time.Second); err != nil {
			_ = err.Error()
		}
	})
}

// TestPBKDF2MatchesTheStandardLibrary: the parallel derivation gives
// crypto/pbkdf2's bytes, for keys of one block, several, and a part.
func TestPBKDF2MatchesTheStandardLibrary(t *testing.T) {
	for name, h := range hashes {
		for _, keyLen := range []int{16, 20, 32, 64, 100} {
			want, err := pbkdf2.Key(h, "pass phrase", []byte("salt of 32 bytes, more or less.."), 1000, keyLen)
			if err != nil {
				t.Fatal(err)
			}
			if got := pbkdf2Key(h, []byte("pass phrase"), []byte("salt of 32 bytes, more or less.."), 1000, keyLen); !bytes.Equal(got, want) {
				t.Errorf("%s, %d bytes: differs from crypto/pbkdf2", name, keyLen)
			}
		}
	}
}
