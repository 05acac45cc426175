package decompress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// A whole-buffer deflate decoder for compressed clusters. The cluster's
// size is known and all of it is in memory, so, unlike a streaming
// decoder, this one writes literals and copies matches straight into the
// output, with no sliding window, and fills its bit buffer eight bytes at
// a time. Its semantics are zlib's inflate(Z_FINISH) into a cluster-sized
// buffer, as QEMU calls it: decoding stops once the output is full, even
// inside a block, and trailing input is ignored; a stream that ends before
// the output is full is an error.

const (
	primaryBits  = 10 // bits resolved by the first table lookup
	maxCodeBits  = 15
	entryLenMask = 0x1f
	entrySub     = 0x20 // the entry points at a sub-table
)

// huffman is a decoding table: primary[low bits] gives sym<<16 | len, or,
// for codes longer than primaryBits, subOffset<<16 | subBits<<8 | entrySub.
type huffman struct {
	primary [1 << primaryBits]uint32
	sub     []uint32
}

var (
	errBadCodes    = errors.New("invalid Huffman code lengths")
	errDeflateBomb = errors.New("refused as a decompression bomb")
)

// entry looks up the code at the bottom of the bit buffer buf: a length
// of 0 means no code has those bits.
func (h *huffman) entry(buf uint64) uint32 {
	e := h.primary[buf&(1<<primaryBits-1)]
	if e&entrySub != 0 {
		e = h.sub[int(e>>16)+int(buf>>primaryBits&(1<<(e>>8&0xf)-1))]
	}
	return e
}

// build makes the table for the code lengths of symbols 0..len(lengths)-1.
// Like zlib, it refuses over-subscribed sets, and incomplete ones unless
// there is a single code of length 1.
func (h *huffman) build(lengths []uint8) error {
	var count [maxCodeBits + 1]int
	maxLen := 0
	for _, l := range lengths {
		count[l]++
		maxLen = max(maxLen, int(l))
	}
	count[0] = 0
	clear(h.primary[:])
	h.sub = h.sub[:0]
	if maxLen == 0 {
		return nil // no codes at all: valid, and any use of it is an error
	}
	left := 1
	for l := 1; l <= maxCodeBits; l++ {
		left = left<<1 - count[l]
		if left < 0 {
			return errBadCodes
		}
	}
	if left > 0 && !(maxLen == 1 && count[1] == 1) {
		return errBadCodes
	}
	var next [maxCodeBits + 2]int
	for l := 1; l <= maxCodeBits; l++ {
		next[l+1] = (next[l] + count[l]) << 1
	}
	subBits := max(0, maxLen-primaryBits)
	for sym, l := range lengths {
		if l == 0 {
			continue
		}
		code := next[l]
		next[l]++
		rev := int(bits.Reverse16(uint16(code)) >> (16 - l))
		entry := uint32(sym)<<16 | uint32(l)
		if int(l) <= primaryBits {
			for i := rev; i < len(h.primary); i += 1 << l {
				h.primary[i] = entry
			}
			continue
		}
		low := rev & (1<<primaryBits - 1)
		p := h.primary[low]
		if p&entrySub == 0 {
			p = uint32(len(h.sub))<<16 | uint32(subBits)<<8 | entrySub
			h.primary[low] = p
			h.sub = append(h.sub, make([]uint32, 1<<subBits)...)
		}
		base := int(p >> 16)
		for i := rev >> primaryBits; i < 1<<subBits; i += 1 << (int(l) - primaryBits) {
			h.sub[base+i] = entry
		}
	}
	return nil
}

// bitReader reads deflate's LSB-first bits; past the end of the input it
// reads zeros and counts them, so that running out shows at the end.
type bitReader struct {
	src   []byte
	pos   int
	buf   uint64
	nbits uint
	over  int // bytes read past the end of src
}

func (br *bitReader) refill() {
	if br.pos+8 <= len(br.src) {
		br.buf |= binary.LittleEndian.Uint64(br.src[br.pos:]) << br.nbits
		br.pos += int(63-br.nbits) >> 3
		br.nbits |= 56
		return
	}
	for br.nbits <= 56 {
		if br.pos < len(br.src) {
			br.buf |= uint64(br.src[br.pos]) << br.nbits
			br.pos++
		} else {
			br.over++
		}
		br.nbits += 8
	}
}

func (br *bitReader) bits(n uint) uint32 {
	if br.nbits < n {
		br.refill()
	}
	v := uint32(br.buf & (1<<n - 1))
	br.buf >>= n
	br.nbits -= n
	return v
}

func (br *bitReader) decode(h *huffman) (int, error) {
	if br.nbits < maxCodeBits {
		br.refill()
	}
	e := h.entry(br.buf)
	n := uint(e & entryLenMask)
	if n == 0 {
		return 0, errors.New("invalid Huffman code")
	}
	br.buf >>= n
	br.nbits -= n
	return int(e >> 16), nil
}

// exhausted reports whether decoding used bits that the input lacks.
func (br *bitReader) exhausted() bool {
	return br.over*8 > int(br.nbits)
}

var (
	lengthBase  = [29]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lengthExtra = [29]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase    = [30]uint32{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra   = [30]uint8{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	clOrder     = [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

	fixedLit, fixedDist = func() (*huffman, *huffman) {
		var l [288]uint8
		for i := range l {
			switch {
			case i < 144:
				l[i] = 8
			case i < 256:
				l[i] = 9
			case i < 280:
				l[i] = 7
			default:
				l[i] = 8
			}
		}
		var d [32]uint8 // 30 and 31 are invalid, but complete the code, as in zlib
		for i := range d {
			d[i] = 5
		}
		lit, dist := &huffman{}, &huffman{}
		if lit.build(l[:]) != nil || dist.build(d[:]) != nil {
			panic("fixed Huffman tables") // constant input
		}
		return lit, dist
	}()
)

// deflateDecoder holds the tables of dynamic blocks, reused between clusters.
type deflateDecoder struct {
	lit, dist, codeLen huffman
	lengths            [288 + 32]uint8
}

// decode decodes raw deflate from src until dst is full.
func (f *deflateDecoder) decode(dst, src []byte) error {
	br := bitReader{src: src}
	out, err := f.blocks(&br, dst)
	if err != nil && br.exhausted() {
		// Whatever went wrong, it went wrong reading past the input.
		err = nil
	}
	if err == nil && (out < len(dst) || br.exhausted()) {
		err = fmt.Errorf("deflate data ends after %d of %d bytes", min(out, len(dst)), len(dst))
	}
	return err
}

// Each dynamic block costs a table build whatever it decodes. QEMU's
// zlib writes one per 16K symbols at the most (16 KiB of output or more),
// so a stream with more than one dynamic block per KiB of output, beyond a
// few, is a decompression bomb (millions of tiny blocks in a 4 MiB
// cluster would cost a second per read): it is refused.
const (
	freeDynamicBlocks    = 64
	dynamicBlockMinBytes = 1024
)

// blocks decodes blocks until dst is full or the final block ends, and
// returns how much it wrote.
func (f *deflateDecoder) blocks(br *bitReader, dst []byte) (int, error) {
	out, dynamic := 0, 0
	for out < len(dst) {
		final := br.bits(1) == 1
		var lit, dist *huffman
		switch br.bits(2) {
		case 0:
			n, err := storedBlock(br, dst[out:])
			if out += n; err != nil || final {
				return out, err
			}
			continue
		case 1:
			lit, dist = fixedLit, fixedDist
		case 2:
			if dynamic++; dynamic > freeDynamicBlocks+out/dynamicBlockMinBytes {
				return out, fmt.Errorf("deflate data has %d dynamic blocks for the first %d bytes of output: %w", dynamic, out, errDeflateBomb)
			}
			if err := f.readDynamic(br); err != nil {
				return out, err
			}
			lit, dist = &f.lit, &f.dist
		default:
			return out, errors.New("deflate data is corrupt: reserved block type")
		}
		var err error
		if out, err = decodeBlock(br, lit, dist, dst, out); err != nil || final || br.exhausted() {
			return out, err
		}
	}
	return out, nil
}

// decodeBlock decodes one Huffman block into dst from out, stopping early
// if dst fills; it returns the new output position. The bit buffer lives
// in locals here, the hot loop of the whole reader.
func decodeBlock(br *bitReader, lit, dist *huffman, dst []byte, out int) (int, error) {
	buf, nbits, src, pos := br.buf, br.nbits, br.src, br.pos
	var err error
	for out < len(dst) {
		if nbits < 48 {
			if pos+8 <= len(src) {
				buf |= binary.LittleEndian.Uint64(src[pos:]) << nbits
				pos += int(63-nbits) >> 3
				nbits |= 56
			} else {
				br.buf, br.nbits, br.pos = buf, nbits, pos
				br.refill()
				buf, nbits, pos = br.buf, br.nbits, br.pos
			}
		}
		e := lit.entry(buf)
		n := uint(e & entryLenMask)
		if n == 0 {
			err = errors.New("deflate data is corrupt: invalid literal/length code")
			break
		}
		buf >>= n
		nbits -= n
		sym := int(e >> 16)
		if sym < 256 {
			dst[out] = byte(sym)
			out++
			continue
		}
		if sym == 256 {
			break
		}
		if sym > 285 {
			err = errors.New("deflate data is corrupt: invalid length symbol")
			break
		}
		sym -= 257
		// 48 bits hold a length's extra bits (5), a distance code (15) and
		// its extra bits (13).
		length := int(lengthBase[sym]) + int(buf&(1<<lengthExtra[sym]-1))
		buf >>= lengthExtra[sym]
		nbits -= uint(lengthExtra[sym])
		e = dist.entry(buf)
		n = uint(e & entryLenMask)
		if n == 0 {
			err = errors.New("deflate data is corrupt: invalid distance code")
			break
		}
		buf >>= n
		nbits -= n
		dsym := int(e >> 16)
		if dsym >= 30 {
			err = errors.New("deflate data is corrupt: invalid distance symbol")
			break
		}
		d := int(distBase[dsym]) + int(buf&(1<<distExtra[dsym]-1))
		buf >>= distExtra[dsym]
		nbits -= uint(distExtra[dsym])
		if d > out {
			err = errors.New("deflate data is corrupt: distance too far back")
			break
		}
		end := min(out+length, len(dst))
		switch {
		case d >= 8 && out+length+8 <= len(dst):
			// Eight bytes at a time, perhaps past end but inside dst, where
			// what follows overwrites it: cheaper than memmove for the
			// short matches that dominate.
			for p := out; p < end; p += 8 {
				binary.LittleEndian.PutUint64(dst[p:], binary.LittleEndian.Uint64(dst[p-d:]))
			}
		case d >= end-out:
			copy(dst[out:end], dst[out-d:])
		default:
			// Overlapping: the pattern doubles with each copy.
			for p := out; p < end; {
				p += copy(dst[p:end], dst[out-d:p])
			}
		}
		out = end
	}
	br.buf, br.nbits, br.pos = buf, nbits, pos
	return out, err
}

// storedBlock copies an uncompressed block, as much of it as dst holds.
func storedBlock(br *bitReader, dst []byte) (int, error) {
	br.bits(br.nbits % 8) // to a byte boundary
	header := br.bits(16) | br.bits(16)<<16
	n := int(header & 0xffff)
	if uint16(header>>16) != ^uint16(n) {
		return 0, errors.New("deflate data is corrupt: stored block length check fails")
	}
	if br.exhausted() {
		return 0, errors.New("deflate data ends in a stored block header")
	}
	// The bit buffer holds whole bytes now, the last br.over of them past
	// the end of the input: hand the real ones back.
	br.pos -= int(br.nbits/8) - br.over
	br.buf, br.nbits, br.over = 0, 0, 0
	take := min(n, len(dst))
	if br.pos+take > len(br.src) {
		br.over = 1 // reading it would run past the input
		return 0, errors.New("deflate data ends in a stored block")
	}
	copy(dst, br.src[br.pos:br.pos+take])
	br.pos += take
	return take, nil
}

// readDynamic reads a dynamic block's code lengths and builds its tables.
func (f *deflateDecoder) readDynamic(br *bitReader) error {
	nlit := int(br.bits(5)) + 257
	ndist := int(br.bits(5)) + 1
	nclen := int(br.bits(4)) + 4
	if nlit > 286 || ndist > 30 {
		return errors.New("deflate data is corrupt: too many length or distance symbols")
	}
	var cl [19]uint8
	for i := range nclen {
		cl[clOrder[i]] = uint8(br.bits(3))
	}
	if err := f.codeLen.build(cl[:]); err != nil {
		return fmt.Errorf("deflate data is corrupt: code length codes: %w", err)
	}
	lengths := f.lengths[:nlit+ndist]
	for i := 0; i < len(lengths); {
		sym, err := br.decode(&f.codeLen)
		if err != nil {
			return fmt.Errorf("deflate data is corrupt: %w", err)
		}
		if sym < 16 {
			lengths[i] = uint8(sym)
			i++
			continue
		}
		var rep int
		var val uint8
		switch sym {
		case 16:
			if i == 0 {
				return errors.New("deflate data is corrupt: repeat with no previous length")
			}
			val, rep = lengths[i-1], 3+int(br.bits(2))
		case 17:
			rep = 3 + int(br.bits(3))
		default:
			rep = 11 + int(br.bits(7))
		}
		if i+rep > len(lengths) {
			return errors.New("deflate data is corrupt: code lengths overflow")
		}
		for j := range rep {
			lengths[i+j] = val
		}
		i += rep
	}
	if br.exhausted() {
		return errors.New("deflate data ends in a block header")
	}
	if lengths[256] == 0 {
		return errors.New("deflate data is corrupt: no end-of-block code")
	}
	if err := f.lit.build(lengths[:nlit]); err != nil {
		return fmt.Errorf("deflate data is corrupt: literal/length codes: %w", err)
	}
	if err := f.dist.build(lengths[nlit:]); err != nil {
		return fmt.Errorf("deflate data is corrupt: distance codes: %w", err)
	}
	return nil
}
