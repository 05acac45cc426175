package qcow2

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/qcowmount/qcowmount/qcow2/encryption"
)

// KeyRequest asks Options.Passphrase for the passphrase of one encrypted
// image of a chain.
type KeyRequest struct {
	// Name is the image as the chain names it: the path given to Open,
	// or the backing file name as the image above it records it.
	Name string
	// Path is the image file's absolute path.
	Path string
	// Method is "LUKS" or "AES" (the legacy scheme).
	Method string
	// Tries counts the passphrases already given for this image that
	// opened no key slot: a prompt may ask again, a key file may not.
	Tries int
}

// PassphraseError says an encrypted image could not be unlocked: no
// passphrase was given, or none of those given opened a key slot.
type PassphraseError struct {
	Image   string // as the chain names it
	Method  string
	Missing bool
	Err     error // the last refusal, with the slots not tried
}

func (e *PassphraseError) Error() string {
	if e.Missing {
		return fmt.Sprintf("%s is encrypted (%s) and no passphrase was given", e.Image, e.Method)
	}
	s := fmt.Sprintf("no key slot of %s opens with this passphrase", e.Image)
	var wrong *encryption.WrongPassphraseError
	if errors.As(e.Err, &wrong) && len(wrong.NotTried) > 0 {
		s += " (not tried: " + strings.Join(wrong.NotTried, "; ") + ")"
	}
	return s
}

func (e *PassphraseError) Unwrap() error { return e.Err }

// Encrypted reports whether any image of the chain is encrypted: whether
// the guest disk holds bytes that only a passphrase reveals.
func (img *Image) Encrypted() bool {
	for i := range img.images() {
		if i.hdr.CryptMethod != CryptNone {
			return true
		}
	}
	return false
}

// ErrNoKey is the error of a read of encrypted data in an image opened
// without its passphrase (Options.AllowLocked).
var ErrNoKey = errors.New("the image is encrypted and was opened without its passphrase")

// The full disk encryption header extension: where the LUKS header lies.
const fdeExtensionBytes = 16

// openEncryption sets up decryption for an image whose header names an
// encryption method, asking Options.Passphrase for the passphrase.
func (c *chain) openEncryption(img *Image, name string) error {
	h := &img.hdr
	if img.ext.hasFDE && h.CryptMethod != CryptLUKS {
		return img.formatErr("full disk encryption extension", -1, "present, but crypt_method is %d, not LUKS (2)", h.CryptMethod)
	}
	switch h.CryptMethod {
	case CryptNone:
		return nil
	case CryptAES:
		img.warnings = append(img.warnings, "legacy AES encryption cannot check a passphrase: if the guest disk reads as noise, the passphrase was wrong")
		return c.unlock(img, name, "AES", func(pass []byte) (*encryption.SectorCipher, error) {
			return encryption.LegacyAES(pass), nil
		})
	}
	if !img.ext.hasFDE {
		return img.formatErr("crypt_method", 32, "LUKS (2), but the image has no full disk encryption header extension")
	}
	off, length := img.ext.fdeOffset, img.ext.fdeLength
	if off&uint64(img.clusterSize()-1) != 0 {
		return img.formatErr("full disk encryption extension", -1, "LUKS header offset %#x is not cluster aligned", off)
	}
	if length > uint64(img.fileSize) || off > uint64(img.fileSize)-length {
		return img.formatErr("full disk encryption extension", -1, "LUKS area [%#x, +%d) lies beyond the end of the file (%d bytes)", off, length, img.fileSize)
	}
	luks, err := encryption.ParseLUKS(io.NewSectionReader(img.file, int64(off), int64(length)), int64(length))
	if err != nil {
		var he *encryption.HeaderError
		if errors.As(err, &he) {
			return &FormatError{Path: img.path, Field: "LUKS " + he.Field, Offset: int64(off) + he.Offset, Msg: he.Msg}
		}
		return err
	}
	img.luks = luks
	img.cryptHost = true // LUKS IVs count host sectors, legacy AES guest ones
	return c.unlock(img, name, "LUKS", func(pass []byte) (*encryption.SectorCipher, error) {
		return luks.Unlock(pass, c.opts.MaxKDFTime)
	})
}

// unlock asks for passphrases until one opens the image, the caller has
// no more, or opening fails for another reason.
func (c *chain) unlock(img *Image, name, method string, open func([]byte) (*encryption.SectorCipher, error)) error {
	var refused error
	for tries := 0; ; tries++ {
		var pass []byte
		if c.opts.Passphrase != nil {
			var err error
			if pass, err = c.opts.Passphrase(KeyRequest{Name: name, Path: img.path, Method: method, Tries: tries}); err != nil {
				return err
			}
		}
		if pass == nil {
			if tries == 0 && c.opts.AllowLocked {
				return nil
			}
			return &PassphraseError{Image: name, Method: method, Missing: tries == 0, Err: refused}
		}
		cipher, err := open(pass)
		var wrong *encryption.WrongPassphraseError
		switch {
		case err == nil:
			img.crypt = cipher
			return nil
		case errors.As(err, &wrong):
			refused = err
		default:
			return err
		}
	}
}

// readEncrypted reads the host bytes of allocated clusters at host, which
// hold guest offset guest, and decrypts them. Encryption works on whole
// 512-byte sectors: a partial first or last sector goes through a buffer.
func (img *Image) readEncrypted(p []byte, host uint64, guest int64) error {
	if img.crypt == nil {
		return ErrNoKey
	}
	const ss = encryption.SectorSize
	var buf [ss]byte
	for len(p) > 0 {
		lead := int(host % ss)
		if lead == 0 && len(p) >= ss {
			// Whole sectors, decrypted in place.
			n := len(p) &^ (ss - 1)
			if err := img.decryptInto(p[:n], host, guest); err != nil {
				return err
			}
			p, host, guest = p[n:], host+uint64(n), guest+int64(n)
			continue
		}
		if err := img.decryptInto(buf[:], host-uint64(lead), guest-int64(lead)); err != nil {
			return err
		}
		n := copy(p, buf[lead:])
		p, host, guest = p[n:], host+uint64(n), guest+int64(n)
	}
	return nil
}

// decryptInto reads whole sectors at host into p and decrypts them.
func (img *Image) decryptInto(p []byte, host uint64, guest int64) error {
	if err := img.readData(p, host); err != nil {
		return err
	}
	sector := uint64(guest) / encryption.SectorSize
	if img.cryptHost {
		sector = host / encryption.SectorSize
	}
	return img.crypt.Decrypt(p, sector)
}

// encryptInfo describes the image's encryption as qemu-img info does.
func (img *Image) encryptInfo() *EncryptInfo {
	switch {
	case img.hdr.CryptMethod == CryptAES:
		return &EncryptInfo{Format: "aes"}
	case img.luks == nil:
		return nil
	}
	l := img.luks
	in := &EncryptInfo{
		IVGenAlg:       l.Spec.IVGen,
		HashAlg:        l.Hash,
		CipherAlg:      l.Spec.AlgorithmName(),
		UUID:           l.UUID,
		IVGenHashAlg:   l.Spec.IVHash,
		Format:         "luks",
		CipherMode:     l.Spec.Mode,
		PayloadOffset:  l.PayloadOffset,
		MasterKeyIters: l.DigestIters,
	}
	for _, s := range l.Slots {
		si := LUKSSlotInfo{Active: s.Active, KeyOffset: s.KeyOffset}
		if s.Active {
			iters, stripes := s.Iterations, s.Stripes
			si.Iters, si.Stripes = &iters, &stripes
		}
		in.Slots = append(in.Slots, si)
	}
	return in
}

// EncryptInfo is qemu-img info's "encrypt" object, keys in its order.
type EncryptInfo struct {
	IVGenAlg       string         `json:"ivgen-alg,omitempty"`
	HashAlg        string         `json:"hash-alg,omitempty"`
	CipherAlg      string         `json:"cipher-alg,omitempty"`
	UUID           string         `json:"uuid,omitempty"`
	IVGenHashAlg   string         `json:"ivgen-hash-alg,omitempty"`
	Format         string         `json:"format"`
	CipherMode     string         `json:"cipher-mode,omitempty"`
	Slots          []LUKSSlotInfo `json:"slots,omitempty"`
	PayloadOffset  int64          `json:"payload-offset,omitempty"`
	MasterKeyIters uint32         `json:"master-key-iters,omitempty"`
}

// LUKSSlotInfo is one key slot; an inactive slot shows only its offset.
type LUKSSlotInfo struct {
	Active    bool    `json:"active"`
	Iters     *uint32 `json:"iters,omitempty"`
	KeyOffset int64   `json:"key-offset"`
	Stripes   *uint32 `json:"stripes,omitempty"`
}
