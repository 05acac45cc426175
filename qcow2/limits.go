package qcow2

import "math"

// Limits QEMU enforces when it opens an image; we mirror them so that we
// refuse exactly what QEMU refuses, and never size an allocation from an
// unchecked header field.
const (
	minClusterBits      = 9
	maxClusterBits      = 21
	maxBackingNameLen   = 1023
	maxL1Bytes          = 32 << 20
	maxRefcountBytes    = 8 << 20
	maxSnapshots        = 65536
	maxSnapshotTable    = 64 << 20
	maxSnapshotExtra    = 1024
	maxRefcountOrder    = 6
	v2HeaderLength      = 72
	v3MinHeaderLength   = 104
	snapshotHeaderBytes = 40
)

// checkTable applies QEMU's table checks: bounded size, cluster-aligned
// offset, no overflow; and, where fileSize >= 0, that the table lies inside
// the file (QEMU would read zeros there; we refuse instead).
func checkTable(path, field string, at int64, off, entries, entryLen, maxBytes uint64, clusterBits uint32, fileSize int64) error {
	if entries > maxBytes/entryLen {
		return formatErr(path, field, at, "table of %d entries exceeds %d bytes", entries, maxBytes)
	}
	size := entries * entryLen
	if off&(1<<clusterBits-1) != 0 {
		return formatErr(path, field, at, "%#x is not cluster aligned", off)
	}
	if off > math.MaxInt64-size {
		return formatErr(path, field, at, "%#x + %d overflows", off, size)
	}
	if fileSize >= 0 && size > 0 && off+size > uint64(fileSize) {
		return formatErr(path, field, at, "table [%#x, %#x) lies beyond the end of the file (%d bytes)", off, off+size, fileSize)
	}
	return nil
}
