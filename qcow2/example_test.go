package qcow2_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/encryption"
)

// Open a local image and read the guest disk it holds, as any
// io.ReaderAt: here the whole disk, through a SHA-256, the same as
// `qemu-img convert -O raw` and sha256sum give.
func ExampleOpen() {
	img, err := qcow2.Open("../testdata/images/tiny/v3-zlib.qcow2", qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(img, 0, img.Size())); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d bytes, sha256 %x...\n", img.Size(), h.Sum(nil)[:8])
	// Output:
	// 65536 bytes, sha256 7977441cd614b2ff...
}

// New reads an image from any io.ReaderAt: here, one in memory. Info
// describes it as `qemu-img info` does.
func ExampleNew() {
	b, err := os.ReadFile("../testdata/images/tiny/v3-zstd.qcow2")
	if err != nil {
		log.Fatal(err)
	}
	img, err := qcow2.New(bytes.NewReader(b), int64(len(b)), qcow2.Options{Name: "in-memory.qcow2"})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	info, err := img.Info()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.Format, info.VirtualSize, info.ClusterSize)
	// Output:
	// qcow2 65536 512
}

// Check audits the image file as `qemu-img check` does.
func ExampleImage_Check() {
	img, err := qcow2.Open("../testdata/images/tiny/v3-zlib.qcow2", qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	res, err := img.Check()
	if err != nil {
		log.Fatal(err) // only I/O fails a check: findings are in res
	}
	fmt.Println("corruptions:", res.Corruptions, "leaks:", res.Leaks)
	// Output:
	// corruptions: 0 leaks: 0
}

// A damaged image fails with a *FormatError naming the field and where
// it lies in the file.
func ExampleFormatError() {
	b, err := os.ReadFile("../testdata/images/tiny/v3-zlib.qcow2")
	if err != nil {
		log.Fatal(err)
	}
	b[23] = 40 // cluster_bits: far beyond QEMU's 21
	_, err = qcow2.New(bytes.NewReader(b), int64(len(b)), qcow2.Options{Name: "damaged.qcow2"})
	var fe *qcow2.FormatError
	if errors.As(err, &fe) {
		fmt.Printf("%s at %#x\n", fe.Field, fe.Offset)
	}
	// Output:
	// cluster_bits at 0x14
}

// An encrypted image opens with its passphrase, which Options.Passphrase
// gives when asked; Info then describes its encryption as qemu-img does.
func ExampleOptions_passphrase() {
	img, err := qcow2.Open("../testdata/images/v3-luks.qcow2", qcow2.Options{
		Passphrase: func(req qcow2.KeyRequest) ([]byte, error) {
			if req.Tries > 0 {
				return nil, nil // no other passphrase to offer
			}
			return []byte("qcowmount"), nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	info, err := img.Info()
	if err != nil {
		log.Fatal(err)
	}
	enc := info.FormatSpecific.Data.Encrypt
	fmt.Println(info.Encrypted, enc.Format, enc.CipherAlg, enc.CipherMode)
	// Output:
	// true luks aes-128 cbc
}

// A missing passphrase, or one that opens no key slot, is a
// *PassphraseError; the package documentation lists the errors of each
// kind of failure. An I/O error stays what the system said.
func ExamplePassphraseError() {
	for _, given := range []string{"", "not the passphrase"} {
		_, err := qcow2.Open("../testdata/images/v3-luks.qcow2", qcow2.Options{
			Passphrase: func(req qcow2.KeyRequest) ([]byte, error) {
				if given == "" || req.Tries > 0 {
					return nil, nil
				}
				return []byte(given), nil
			},
		})
		var pe *qcow2.PassphraseError
		var wrong *encryption.WrongPassphraseError
		if errors.As(err, &pe) {
			fmt.Println("missing:", pe.Missing, "wrong:", errors.As(err, &wrong))
		}
	}
	_, err := qcow2.Open("../testdata/images/no-such.qcow2", qcow2.Options{})
	fmt.Println("not there:", errors.Is(err, fs.ErrNotExist))
	// Output:
	// missing: true wrong: false
	// missing: false wrong: true
	// not there: true
}

// A valid image with a feature this reader does not handle fails with an
// *UnsupportedError naming it: here an incompatible feature bit no QEMU
// has defined yet.
func ExampleUnsupportedError() {
	b, err := os.ReadFile("../testdata/images/tiny/v3-zlib.qcow2")
	if err != nil {
		log.Fatal(err)
	}
	b[79] |= 1 << 6 // incompatible_features, bit 6
	_, err = qcow2.New(bytes.NewReader(b), int64(len(b)), qcow2.Options{Name: "future.qcow2"})
	var ue *qcow2.UnsupportedError
	if errors.As(err, &ue) {
		fmt.Println(ue.Feature)
	}
	// Output:
	// unknown incompatible bit 6
}

// An image that names a backing file outside its own directory is refused
// with an error wrapping ErrUnsafePath, unless Options.BackingDir or
// Options.AllowAnyPath allow it: images come from strangers.
func ExampleErrUnsafePath() {
	b, err := os.ReadFile("../testdata/images/tiny/v3-top.qcow2")
	if err != nil {
		log.Fatal(err)
	}
	// The header's backing_file_offset and backing_file_size, rewritten
	// to name /etc/passwd.
	at := binary.BigEndian.Uint64(b[8:])
	name := "/etc/passwd"
	copy(b[at:], name)
	binary.BigEndian.PutUint32(b[16:], uint32(len(name)))
	dir, err := os.MkdirTemp("", "stranger")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "top.qcow2")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		log.Fatal(err)
	}
	_, err = qcow2.Open(path, qcow2.Options{})
	fmt.Println(errors.Is(err, qcow2.ErrUnsafePath))
	// Output:
	// true
}
