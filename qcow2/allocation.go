package qcow2

import (
	"fmt"

	"github.com/qcowmount/qcowmount/qcow2/internal/hostfile"
)

// Allocation reports whether the guest bytes from off on hold data or are
// a hole, and for how many bytes (at most limit) that holds. A hole is
// what reads as zeros without being read: unallocated in every image of
// the chain (or past a shorter backing file), a zero cluster, or clusters
// over a hole of a local host file (a preallocated image's). Data is
// anything stored, zeros included. It is what lseek's SEEK_DATA and
// SEEK_HOLE, and a sparse copy, need.
func (img *Image) Allocation(off, limit int64) (data bool, n int64, err error) {
	if off < 0 || off >= img.size || limit <= 0 {
		return false, 0, fmt.Errorf("allocation at %d: outside the disk (%d bytes)", off, img.size)
	}
	e, err := img.lookup(off, min(limit, img.size-off))
	if err != nil {
		return false, 0, fmt.Errorf("%s: guest offset %#x: %w", img.path, off, err)
	}
	switch e.kind {
	case extentZero:
		return false, e.n, nil
	case extentBacking:
		return allocationBelow(img.backing, off, e.n)
	case extentData:
		return img.hostAllocation(e)
	}
	return true, e.n, nil
}

// hostAllocation tells data from holes in a run of allocated clusters, as
// QEMU's block status does down to the file: an image made with
// preallocation=metadata or falloc allocates every cluster over a hole of
// the host file, and those read as zeros. Only a local file can tell; an
// encrypted cluster over a hole decrypts to noise, not zeros: data.
func (img *Image) hostAllocation(e extent) (bool, int64, error) {
	f, local := osFile(img.data)
	if !local || img.hdr.CryptMethod != CryptNone {
		return true, e.n, nil
	}
	return hostfile.Extent(f, int64(e.host), e.n)
}

// allocator is a disk that can tell data from holes: an image, or a raw
// backing file.
type allocator interface {
	Allocation(off, limit int64) (bool, int64, error)
}

// allocationBelow asks the backing disk about an unallocated range: past
// its end, or without one, the range is a hole.
func allocationBelow(backing guestDisk, off, n int64) (bool, int64, error) {
	if backing == nil || off >= backing.Size() {
		return false, n, nil
	}
	n = min(n, backing.Size()-off)
	if a, ok := backing.(allocator); ok {
		return a.Allocation(off, n)
	}
	return true, n, nil
}

// Allocation asks the file system holding a raw backing file where its
// data and holes are.
func (r *rawDisk) Allocation(off, limit int64) (bool, int64, error) {
	limit = min(limit, r.size-off)
	f, ok := osFile(r.f)
	if !ok {
		return true, limit, nil // nothing to ask
	}
	return hostfile.Extent(f, off, limit)
}
