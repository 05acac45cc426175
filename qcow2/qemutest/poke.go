package qemutest

import (
	"encoding/binary"
	"os"
	"testing"
)

// ImageFile is a qcow2 image of 64 KiB clusters and 16-bit refcounts, as
// qemu-img makes it by default, read into memory for a test to damage.
type ImageFile struct {
	t    testing.TB
	path string
	B    []byte
}

// ReadImageFile reads the image at path, failing the test unless its
// layout is the one ImageFile's offsets assume.
func ReadImageFile(t testing.TB, path string) *ImageFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	if len(b) < 112 || be.Uint32(b[20:]) != 16 || be.Uint32(b[4:]) != 3 || be.Uint32(b[96:]) != 4 {
		t.Fatalf("%s: not a v3 image of 64 KiB clusters and 16-bit refcounts", path)
	}
	return &ImageFile{t, path, b}
}

func (f *ImageFile) U64(off int64) uint64      { return binary.BigEndian.Uint64(f.B[off:]) }
func (f *ImageFile) Put64(off int64, v uint64) { binary.BigEndian.PutUint64(f.B[off:], v) }
func (f *ImageFile) Put16(off int64, v uint16) { binary.BigEndian.PutUint16(f.B[off:], v) }

// L1 and Reftable are the offsets of the L1 and refcount tables.
func (f *ImageFile) L1() int64       { return int64(f.U64(40)) }
func (f *ImageFile) Reftable() int64 { return int64(f.U64(48)) }

// L2Entry is the file offset of entry i of the first L2 table.
func (f *ImageFile) L2Entry(i int64) int64 { return int64(f.U64(f.L1())&0x00fffffffffffe00) + 8*i }

// DataCluster is the host cluster that entry i of the first L2 table names.
func (f *ImageFile) DataCluster(i int64) int64 {
	return int64(f.U64(f.L2Entry(i))&0x00fffffffffffe00) >> 16
}

// Refcount is the file offset of the refcount of a host cluster that the
// first refcount block covers.
func (f *ImageFile) Refcount(cluster int64) int64 { return int64(f.U64(f.Reftable())) + 2*cluster }

// Leak appends a cluster that nothing uses and gives it refcount 1.
func (f *ImageFile) Leak() {
	c := (int64(len(f.B)) + 64<<10 - 1) >> 16
	f.B = append(f.B, make([]byte, (c+1)<<16-int64(len(f.B)))...)
	f.Put16(f.Refcount(c), 1)
}

// Save writes the image back.
func (f *ImageFile) Save() {
	f.t.Helper()
	if err := os.WriteFile(f.path, f.B, 0o644); err != nil {
		f.t.Fatal(err)
	}
}
