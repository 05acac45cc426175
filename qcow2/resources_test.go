package qcow2_test

import (
	"bytes"
	"errors"
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
// 255 bytes, with a warning, so a table of 64 KiB names costs little.
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
	if len(snaps) != 3 || snaps[1].ID != "00000002" || len(snaps[1].Name) != 255 {
		t.Fatalf("snapshots: %d, second %q with a name of %d bytes", len(snaps), snaps[1].ID, len(snaps[1].Name))
	}
	if w := img.Warnings(); len(w) != 1 || !strings.Contains(w[0], "3 snapshot IDs or names are longer than QEMU shows") {
		t.Fatalf("warnings %q", w)
	}
}
