package qcow2

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeImage is an image with 64 KiB clusters whose only L2 table (at host
// offset 64 KiB, covering the first 512 MiB) holds entries; the L1 table
// (at 0x30000, two entries) and the L2 table's slices are put in the cache
// so no file is read.
func fakeImage(t *testing.T, version uint32, extended bool, entries map[int][2]uint64) *Image {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "img")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	h := &Header{Version: version, ClusterBits: 16, Size: 1 << 30, L1Size: 2, L1TableOffset: 0x30000}
	l2Bits := uint32(13)
	if extended {
		h.IncompatibleFeatures |= IncompatExtendedL2
		l2Bits = 12
	}
	img := newChain(Options{L2CacheSize: 1 << 20}, nil).newImage(f, f.Name(), h, l2Bits, qcow2Format{})
	img.l1Entries = 2
	img.chain.tables.Add(cacheKey{img.id, kindL1, 0x30000}, []uint64{0x10000, 0}, 16)
	stride := int(img.l2EntryWords())
	table := make([]uint64, 8192)
	for i, e := range entries {
		table[i*stride] = e[0]
		if extended {
			table[i*stride+1] = e[1]
		}
	}
	for off := 0; off < len(table); off += tableSliceBytes / 8 {
		img.chain.tables.Add(cacheKey{img.id, kindL2, 0x10000 + uint64(off)*8}, table[off:off+tableSliceBytes/8], 1)
	}
	return img
}

const c64k = 1 << 16

func TestLookup(t *testing.T) {
	tests := []struct {
		name     string
		version  uint32
		extended bool
		entries  map[int][2]uint64
		off, max int64
		want     extent
		wantErr  string
	}{
		{"unallocated cluster", 3, false, nil, 100, 10, extent{kind: extentBacking, n: 10}, ""},
		{"unallocated run spans clusters", 3, false, nil, 0, 5 * c64k, extent{kind: extentBacking, n: 5 * c64k}, ""},
		{"no L2 table", 3, false, nil, 512 << 20, 1 << 20, extent{kind: extentBacking, n: 1 << 20}, ""},
		{"stops at the L2 table's end", 3, false, nil, 512<<20 - 100, 1000, extent{kind: extentBacking, n: 100}, ""},
		{"data", 3, false, map[int][2]uint64{0: {0x50000 | l2Copied}}, 10, 100, extent{kind: extentData, n: 100, host: 0x5000a}, ""},
		{"contiguous data merges", 3, false, map[int][2]uint64{0: {0x50000}, 1: {0x60000}, 2: {0x90000}}, 0, 3 * c64k, extent{kind: extentData, n: 2 * c64k, host: 0x50000}, ""},
		{"zero cluster", 3, false, map[int][2]uint64{0: {l2Zero}, 1: {0x70000 | l2Zero}}, 0, 3 * c64k, extent{kind: extentZero, n: 2 * c64k}, ""},
		{"zero flag in v2", 2, false, map[int][2]uint64{0: {l2Zero}}, 0, 10, extent{}, "zero flag set in a version 2 image"},
		{"compressed is one cluster", 3, false, map[int][2]uint64{0: {l2Compressed | 0x1234}, 1: {l2Compressed | 0x5678}}, 100, 3 * c64k, extent{kind: extentCompressed, n: c64k - 100, host: 0x1234}, ""},
		{"reserved bits", 3, false, map[int][2]uint64{0: {0x50000 | 1<<57}}, 0, 10, extent{}, "reserved bits"},
		{"unaligned data", 3, false, map[int][2]uint64{0: {0x50200}}, 0, 10, extent{}, "not cluster aligned"},
		{"error after a good cluster ends the run", 3, false, map[int][2]uint64{0: {0x50000}, 1: {0x60200}}, 0, 2 * c64k, extent{kind: extentData, n: c64k, host: 0x50000}, ""},
		{"subclusters: allocated run", 3, true, map[int][2]uint64{0: {0x50000, 0b0111}}, 0, c64k, extent{kind: extentData, n: 3 * 2048, host: 0x50000}, ""},
		{"subclusters: zero run", 3, true, map[int][2]uint64{0: {0x50000, 0b1100 << 32}}, 4096, c64k, extent{kind: extentZero, n: 4096}, ""},
		{"subclusters: unallocated tail runs on", 3, true, map[int][2]uint64{0: {0x50000, 0b0001}}, 2048, c64k, extent{kind: extentBacking, n: c64k}, ""},
		{"subclusters: zero in unallocated", 3, true, map[int][2]uint64{0: {0, 1 << 32}}, 0, c64k, extent{kind: extentZero, n: 2048}, ""},
		{"subclusters: both bits", 3, true, map[int][2]uint64{0: {0x50000, 1 | 1<<32}}, 0, 10, extent{}, "both allocated and zero"},
		{"subclusters: allocated in unallocated", 3, true, map[int][2]uint64{0: {0, 1}}, 0, 10, extent{}, "allocated in an unallocated cluster"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := fakeImage(t, tc.version, tc.extended, tc.entries)
			got, err := img.lookup(tc.off, tc.max)
			if expectError(t, err, tc.wantErr) {
				return
			}
			if got != tc.want {
				t.Fatalf("lookup(%#x, %d) = %+v, want %+v", tc.off, tc.max, got, tc.want)
			}
		})
	}
}

func TestL1EntryErrors(t *testing.T) {
	tests := []struct {
		name    string
		l1      uint64
		wantErr string
	}{
		{"reserved bits", 0x10000 | 1<<60, "reserved bits"},
		{"unaligned L2 table", 0x10200, "not cluster aligned"},
		{"L2 table past the end of the file", 0x7000000, "past the end of the file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := fakeImage(t, 3, false, nil)
			img.chain.tables.Add(cacheKey{1, kindL1, 0x30000}, []uint64{0x10000, tc.l1}, 16)
			_, err := img.lookup(512<<20, 10)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "L1 entry at offset 0x30008") {
				t.Fatalf("error %v, want %q at the L1 entry's offset", err, tc.wantErr)
			}
		})
	}
}

// TestTableBytesBoundsTheTableCache reads every committed image whole and
// checks that the table cache then holds no more than tableBytes says the
// chain's tables can take: CacheBudget, and the mount's memory limit, rely
// on it.
func TestTableBytesBoundsTheTableCache(t *testing.T) {
	paths, err := filepath.Glob("../testdata/images/*.qcow*")
	if err != nil {
		t.Fatal(err)
	}
	tiny, err := filepath.Glob("../testdata/images/tiny/*.qcow*")
	if err != nil || len(paths)+len(tiny) < 10 {
		t.Fatalf("the committed images: %v, %v", paths, err)
	}
	for _, p := range append(paths, tiny...) {
		t.Run(filepath.Base(p), func(t *testing.T) {
			img, err := Open(p, Options{Passphrase: func(KeyRequest) ([]byte, error) { return []byte("qcowmount"), nil }})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if _, err := io.Copy(io.Discard, io.NewSectionReader(img, 0, img.Size())); err != nil {
				t.Fatal(err)
			}
			var bound int64
			for i := range img.images() {
				bound += i.tableBytes()
			}
			if used := img.chain.tables.Used(); used == 0 || used > bound {
				t.Errorf("the table cache holds %d bytes; tableBytes says at most %d", used, bound)
			}
		})
	}
}
