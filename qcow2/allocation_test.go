package qcow2_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// qemuMap is where `qemu-img map` says the guest's data is: the oracle
// for holes. A range is a hole where QEMU says it reads as zeros without
// reading it (unallocated, a zero cluster, a hole of the host file).
func qemuMap(t *testing.T, image string) func(off int64) bool {
	t.Helper()
	var ranges []struct {
		Start, Length int64
		Zero          bool
	}
	if err := json.Unmarshal([]byte(qemutest.Run(t, "qemu-img", "map", "--output=json", image)), &ranges); err != nil {
		t.Fatal(err)
	}
	return func(off int64) bool {
		for _, r := range ranges {
			if off >= r.Start && off < r.Start+r.Length {
				return !r.Zero
			}
		}
		t.Fatalf("qemu-img map says nothing of offset %d", off)
		return false
	}
}

// TestAllocationMatchesQemuImgMap walks the allocation of images of every
// kind and checks each run against qemu-img map, byte range by range.
func TestAllocationMatchesQemuImgMap(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	tests := []struct {
		name  string
		build func(t *testing.T, dir string) string
		// QEMU looks for the host file's holes only where it finds the
		// image preallocated by metadata (qcow2_detect_metadata_preallocation);
		// we look wherever the host file is local. Where we find more holes
		// than QEMU (falloc's unwritten extents), each must read as zeros.
		moreHoles bool
	}{
		{"data, zero clusters and holes", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemutest.Create(t, p, "qcow2", "4M")
			qemutest.IO(t, p, "write -P 1 0 64k", "write -z 128k 64k", "write -P 2 1M 4k", "write -P 0 2M 64k")
			return p
		}, false},
		{"compressed", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemutest.Create(t, p, "qcow2", "4M")
			qemutest.IO(t, p, "write -c -P 1 0 64k", "write -c -P 2 1M 64k")
			return p
		}, false},
		{"three-level chain with subclusters", func(t *testing.T, dir string) string {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			return top
		}, false},
		{"preallocated metadata: clusters over host holes", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemutest.Create(t, p, "qcow2", "16M", "preallocation=metadata")
			qemutest.IO(t, p, "write -P 1 1M 1M", "write -P 0 5M 64k", "write -P 2 9M 4k")
			return p
		}, false},
		{"preallocated falloc", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemutest.Create(t, p, "qcow2", "16M", "preallocation=falloc")
			qemutest.IO(t, p, "write -P 1 1M 1M")
			return p
		}, true},
		{"sparse raw backing file", func(t *testing.T, dir string) string {
			base := filepath.Join(dir, "base.raw")
			qemutest.WriteFile(t, base, 1<<20, qemutest.Pattern(4, 64<<10))
			qemutest.WriteFile(t, base, 3<<20-4096, qemutest.Pattern(5, 4096))
			top := filepath.Join(dir, "top.qcow2")
			qemutest.Create(t, top, "qcow2", "5M", "backing_file=base.raw", "backing_fmt=raw")
			qemutest.IO(t, top, "write -P 3 2M 64k")
			return top
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			image := tc.build(t, t.TempDir())
			isData := qemuMap(t, image)
			raw := qemutest.RawBytes(t, image)
			img, err := qcow2.Open(image, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			runs := 0
			for off := int64(0); off < img.Size(); runs++ {
				data, n, err := img.Allocation(off, img.Size()-off)
				if err != nil {
					t.Fatal(err)
				}
				if n <= 0 {
					t.Fatalf("Allocation(%d) made no progress", off)
				}
				// Every 512-byte sector of the run, as QEMU sees it.
				for s := off; s < off+n; s += 512 {
					if isData(s) != data && !(tc.moreHoles && !data && isZero(raw[s:s+512])) {
						t.Fatalf("offset %d: data %v, qemu-img map says %v", s, data, isData(s))
					}
				}
				off += n
			}
			t.Logf("%d runs", runs)
		})
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// TestAllocationPastTheEndOfTheFile: clusters an image places past the end
// of its file (truncated in a copy, say) are data, not holes, so that a
// sparse copy reads them and the read says what is wrong instead of the
// copy holding zeros.
func TestAllocationPastTheEndOfTheFile(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	path := filepath.Join(t.TempDir(), "cut.qcow2")
	qemutest.Create(t, path, "qcow2", "1M")
	qemutest.IO(t, path, "write -P 7 0 192k")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// The last data cluster is the file's last; half of it is cut off.
	if err := os.Truncate(path, st.Size()-32<<10); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for off := int64(0); off < 192<<10; {
		data, n, err := img.Allocation(off, 192<<10-off)
		if err != nil || !data || n <= 0 {
			t.Fatalf("Allocation(%d) = %v, %d, %v; want data", off, data, n, err)
		}
		off += n
	}
	if _, err := img.ReadAt(make([]byte, 4096), 192<<10-4096); err == nil {
		t.Error("a read of the cut cluster succeeded")
	}
}
