package overlay

import (
	"encoding/binary"
	"fmt"
)

// The parts of the qcow2 format the writer writes (QEMU's
// docs/interop/qcow2.rst), version 3 unless it continues a version 2 file.
const (
	magic         = 0x514649fb // "QFI\xfb"
	headerLength  = 112        // version 3 with the compression type byte, padded
	refcountOrder = 4          // 16-bit refcounts: QEMU's default, and all we write

	// Fields of the header the writer changes after creating it.
	offRefcountTable            = 48 // u64, then refcount_table_clusters u32 at 56
	offAutoclearFeatures        = 88
	extBackingFormat            = 0xe2792aca
	maxBackingNameLength        = 1023 // QEMU's limit
	entryCopied          uint64 = 1 << 63
	entryCompressed      uint64 = 1 << 62
	entryZero            uint64 = 1
	offsetMask           uint64 = 0x00fffffffffffe00

	// DefaultClusterBits is qemu-img create's default: 64 KiB clusters.
	DefaultClusterBits = 16
	minClusterBits     = 9
	maxClusterBits     = 21
)

// newHeader is the first cluster of a new overlay: the header, the
// backing format extension, and the backing file's name after them.
func newHeader(clusterBits uint32, size int64, l1Entries, l1Offset, refTableOffset, refTableClusters int64, b Backing) ([]byte, error) {
	cs := 1 << clusterBits
	if len(b.Name) == 0 || len(b.Name) > maxBackingNameLength {
		return nil, fmt.Errorf("the backing file name is %d bytes: QEMU takes 1 to %d", len(b.Name), maxBackingNameLength)
	}
	fmtLen := (len(b.Format) + 7) &^ 7
	nameOff := headerLength + 8 + fmtLen + 8 // the format extension, then the end marker
	if nameOff+len(b.Name) > cs {
		return nil, fmt.Errorf("the backing file name does not fit in the first cluster (%d bytes)", cs)
	}
	h := make([]byte, cs)
	be := binary.BigEndian
	be.PutUint32(h[0:], magic)
	be.PutUint32(h[4:], 3)
	be.PutUint64(h[8:], uint64(nameOff))
	be.PutUint32(h[16:], uint32(len(b.Name)))
	be.PutUint32(h[20:], clusterBits)
	be.PutUint64(h[24:], uint64(size))
	be.PutUint32(h[36:], uint32(l1Entries))
	be.PutUint64(h[40:], uint64(l1Offset))
	be.PutUint64(h[offRefcountTable:], uint64(refTableOffset))
	be.PutUint32(h[offRefcountTable+8:], uint32(refTableClusters))
	be.PutUint32(h[96:], refcountOrder)
	be.PutUint32(h[100:], headerLength)
	be.PutUint32(h[headerLength:], extBackingFormat)
	be.PutUint32(h[headerLength+4:], uint32(len(b.Format)))
	copy(h[headerLength+8:], b.Format)
	copy(h[nameOff:], b.Name)
	return h, nil
}
