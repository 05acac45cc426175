package qcow2

import (
	"encoding/binary"
	"fmt"
	"math"
)

// The old qcow format (version 1), which QEMU still reads: a 48-byte
// header, an L1 table of plain L2 offsets, L2 tables of 2^l2_bits entries,
// and deflate-compressed clusters whose descriptor holds an exact length.
const (
	qcow1HeaderLength     = 48
	qcow1MinClusterBits   = 9
	qcow1MaxClusterBits   = 16
	qcow1CompressedFlag   = 1 << 63
	qcow1MaxL1Entries     = math.MaxInt32 / 8
	qcow1BackingNameLimit = 1023
)

// readQcowHeader reads the header of a qcow version 1 image whose first
// bytes are in first. QEMU's checks on open are mirrored, plus: the L1
// table lies in the file.
func (c *chain) readQcowHeader(f File, fileSize int64, path string, first []byte, snapshot string) (*Image, error) {
	fail := func(err error) (*Image, error) { return nil, err }
	if len(first) < qcow1HeaderLength {
		return fail(formatErr(path, "header", 0, "file is %d bytes, shorter than a qcow header (48)", len(first)))
	}
	if snapshot != "" {
		return fail(fmt.Errorf("no snapshot %q: qcow version 1 images have no snapshots", snapshot))
	}
	be := binary.BigEndian
	backingOff, backingLen := be.Uint64(first[8:]), be.Uint32(first[16:])
	size := be.Uint64(first[24:])
	clusterBits, l2Bits := uint32(first[32]), uint32(first[33])
	cryptMethod := be.Uint32(first[36:])
	l1Off := be.Uint64(first[40:])
	if size <= 1 || size > math.MaxInt64 {
		return fail(formatErr(path, "size", 24, "virtual size %d is out of range", size))
	}
	if clusterBits < qcow1MinClusterBits || clusterBits > qcow1MaxClusterBits {
		return fail(formatErr(path, "cluster_bits", 32, "%d is outside %d..%d", clusterBits, qcow1MinClusterBits, qcow1MaxClusterBits))
	}
	if l2Bits < qcow1MinClusterBits-3 || l2Bits > qcow1MaxClusterBits-3 {
		return fail(formatErr(path, "l2_bits", 33, "%d is outside %d..%d", l2Bits, qcow1MinClusterBits-3, qcow1MaxClusterBits-3))
	}
	switch cryptMethod {
	case CryptNone, CryptAES:
	default:
		return fail(formatErr(path, "crypt_method", 36, "%d is not an encryption method (0 or 1)", cryptMethod))
	}
	shift := clusterBits + l2Bits
	l1Entries := (size + (1<<shift - 1)) >> shift
	if l1Entries > qcow1MaxL1Entries {
		return fail(formatErr(path, "size", 24, "virtual size %d is too big", size))
	}
	if l1Off > math.MaxInt64-l1Entries*8 || l1Off+l1Entries*8 > uint64(fileSize) {
		return fail(formatErr(path, "l1_table_offset", 40, "table [%#x, +%d) lies beyond the end of the file (%d bytes)", l1Off, l1Entries*8, fileSize))
	}
	img := c.newImage(f, path, &Header{Version: 1, ClusterBits: clusterBits, Size: size, CryptMethod: cryptMethod, L1Size: uint32(l1Entries), L1TableOffset: l1Off}, l2Bits, qcowFormat{})
	if backingOff != 0 {
		// The name may lie anywhere in the file's first 2 MiB, past what
		// openImage read.
		if end := backingOff + uint64(backingLen); backingOff <= 1<<maxClusterBits && end > uint64(len(first)) && end <= uint64(min(fileSize, 1<<maxClusterBits)) {
			var err error
			if first, err = readPrefix(f, first, int64(end)); err != nil {
				return fail(fmt.Errorf("reading the backing file name: %w", err))
			}
		}
		if backingLen > qcow1BackingNameLimit || backingOff > uint64(len(first)) || uint64(backingLen) > uint64(len(first))-backingOff {
			return fail(formatErr(path, "backing_file_size", 16, "backing file name at %#x, %d bytes, is too long or past the end of the file", backingOff, backingLen))
		}
		img.backingName = string(first[backingOff : backingOff+uint64(backingLen)])
	}
	img.l1Entries = int64(l1Entries)
	img.fileSize = fileSize
	return img, nil
}

// qcowFormat is the old qcow format's: plain offsets in L1 and L2
// entries, a compressed flag, and an exact length in a compressed
// cluster's descriptor.
type qcowFormat struct{}

// l2Offset: an L1 entry is the plain offset of its L2 table.
func (qcowFormat) l2Offset(_ *Image, entry uint64, _ int64) (uint64, error) { return entry, nil }

// clusterExtent classifies the bytes from guest offset off to the end of
// their cluster, from its L2 entry.
func (qcowFormat) clusterExtent(img *Image, table []uint64, _ uint64, off int64) (extent, error) {
	cs := img.clusterSize()
	in := off & (cs - 1)
	entry := table[(off>>img.clusterBits)&(img.sliceEntries-1)]
	switch {
	case entry&qcow1CompressedFlag != 0:
		return extent{kind: extentCompressed, n: cs - in, host: entry}, nil
	case entry == 0:
		return extent{kind: extentBacking, n: cs - in}, nil
	default:
		return extent{kind: extentData, n: cs - in, host: entry + uint64(in)}, nil
	}
}

// compressedRange: bits 63-cluster_bits..62 of the descriptor hold the
// exact byte count, the bits below the host offset.
func (qcowFormat) compressedRange(img *Image, desc uint64) (uint64, int64) {
	shift := 63 - img.clusterBits
	return desc & (1<<shift - 1), int64((desc >> shift) & (1<<img.clusterBits - 1))
}
