package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// The bounds below are the issue's, with margins for the race detector
// and a loaded machine: they catch a reader that does seconds of work per
// read, not one that is a little slow.

// TestL2ThrashChain reads a 512-byte-cluster top image, half of it
// unallocated, over 63 layers of 2 MiB L2 tables. Whole tables would evict
// each other on every read (10 s for 128 KiB); slices all fit.
func TestL2ThrashChain(t *testing.T) {
	top := qemutest.L2ThrashChain(t, t.TempDir(), 64)
	img, err := qcow2.Open(top, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	want := make([]byte, 128<<10)
	for c := 0; c < len(want)/512; c += 2 {
		copy(want[c*512:(c+1)*512], bytes.Repeat([]byte{0x5a}, 512))
	}
	got := make([]byte, len(want))
	for i, off := range []int64{0, 512 << 10, 0} {
		start := time.Now()
		if _, err := img.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if at := qemutest.FirstDiff(got, want); at >= 0 {
			t.Fatalf("byte %#x: got %#x, want %#x", off+int64(at), got[at], want[at])
		}
		t.Logf("read %d: 128 KiB in %v", i, took)
		if took > 3*time.Second {
			t.Fatalf("a 128 KiB read took %v (bound: 1 s, with margin 3 s)", took)
		}
	}
}

// TestDeflateBomb reads a cluster of 4 MiB of empty dynamic blocks: it
// fails fast, as a format error, and faster still the second time.
func TestDeflateBomb(t *testing.T) {
	img, err := qcow2.Open(qemutest.DeflateBomb(t, t.TempDir()), qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, 4096)
	for i := range 3 {
		start := time.Now()
		_, err := img.ReadAt(buf, int64(i)*8192)
		took := time.Since(start)
		var fe *qcow2.FormatError
		if !errors.As(err, &fe) {
			t.Fatalf("read %d: %v, want a format error", i, err)
		}
		t.Logf("read %d failed in %v: %v", i, took, err)
		if took > time.Second {
			t.Fatalf("read %d took %v (bound: 200 ms, with margin 1 s)", i, took)
		}
	}
}

// TestLongSnapshotNamesAreCut: names longer than QEMU shows are cut to its
// 255 bytes for showing, with a warning; names QEMU reads as empty (all
// NULs, 64 KiB of them in a hostile table) cost nothing.
func TestLongSnapshotNamesAreCut(t *testing.T) {
	img, err := qcow2.Open(qemutest.ManySnapshots(t, t.TempDir(), 3, 1000), qcow2.Options{Snapshot: "00000002"})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	snaps, err := img.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 3 || snaps[1].ID != "00000002" || snaps[1].Name != "" || len(img.Warnings()) != 0 {
		t.Fatalf("snapshots: %d, second %q named %q; warnings %q", len(snaps), snaps[1].ID, snaps[1].Name, img.Warnings())
	}
	qemutest.Require(t, "qemu-img")
	long := filepath.Join(t.TempDir(), "long.qcow2")
	qemutest.Create(t, long, "qcow2", "1M")
	qemutest.Run(t, "qemu-img", "snapshot", "-c", "a", long)
	qemutest.Run(t, "qemu-img", "snapshot", "-c", "b", long)
	qemutest.SetSnapshotNames(t, long, []string{strings.Repeat("x", 1000), "b"})
	img, err = qcow2.Open(long, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if snaps, err = img.Snapshots(); err != nil || len(snaps[0].Name) != 255 {
		t.Fatalf("a name of 1000 bytes shows as %d (%v)", len(snaps[0].Name), err)
	}
	if w := img.Warnings(); len(w) != 1 || !strings.Contains(w[0], "1 snapshot IDs or names are longer than QEMU shows") {
		t.Fatalf("warnings %q", w)
	}
}

// TestTinyClusterTablesStayWithinBudget: with 512-byte clusters a table
// slice is 512 bytes, and the cache's bookkeeping for each is a quarter
// of that again; the cache counts both, so that what the tables take of
// the heap is what the budget says (the mount's memory limit is made of
// it: a heap over it keeps the collector running).
func TestTinyClusterTablesStayWithinBudget(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	path := filepath.Join(t.TempDir(), "tiny-clusters.qcow2")
	qemutest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", path, "1G")
	// Every L2 table there, all unallocated: 32768 of them, one per 32
	// KiB of disk, in a sparse tail of the file.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	end, l1 := int64(len(b)+511)&^511, binary.BigEndian.Uint64(b[40:])
	for i := range int64(32768) {
		binary.BigEndian.PutUint64(b[l1+8*uint64(i):], uint64(end+512*i))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, end+512*32768); err != nil {
		t.Fatal(err)
	}
	const budget = 8 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	img, err := qcow2.Open(path, qcow2.Options{L2CacheSize: budget})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, 512)
	for off := int64(0); off < img.Size(); off += 32 << 10 {
		if _, err := img.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	// The image, its file and what a read allocates: well under 1 MiB.
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("the heap grew by %.1f MiB for a table budget of %d MiB", float64(grew)/(1<<20), budget>>20)
	if grew > budget+1<<20 {
		t.Errorf("the heap grew by %d bytes, over the table budget of %d and 1 MiB", grew, budget)
	}
	runtime.KeepAlive(img)
}
