package qcow2

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestOneClusterClassifier: the same L2 entries, written into images
// QEMU made, through the read path's lookup and through Check: each
// treats every entry as the one classifier says (what a read finds
// there; whether check counts a cluster the image holds).
func TestOneClusterClassifier(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	const cs = 64 << 10
	readsAs := map[clusterType]extentKind{
		clusterUnallocated: extentBacking, clusterZeroPlain: extentZero, clusterZeroAlloc: extentZero,
		clusterNormal: extentData, clusterCompressed: extentCompressed,
	}
	holds := map[clusterType]int64{clusterZeroAlloc: 1, clusterNormal: 1, clusterCompressed: 1}
	type entry struct {
		name string
		e    func(data uint64) uint64 // of the host offset of the image's data cluster
		want clusterType
	}
	plain := []entry{
		{"zero", func(uint64) uint64 { return 0 }, clusterUnallocated},
		{"copied flag alone", func(uint64) uint64 { return l2Copied }, clusterUnallocated},
		{"offset, copied", func(d uint64) uint64 { return d | l2Copied }, clusterNormal},
		{"offset", func(d uint64) uint64 { return d }, clusterNormal},
		{"zero flag", func(uint64) uint64 { return l2Zero }, clusterZeroPlain},
		{"zero flag and an offset", func(d uint64) uint64 { return d | l2Zero }, clusterZeroAlloc},
		{"compressed", func(d uint64) uint64 { return l2Compressed | d }, clusterCompressed},
	}
	tests := []struct {
		name    string
		opts    []string
		cluster uint64 // whose entry is written: cluster 0 holds data
		entries []entry
	}{
		{"plain", nil, 1, plain},
		// Offset 0 is the data file's first cluster, guest cluster 0's:
		// the copied flag says it is there.
		{"external data file", []string{"data_file=data.raw"}, 0, []entry{
			{"zero", func(uint64) uint64 { return 0 }, clusterUnallocated},
			{"copied flag alone", func(uint64) uint64 { return l2Copied }, clusterNormal},
			{"zero flag", func(uint64) uint64 { return l2Zero }, clusterZeroPlain},
		}},
		// The zero flag is the bitmap's: bit 0 of the entry says nothing.
		{"extended L2", []string{"extended_l2=on"}, 1, []entry{
			{"zero", func(uint64) uint64 { return 0 }, clusterUnallocated},
			{"offset, copied", func(d uint64) uint64 { return d | l2Copied }, clusterNormal},
		}},
	}
	for _, tc := range tests {
		for _, e := range tc.entries {
			t.Run(tc.name+": "+e.name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "img.qcow2")
				qemutest.Create(t, path, "qcow2", "1M", tc.opts...)
				qemutest.IO(t, path, "write -P 7 0 64k") // cluster 0: data, and an L2 table
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				be := binary.BigEndian
				l2 := be.Uint64(b[be.Uint64(b[40:]):]) & entryOffsetMask
				stride := uint64(8)
				if be.Uint64(b[72:])&IncompatExtendedL2 != 0 {
					stride = 16
				}
				at := l2 + tc.cluster*stride
				be.PutUint64(b[at:], e.e(be.Uint64(b[l2:])&entryOffsetMask))
				if stride == 16 && e.want == clusterNormal {
					be.PutUint64(b[at+8:], subclusterAllMask)
				}
				if err := os.WriteFile(path, b, 0o644); err != nil {
					t.Fatal(err)
				}
				img, err := Open(path, Options{AllowMissing: true})
				if err != nil {
					t.Fatal(err)
				}
				defer img.Close()
				ext, err := img.lookup(int64(tc.cluster)*cs, cs)
				if err != nil || ext.kind != readsAs[e.want] {
					t.Errorf("the read path finds %v (%v), want %v", ext.kind, err, readsAs[e.want])
				}
				res, err := img.Check()
				if err != nil {
					t.Fatal(err)
				}
				if got := res.AllocatedClusters - int64(tc.cluster); got != holds[e.want] {
					t.Errorf("check counts %d clusters held for it, want %d", got, holds[e.want])
				}
			})
		}
	}
}

// TestDecompressHelpersAreShared: the goroutines that decompress whole
// clusters beside a read's own are the chain's, for all its reads
// together; when other reads hold all of them, a read decompresses its
// clusters itself, and reads what QEMU reads.
func TestDecompressHelpersAreShared(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	path := filepath.Join(t.TempDir(), "compressed.qcow2")
	qemutest.Create(t, path, "qcow2", "1M")
	qemutest.IO(t, path, "write -c -P 0x31 0 512k")
	img, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	helpers := img.chain.helpers
	for len(helpers) < cap(helpers) {
		helpers <- struct{}{} // as if other reads had them all
	}
	got := make([]byte, 512<<10)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte{0x31}, len(got))) {
		t.Fatal("eight compressed clusters read, without helpers, as other bytes than QEMU wrote")
	}
	if len(helpers) != cap(helpers) {
		t.Fatalf("%d of %d helpers taken after the read", len(helpers), cap(helpers))
	}
}
