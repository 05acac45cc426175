// Package encryption decrypts the data of encrypted qcow2 and qcow images:
// LUKS1 headers stored inside the image (crypt_method 2) and the legacy
// AES scheme (crypt_method 1). It reads LUKS headers from any io.ReaderAt
// and knows nothing of qcow2 itself: the reader hands it sectors and their
// numbers. Package qcow2 uses it through Options.Passphrase; on its own:
//
//	luks, err := encryption.ParseLUKS(r, size)
//	if err != nil {
//		return err // a *HeaderError names the field and its offset
//	}
//	c, err := luks.Unlock(passphrase, encryption.DefaultMaxKDFTime)
//	if err != nil {
//		return err // *WrongPassphraseError or *KDFLimitError
//	}
//	err = c.Decrypt(sector, number)
package encryption

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"hash"
	"runtime"
	"sync"

	// Deprecated for new systems; images that QEMU encrypted with them
	// still need reading.
	//lint:ignore SA1019 LUKS images name cast5; reading them needs it.
	"golang.org/x/crypto/cast5"
	//lint:ignore SA1019 LUKS images name twofish; reading them needs it.
	"golang.org/x/crypto/twofish"
)

// SectorSize is the unit QEMU encrypts: each 512-byte sector with its own
// IV, made from the sector's number.
const SectorSize = 512

// Spec names a cipher as LUKS does: algorithm ("aes"), mode ("xts"), IV
// generator ("plain64") and, for essiv, the IV hash ("sha256"). KeyBytes
// is the whole key, both halves for XTS.
type Spec struct {
	Cipher   string
	Mode     string
	IVGen    string
	IVHash   string
	KeyBytes int
}

// String is the spec as cryptsetup and QEMU print it: aes-xts-plain64.
func (s Spec) String() string {
	t := s.Cipher + "-" + s.Mode + "-" + s.IVGen
	if s.IVHash != "" {
		t += ":" + s.IVHash
	}
	return t
}

// AlgorithmName is the algorithm with its key size, as qemu-img info
// prints it: aes-256 (for XTS, the size of one of its two keys).
func (s Spec) AlgorithmName() string {
	bits := s.KeyBytes * 8
	if s.Mode == "xts" {
		bits /= 2
	}
	return fmt.Sprintf("%s-%d", s.Cipher, bits)
}

// blockCiphers are the algorithms LUKS names that we have a well-kept Go
// implementation of, with the key sizes QEMU accepts for each. Serpent,
// which QEMU also knows, has none: such images are refused by name.
var blockCiphers = map[string]struct {
	sizes []int
	new   func(key []byte) (cipher.Block, error)
}{
	"aes":     {[]int{16, 24, 32}, aes.NewCipher},
	"twofish": {[]int{16, 24, 32}, func(k []byte) (cipher.Block, error) { return twofish.NewCipher(k) }},
	"cast5":   {[]int{16}, func(k []byte) (cipher.Block, error) { return cast5.NewCipher(k) }},
}

// check reports what of the spec cannot be decrypted, naming it.
func (s Spec) check() error {
	c, ok := blockCiphers[s.Cipher]
	if !ok {
		return fmt.Errorf("cipher %q is not supported (aes, twofish and cast5 are)", s.Cipher)
	}
	key := s.KeyBytes
	switch s.Mode {
	case "xts":
		if key%2 != 0 {
			return fmt.Errorf("cipher %s-xts: a key of %d bytes cannot be split in two", s.Cipher, key)
		}
		key /= 2
	case "cbc", "ecb", "ctr":
	default:
		return fmt.Errorf("cipher mode %q is not supported (cbc, xts, ecb and ctr are)", s.Mode)
	}
	sizeOK := false
	for _, n := range c.sizes {
		sizeOK = sizeOK || n == key
	}
	if !sizeOK {
		return fmt.Errorf("cipher %s with a key of %d bytes is not supported (%v bytes are)", s.Cipher, key, c.sizes)
	}
	if s.Mode == "xts" && s.Cipher == "cast5" {
		return fmt.Errorf("cipher cast5 has 8-byte blocks, which xts mode cannot use")
	}
	switch s.IVGen {
	case "plain", "plain64":
	case "essiv":
		h, ok := hashes[s.IVHash]
		if !ok {
			return fmt.Errorf("essiv hash %q is not supported", s.IVHash)
		}
		// As dm-crypt and QEMU: ESSIV keys the same algorithm with the
		// digest, so the digest must be one of its key sizes.
		n := h().Size()
		sizeOK = false
		for _, k := range c.sizes {
			sizeOK = sizeOK || k == n
		}
		if !sizeOK {
			return fmt.Errorf("essiv with %s: no %s key has the %d bytes of its digest", s.IVHash, s.Cipher, n)
		}
	default:
		return fmt.Errorf("IV generator %q is not supported (plain, plain64 and essiv are)", s.IVGen)
	}
	return nil
}

// SectorCipher decrypts sectors with one key. It is safe for concurrent
// use: the block ciphers it holds keep no state between calls.
type SectorCipher struct {
	spec  Spec
	block cipher.Block // for XTS, keyed with the first half of the key
	tweak cipher.Block // XTS: keyed with the second half
	essiv cipher.Block // essiv: keyed with the hash of the key
}

// NewSectorCipher makes the cipher spec names, with key.
func NewSectorCipher(spec Spec, key []byte) (*SectorCipher, error) {
	if err := spec.check(); err != nil {
		return nil, err
	}
	if len(key) != spec.KeyBytes {
		return nil, fmt.Errorf("key is %d bytes, the cipher %s takes %d", len(key), spec, spec.KeyBytes)
	}
	newBlock := blockCiphers[spec.Cipher].new
	c := &SectorCipher{spec: spec}
	var err error
	if spec.Mode == "xts" {
		half := len(key) / 2
		if c.block, err = newBlock(key[:half]); err == nil {
			c.tweak, err = newBlock(key[half:])
		}
	} else {
		c.block, err = newBlock(key)
	}
	if err == nil && spec.IVGen == "essiv" {
		h := hashes[spec.IVHash]()
		h.Write(key)
		c.essiv, err = newBlock(h.Sum(nil))
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// parallelMin is the smallest buffer whose sectors are worth spreading
// over the CPUs: below it, starting goroutines costs more than it saves.
const parallelMin = 256 << 10

// Decrypt decrypts p in place: whole sectors, the first of them numbered
// sector.
func (c *SectorCipher) Decrypt(p []byte, sector uint64) error {
	if len(p)%SectorSize != 0 {
		return fmt.Errorf("decrypting %d bytes: not a whole number of %d-byte sectors", len(p), SectorSize)
	}
	workers := min(runtime.GOMAXPROCS(0), len(p)/(parallelMin/2))
	if len(p) < parallelMin || workers < 2 {
		c.decryptSectors(p, sector)
		return nil
	}
	per := (len(p)/SectorSize + workers - 1) / workers * SectorSize
	var wg sync.WaitGroup
	for start := 0; start < len(p); start += per {
		end := min(start+per, len(p))
		wg.Go(func() { c.decryptSectors(p[start:end], sector+uint64(start/SectorSize)) })
	}
	wg.Wait()
	return nil
}

func (c *SectorCipher) decryptSectors(p []byte, sector uint64) {
	bs := c.block.BlockSize()
	// One buffer for the IV and XTS's tweak and block: handed to
	// cipher.Block's methods, they escape, and one allocation per sector
	// was a collection every few megabytes read.
	buf := new([48]byte)
	iv := buf[:bs]
	xts := (*[32]byte)(buf[16:])
	var cbc cipher.BlockMode
	for ; len(p) > 0; p, sector = p[SectorSize:], sector+1 {
		s := p[:SectorSize]
		c.iv(iv, sector)
		switch c.spec.Mode {
		case "cbc":
			// crypto/cipher's CBC decrypters take a new IV through an
			// unexported interface: one serves every sector.
			if r, ok := cbc.(interface{ SetIV([]byte) }); ok {
				r.SetIV(iv)
			} else {
				cbc = cipher.NewCBCDecrypter(c.block, iv)
			}
			cbc.CryptBlocks(s, s)
		case "xts":
			c.decryptXTS(s, iv, xts)
		case "ecb":
			for i := 0; i < len(s); i += bs {
				c.block.Decrypt(s[i:i+bs], s[i:i+bs])
			}
		case "ctr":
			cipher.NewCTR(c.block, iv).XORKeyStream(s, s)
		}
	}
}

// iv fills iv, one block long, with the IV of a sector: its number in
// little-endian (plain: the low 32 bits), zero padded; essiv encrypts that
// with the hash of the key.
func (c *SectorCipher) iv(iv []byte, sector uint64) {
	clear(iv)
	if c.spec.IVGen == "plain" {
		binary.LittleEndian.PutUint32(iv, uint32(sector))
		return
	}
	binary.LittleEndian.PutUint64(iv, sector)
	if c.essiv != nil {
		c.essiv.Encrypt(iv, iv)
	}
}

// decryptXTS decrypts one sector in XTS mode (IEEE 1619) with the tweak
// made from iv. x/crypto/xts takes only a sector number as the tweak;
// LUKS's essiv hands XTS an arbitrary one, so the mode is written out here
// (tested against x/crypto/xts where the two overlap). scratch holds the
// tweak and the block being decrypted.
func (c *SectorCipher) decryptXTS(s, iv []byte, scratch *[32]byte) {
	t, x := (*[16]byte)(scratch[:16]), scratch[16:]
	c.tweak.Encrypt(t[:], iv)
	for i := 0; i < len(s); i += 16 {
		b := s[i : i+16]
		subtle16(x, b, t[:])
		c.block.Decrypt(x, x)
		subtle16(b, x, t[:])
		mulAlpha(t)
	}
}

func subtle16(dst, a, b []byte) {
	binary.LittleEndian.PutUint64(dst, binary.LittleEndian.Uint64(a)^binary.LittleEndian.Uint64(b))
	binary.LittleEndian.PutUint64(dst[8:], binary.LittleEndian.Uint64(a[8:])^binary.LittleEndian.Uint64(b[8:]))
}

// mulAlpha multiplies the tweak by x in GF(2^128), little-endian as XTS
// defines it.
func mulAlpha(t *[16]byte) {
	lo, hi := binary.LittleEndian.Uint64(t[:8]), binary.LittleEndian.Uint64(t[8:])
	carry := hi >> 63
	hi = hi<<1 | lo>>63
	lo = lo<<1 ^ carry*0x87
	binary.LittleEndian.PutUint64(t[:8], lo)
	binary.LittleEndian.PutUint64(t[8:], hi)
}

// hashFunc makes a hash, as PBKDF2 and HMAC take it.
type hashFunc = func() hash.Hash
