package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/encryption"
)

// The committed v3-luks.qcow2 (passphrase "qcowmount") has 4 KiB
// clusters, its LUKS area (AES-128-CBC, one active key slot) at 0x4000.
// The LUKS header's own fields are the encryption package's tests; these
// are what qcow2 adds: the pointer to the LUKS area, and errors that name
// the offset in the image file.

// atMagic writes v, 8 or 4 bytes, off bytes past the first place where
// magic stands in the image: the LUKS header, or the extension (type,
// length, offset, length) that points to it.
func atMagic(magic []byte, off int, v uint64, bytes8 bool) patch {
	return func(b []byte) []byte {
		at := bytes.Index(b, magic) + off
		if bytes8 {
			binary.BigEndian.PutUint64(b[at:], v)
		} else {
			binary.BigEndian.PutUint32(b[at:], uint32(v))
		}
		return b
	}
}

var (
	luksMagic = []byte("LUKS\xba\xbe")
	fdeMagic  = binary.BigEndian.AppendUint32(nil, extFullDiskCrypto)
)

func withKey(pass string) Options {
	return Options{Passphrase: func(r KeyRequest) ([]byte, error) {
		if r.Tries > 0 {
			return nil, nil
		}
		return []byte(pass), nil
	}}
}

func TestOpenRefusesBadLUKSAreas(t *testing.T) {
	tests := []struct {
		name    string
		patches []patch
		field   string // the FormatError's field; "" for another error
		msg     string
	}{
		{"area past the end of the file", []patch{atMagic(fdeMagic, 8, 1<<40, true)}, "full disk encryption extension", "beyond the end of the file"},
		{"area longer than the file", []patch{atMagic(fdeMagic, 16, 1<<62, true)}, "full disk encryption extension", "beyond the end of the file"},
		{"area offset unaligned", []patch{atMagic(fdeMagic, 8, 0x4200, true)}, "full disk encryption extension", "not cluster aligned"},
		{"extension of the wrong length", []patch{atMagic(fdeMagic, 4, 24, false)}, "full disk encryption extension", "length 24, not 16"},
		{"extension without LUKS", []patch{put32(32, 1)}, "full disk encryption extension", "crypt_method is 1"},
		{"file cut inside the key slot", []patch{truncateTo(0x4000 + 0x2000)}, "full disk encryption extension", "beyond the end of the file"},
		{"LUKS field named at its file offset", []patch{atMagic(luksMagic, 6, 2<<16, false)}, "LUKS version", "LUKS version 2 is not supported"},
		{"absurd PBKDF2 iterations", []patch{atMagic(luksMagic, 208+4, 0xffffffff, false)}, "", "no key slot can be tried within"},
		{"absurd digest iterations", []patch{atMagic(luksMagic, 164, 0xffffffff, false)}, "", "no key slot can be tried within"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, err := openPatchedWith(t, "v3-luks.qcow2", withKey("qcowmount"), tc.patches...)
			expectRefused(t, img, err, "v3-luks.qcow2", tc.field, tc.msg)
		})
	}
	// The version field lies 6 bytes into the LUKS header, at 0x4000.
	_, err := openPatched(t, "v3-luks.qcow2", atMagic(luksMagic, 6, 2<<16, false))
	var fe *FormatError
	if !errors.As(err, &fe) || fe.Offset != 0x4006 {
		t.Fatalf("error %v: want the LUKS version's offset in the file, 0x4006", err)
	}
	var le *encryption.KDFLimitError
	if _, err := openPatchedWith(t, "v3-luks.qcow2", withKey("qcowmount"), atMagic(luksMagic, 164, 0xffffffff, false)); !errors.As(err, &le) {
		t.Fatalf("error %v: want a KDFLimitError", err)
	}
}
