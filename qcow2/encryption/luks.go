package encryption

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	//lint:ignore SA1019 LUKS images name ripemd160; reading them needs it.
	"golang.org/x/crypto/ripemd160"
)

// LUKS1 as QEMU reads it (crypto/block-luks.c), fields and limits named as
// in the LUKS1 on-disk format.
const (
	luksHeaderBytes   = 592
	luksVersion       = 1
	luksNumSlots      = 8
	luksStripes       = 4000 // QEMU refuses any other count
	luksSlotEnabled   = 0x00AC71F3
	luksSlotDisabled  = 0x0000DEAD
	luksDigestBytes   = 20
	luksSaltBytes     = 32
	luksKeySlotOffset = 4096 // key material starts past the header's first 4 KiB
	luksSlotBytes     = 48
	luksSlotsAt       = 208
)

var luksMagic = []byte{'L', 'U', 'K', 'S', 0xba, 0xbe}

// hashes are those LUKS headers name that Go has.
var hashes = map[string]hashFunc{
	"md5":       md5.New,
	"sha1":      sha1.New,
	"sha224":    sha256.New224,
	"sha256":    sha256.New,
	"sha384":    sha512.New384,
	"sha512":    sha512.New,
	"ripemd160": ripemd160.New,
}

// HeaderError reports a LUKS header field that breaks the format or one of
// QEMU's checks; Offset is where the field lies in the LUKS header.
type HeaderError struct {
	Field  string
	Offset int64
	Msg    string
}

func (e *HeaderError) Error() string {
	return fmt.Sprintf("LUKS header %s at offset %#x: %s", e.Field, e.Offset, e.Msg)
}

func headerErr(field string, off int64, format string, args ...any) error {
	return &HeaderError{field, off, fmt.Sprintf(format, args...)}
}

// KeySlot is one of the eight LUKS key slots.
type KeySlot struct {
	Active     bool
	Iterations uint32
	Salt       [luksSaltBytes]byte
	KeyOffset  int64 // bytes from the start of the LUKS header
	Stripes    uint32
}

// LUKS is a parsed LUKS1 header and where its key material can be read.
type LUKS struct {
	Spec          Spec
	Hash          string // of PBKDF2 and the anti-forensic split
	PayloadOffset int64  // bytes
	DigestIters   uint32
	UUID          string
	Slots         [luksNumSlots]KeySlot

	digest [luksDigestBytes]byte
	salt   [luksSaltBytes]byte
	r      io.ReaderAt
}

// ParseLUKS reads the LUKS1 header at the start of r, a region of size
// bytes, and checks it as QEMU does, plus: every key slot and the payload
// offset lie inside the region.
func ParseLUKS(r io.ReaderAt, size int64) (*LUKS, error) {
	if size < luksHeaderBytes {
		return nil, headerErr("size", 0, "the LUKS area is %d bytes, shorter than a LUKS1 header (%d)", size, luksHeaderBytes)
	}
	var b [luksHeaderBytes]byte
	if n, err := r.ReadAt(b[:], 0); n < len(b) {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, headerErr("size", 0, "the LUKS header is cut short at %d bytes", n)
		}
		return nil, fmt.Errorf("reading the LUKS header: %w", err)
	}
	be := binary.BigEndian
	if !bytes.Equal(b[:6], luksMagic) {
		return nil, headerErr("magic", 0, "%q is not LUKS's magic", b[:6])
	}
	if v := be.Uint16(b[6:]); v != luksVersion {
		return nil, headerErr("version", 6, "LUKS version %d is not supported (only LUKS1 is stored in qcow2)", v)
	}
	var text [3]string
	for i, f := range []struct {
		name string
		at   int
	}{{"cipher_name", 8}, {"cipher_mode", 40}, {"hash_spec", 72}} {
		s := b[f.at : f.at+32]
		n := bytes.IndexByte(s, 0)
		if n < 0 {
			return nil, headerErr(f.name, int64(f.at), "is not NUL terminated")
		}
		text[i] = string(s[:n])
	}
	l := &LUKS{
		Hash:          text[2],
		PayloadOffset: int64(be.Uint32(b[104:])) * SectorSize,
		DigestIters:   be.Uint32(b[164:]),
		r:             r,
	}
	copy(l.digest[:], b[112:132])
	copy(l.salt[:], b[132:164])
	if n := bytes.IndexByte(b[168:208], 0); n >= 0 {
		l.UUID = string(b[168 : 168+n])
	}
	// cipher_mode is <mode>-<ivgen>[:<ivhash>], as in "cbc-essiv:sha256".
	mode, ivgen, ok := strings.Cut(text[1], "-")
	if !ok {
		return nil, headerErr("cipher_mode", 40, "%q is not of the form mode-ivgen[:hash]", text[1])
	}
	ivgen, ivhash, _ := strings.Cut(ivgen, ":")
	if ivgen != "essiv" {
		ivhash = "" // dm-crypt and QEMU ignore a hash here
	} else if ivhash == "" {
		return nil, headerErr("cipher_mode", 40, "%q: essiv needs a hash", text[1])
	}
	l.Spec = Spec{Cipher: text[0], Mode: mode, IVGen: ivgen, IVHash: ivhash, KeyBytes: int(be.Uint32(b[108:]))}
	if _, ok := hashes[l.Hash]; !ok {
		return nil, headerErr("hash_spec", 72, "hash %q is not supported", l.Hash)
	}
	if err := l.Spec.check(); err != nil {
		return nil, headerErr("cipher", 8, "%s (%s, %d key bytes)", err, l.Spec, l.Spec.KeyBytes)
	}
	if l.PayloadOffset < luksKeySlotOffset {
		return nil, headerErr("payload_offset", 104, "%d bytes overlaps the header (at least %d)", l.PayloadOffset, luksKeySlotOffset)
	}
	if l.PayloadOffset > size {
		return nil, headerErr("payload_offset", 104, "%d bytes lies outside the LUKS area (%d bytes)", l.PayloadOffset, size)
	}
	if l.DigestIters == 0 {
		return nil, headerErr("mk_digest_iter", 164, "iteration count is zero")
	}
	// Key material: key bytes times stripes, in whole sectors, each slot
	// aligned to 4 KiB as QEMU lays them out.
	materialLen := alignUp(alignUp(int64(l.Spec.KeyBytes)*luksStripes, SectorSize), luksKeySlotOffset)
	for i := range l.Slots {
		at := int64(luksSlotsAt + i*luksSlotBytes)
		sb := b[at : at+luksSlotBytes]
		s := &l.Slots[i]
		active := be.Uint32(sb)
		s.Iterations = be.Uint32(sb[4:])
		copy(s.Salt[:], sb[8:40])
		s.KeyOffset = int64(be.Uint32(sb[40:])) * SectorSize
		s.Stripes = be.Uint32(sb[44:])
		switch {
		case s.Stripes != luksStripes:
			return nil, headerErr("key slot stripes", at+44, "slot %d has %d stripes (QEMU reads only %d)", i, s.Stripes, luksStripes)
		case active != luksSlotEnabled && active != luksSlotDisabled:
			return nil, headerErr("key slot active", at, "slot %d has state %#x, neither enabled nor disabled", i, active)
		case active == luksSlotEnabled && s.Iterations == 0:
			return nil, headerErr("key slot iterations", at+4, "slot %d has an iteration count of zero", i)
		case s.KeyOffset < luksKeySlotOffset:
			return nil, headerErr("key slot offset", at+40, "slot %d's key material at %d overlaps the header", i, s.KeyOffset)
		case s.KeyOffset+materialLen > l.PayloadOffset:
			return nil, headerErr("key slot offset", at+40, "slot %d's key material [%d, %d) overlaps the payload at %d", i, s.KeyOffset, s.KeyOffset+materialLen, l.PayloadOffset)
		}
		s.Active = active == luksSlotEnabled
		for j := range i {
			if o := l.Slots[j].KeyOffset; s.KeyOffset < o+materialLen && o < s.KeyOffset+materialLen {
				return nil, headerErr("key slot offset", at+40, "slots %d and %d overlap", j, i)
			}
		}
	}
	return l, nil
}

func alignUp(n, to int64) int64 { return (n + to - 1) / to * to }

// DefaultMaxKDFTime bounds how long trying a passphrase may take, on all
// key slots together: a hostile header can ask for 2^32 PBKDF2 iterations
// in each of eight slots, hours of work. QEMU's own images take about two
// seconds per slot where they were made.
const DefaultMaxKDFTime = time.Minute

// WrongPassphraseError says no key slot opened; NotTried lists the slots
// that were not tried within the time limit.
type WrongPassphraseError struct {
	NotTried []string
}

func (e *WrongPassphraseError) Error() string {
	s := "no key slot opens with this passphrase"
	if len(e.NotTried) > 0 {
		s += " (not tried: " + strings.Join(e.NotTried, "; ") + ")"
	}
	return s
}

// KDFLimitError says no active slot can be tried within the limit.
type KDFLimitError struct {
	Slots []string
	Limit time.Duration
}

func (e *KDFLimitError) Error() string {
	return fmt.Sprintf("no key slot can be tried within %v: %s", e.Limit, strings.Join(e.Slots, "; "))
}

// Unlock finds the master key with passphrase, trying the active key
// slots at once on as many CPUs as there are, and returns the cipher of
// the payload. maxKDF bounds the whole attempt (maxKDF <= 0 means
// DefaultMaxKDFTime): the slots are tried cheapest first as long as their
// key derivations together, estimated from this machine's speed, fit in
// it; the others are not tried, and the error lists them.
func (l *LUKS) Unlock(passphrase []byte, maxKDF time.Duration) (*SectorCipher, error) {
	if maxKDF <= 0 {
		maxKDF = DefaultMaxKDFTime
	}
	tryable, tooSlow := l.planSlots(maxKDF)
	if len(tryable) == 0 && len(tooSlow) > 0 {
		return nil, &KDFLimitError{tooSlow, maxKDF}
	}
	type result struct {
		key []byte
		err error
	}
	results := make([]result, len(tryable))
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(1, cpus()))
	for n, i := range tryable {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[n].key, results[n].err = l.tryslot(i, passphrase)
		})
	}
	wg.Wait()
	var master []byte
	var errs []error
	for _, r := range results {
		switch {
		case r.key != nil && master == nil:
			master = r.key
			defer clear(master)
		case r.key != nil:
			clear(r.key) // another slot with the same passphrase
		case r.err != nil:
			errs = append(errs, r.err)
		}
	}
	switch {
	case master != nil:
		return NewSectorCipher(l.Spec, master)
	case len(errs) > 0:
		return nil, errors.Join(errs...)
	}
	return nil, &WrongPassphraseError{NotTried: tooSlow}
}

// planSlots chooses the active slots to try within maxKDF, cheapest
// first: a set of derivations takes its total work spread over the CPUs,
// or the longest block chain among them, whichever is longer.
func (l *LUKS) planSlots(maxKDF time.Duration) (tryable []int, notTried []string) {
	h := hashes[l.Hash]
	type cost struct {
		slot         int
		total, chain float64
	}
	var costs []cost
	for i, s := range l.Slots {
		if s.Active {
			keyTotal, keyChain := kdfWork(h, s.Iterations, l.Spec.KeyBytes)
			digestTotal, digestChain := kdfWork(h, l.DigestIters, luksDigestBytes)
			costs = append(costs, cost{i, keyTotal + digestTotal, keyChain + digestChain})
		}
	}
	sort.SliceStable(costs, func(a, b int) bool { return costs[a].total < costs[b].total })
	var total, chain, rate float64
	for _, c := range costs {
		withIt, chainWithIt := total+c.total, max(chain, c.chain)
		if wall := max(withIt/float64(cpus()), chainWithIt); wall >= cheapIterations {
			if rate == 0 {
				rate = kdfRate(h, l.Hash)
			}
			if took := time.Duration(wall / rate * float64(time.Second)); took > maxKDF {
				s := l.Slots[c.slot]
				notTried = append(notTried, fmt.Sprintf("slot %d: %d + %d PBKDF2-%s iterations would bring the attempt to about %v here, over %v",
					c.slot, s.Iterations, l.DigestIters, l.Hash, took.Round(time.Second), maxKDF))
				continue
			}
		}
		tryable = append(tryable, c.slot)
		total, chain = withIt, chainWithIt
	}
	sort.Ints(tryable)
	return tryable, notTried
}

// tryslot returns the master key if passphrase opens slot i, nil if it
// does not, and an error if the key material cannot be read.
func (l *LUKS) tryslot(i int, passphrase []byte) ([]byte, error) {
	s := &l.Slots[i]
	h := hashes[l.Hash]
	keyLen := l.Spec.KeyBytes
	slotKey := pbkdf2Key(h, passphrase, s.Salt[:], int(s.Iterations), keyLen)
	defer clear(slotKey)
	material := make([]byte, alignUp(int64(keyLen)*luksStripes, SectorSize))
	defer clear(material)
	if n, err := l.r.ReadAt(material, s.KeyOffset); n < len(material) {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, headerErr("key slot offset", int64(luksSlotsAt+i*luksSlotBytes+40), "slot %d's key material is cut short at %d of %d bytes", i, n, len(material))
		}
		return nil, fmt.Errorf("reading key slot %d's material: %w", i, err)
	}
	c, err := NewSectorCipher(l.Spec, slotKey)
	if err != nil {
		return nil, err
	}
	if err := c.Decrypt(material, 0); err != nil {
		return nil, err
	}
	master := afMerge(h, material[:keyLen*luksStripes], keyLen, luksStripes)
	digest := pbkdf2Key(h, master, l.salt[:], int(l.DigestIters), luksDigestBytes)
	if !bytes.Equal(digest, l.digest[:]) {
		clear(master)
		return nil, nil
	}
	return master, nil
}

// afMerge undoes LUKS's anti-forensic split: the key is the last stripe
// XORed with the diffusion of all those before it.
func afMerge(h hashFunc, split []byte, keyLen, stripes int) []byte {
	d := make([]byte, keyLen)
	for i := 0; i < stripes-1; i++ {
		xorInto(d, split[i*keyLen:(i+1)*keyLen])
		diffuse(h, d)
	}
	xorInto(d, split[(stripes-1)*keyLen:])
	return d
}

func xorInto(dst, src []byte) {
	for i := range dst {
		dst[i] ^= src[i]
	}
}

// diffuse replaces each digest-sized piece of b (the last may be shorter)
// with the hash of its index, big-endian, and the piece.
func diffuse(h hashFunc, b []byte) {
	hh := h()
	size := hh.Size()
	var idx [4]byte
	for i := 0; i*size < len(b); i++ {
		piece := b[i*size : min((i+1)*size, len(b))]
		hh.Reset()
		binary.BigEndian.PutUint32(idx[:], uint32(i))
		hh.Write(idx[:])
		hh.Write(piece)
		copy(piece, hh.Sum(nil))
	}
}
