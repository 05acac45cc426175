package qcow2

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// seedImages adds the tiny committed images (testdata/make-images.sh made
// them with qemu-img: v1, v2, v3, compressed, zero clusters, subclusters,
// snapshots) to a fuzz target's corpus. Small seeds keep fuzzing fast.
func seedImages(f *testing.F, add func(b []byte)) {
	f.Helper()
	files, err := filepath.Glob("../testdata/images/tiny/*.qcow*")
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed images: %v", err)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		add(b)
	}
}

// openBytes reads an image from memory, with small caches, so that
// eviction is exercised too.
func openBytes(b []byte, snapshot string) (*Image, error) {
	return New(bytes.NewReader(b), int64(len(b)), Options{Name: "fuzz.qcow2", Snapshot: snapshot, NoBacking: true, L2CacheSize: 64 << 10, ClusterCacheSize: 128 << 10})
}

// readSome reads the disk in a few windows: the start, the end, and where
// off points; a hostile size can make the whole disk far too big to read.
func readSome(t *testing.T, img *Image, off uint64, n int) {
	buf := make([]byte, n)
	size := img.Size()
	for _, at := range []int64{0, size - int64(n), int64(off % uint64(max(size, 1))), int64(off)} {
		if at < 0 {
			continue
		}
		got, err := img.ReadAt(buf, at)
		if got < 0 || got > n || (err == nil && got != n) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", at, n, got, err)
		}
	}
}

// FuzzOpen feeds whole image files to Open (header, extensions, tables,
// snapshots), then reads, describes and checks whatever opens.
func FuzzOpen(f *testing.F) {
	seedImages(f, func(b []byte) { f.Add(b) })
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, snapshot := range []string{"", "1"} {
			img, err := openBytes(b, snapshot)
			if err != nil {
				continue
			}
			if _, err := img.Info(); err != nil {
				t.Errorf("info: %v", err)
			}
			// Only I/O fails a check, and bytes in memory have none.
			if _, err := img.Check(); err != nil {
				t.Errorf("check: %v", err)
			}
			readSome(t, img, 12345, 70000)
			img.Close()
		}
	})
}

// FuzzReadAt reads fuzzed images at fuzzed offsets and lengths: the L1
// and L2 entries, descriptors, bitmaps and compressed data a hostile image
// can hold.
func FuzzReadAt(f *testing.F) {
	seedImages(f, func(b []byte) { f.Add(b, uint64(4096), uint32(65536)) })
	f.Fuzz(func(t *testing.T, b []byte, off uint64, n uint32) {
		img, err := openBytes(b, "")
		if err != nil {
			return
		}
		defer img.Close()
		readSome(t, img, off, int(n%(4<<20))+1)
	})
}
