package qcow2_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// layout describes a test image: its cluster size, version, compression.
type layout struct {
	clusterSize int64
	compat      string // "0.10" (v2) or "1.1" (v3)
	compression string // "", "zlib" or "zstd"
}

func (l layout) name() string {
	s := fmt.Sprintf("cs%d-%s", l.clusterSize, map[string]string{"0.10": "v2", "1.1": "v3"}[l.compat])
	if l.compression != "" {
		s += "-" + l.compression
	}
	return s
}

// l2Span is how many guest bytes one L2 table maps.
func (l layout) l2Span() int64 { return l.clusterSize * (l.clusterSize / 8) }

// size makes the disk cross at least one L2 table boundary (where that
// stays small) and end in the middle of a cluster.
func (l layout) size() int64 {
	if span := l.l2Span(); span <= 512<<20 {
		return span + 2*1024*1024 + 1536
	}
	return 64<<20 + 1536
}

// buildImage makes an image of layout l in dir with QEMU: patterned data
// across cluster and L2 boundaries, holes, zero clusters, small unaligned
// writes, and the partial last cluster.
func buildImage(t *testing.T, dir string, l layout) string {
	t.Helper()
	size := l.size()
	raw := filepath.Join(dir, "src.raw")
	cs := l.clusterSize
	writes := []struct{ off, n int64 }{
		{0, cs + cs/2},
		{5*cs + 100, 3 * cs},
		{l.l2Span() - cs/2 - 7, cs + 300},
		{size - 700, 700},
		{size / 2, 64 << 10},
	}
	if err := os.Truncate(raw, 0); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for i, w := range writes {
		if w.off >= 0 && w.off+w.n <= size {
			qemutest.WriteFile(t, raw, w.off, qemutest.Pattern(byte(i+1), int(w.n)))
		}
	}
	if err := os.Truncate(raw, size); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
		"-o", fmt.Sprintf("cluster_size=%d,compat=%s", cs, l.compat), raw, plain)
	// Zero a range that held data (zero clusters in v3, explicit zeros in
	// v2), and write small unaligned pieces.
	qemutest.IO(t, plain,
		fmt.Sprintf("write -z %d %d", 6*cs, 2*cs),
		fmt.Sprintf("write -P 0x5a %d %d", 3*cs+1, 1000),
		fmt.Sprintf("write -P 0xa5 %d %d", 20*cs-9, 18),
	)
	if l.compression == "" {
		return plain
	}
	out := filepath.Join(dir, "compressed.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-q", "-c", "-O", "qcow2",
		"-o", fmt.Sprintf("cluster_size=%d,compat=%s,compression_type=%s", cs, l.compat, l.compression), plain, out)
	return out
}

var layouts = []layout{
	{512, "1.1", ""}, {512, "0.10", ""}, {512, "1.1", "zlib"}, {512, "1.1", "zstd"},
	{4096, "1.1", ""}, {4096, "0.10", ""}, {4096, "0.10", "zlib"}, {4096, "1.1", "zstd"},
	{65536, "1.1", ""}, {65536, "0.10", ""}, {65536, "1.1", "zlib"}, {65536, "1.1", "zstd"},
	{2 << 20, "1.1", ""}, {2 << 20, "0.10", ""}, {2 << 20, "1.1", "zlib"}, {2 << 20, "1.1", "zstd"},
}

func TestReadMatchesQEMU(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	for _, l := range layouts {
		t.Run(l.name(), func(t *testing.T) {
			t.Parallel()
			path := buildImage(t, t.TempDir(), l)
			img, err := qcow2.Open(path, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			compareWithRaw(t, img, qemutest.Raw(t, path))
		})
	}
}

// compareWithRaw reads all of d with read sizes that vary, so requests
// start and end at odd places, and compares with QEMU's raw output.
func compareWithRaw(t *testing.T, d *qcow2.Image, rawPath string) {
	t.Helper()
	raw, err := os.Open(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	st, _ := raw.Stat()
	if d.Size() != st.Size() {
		t.Fatalf("size %d, QEMU's raw output is %d", d.Size(), st.Size())
	}
	sizes := []int{1 << 20, 4095, 1, 128<<10 + 7, 3 << 20}
	got := make([]byte, 3<<20)
	want := make([]byte, 3<<20)
	for off, i := int64(0), 0; off < d.Size(); i++ {
		n := int(min(int64(sizes[i%len(sizes)]), d.Size()-off))
		if _, err := d.ReadAt(got[:n], off); err != nil && err != io.EOF {
			t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
		}
		if _, err := raw.ReadAt(want[:n], off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if at := qemutest.FirstDiff(got[:n], want[:n]); at >= 0 {
			t.Fatalf("byte %#x differs: got %#x, QEMU %#x", off+int64(at), got[at], want[at])
		}
		off += int64(n)
	}
}

func TestReadAtFollowsReaderAtContract(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	path := buildImage(t, t.TempDir(), layout{4096, "1.1", "zlib"})
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	want := qemutest.RawBytes(t, path)
	size := img.Size()
	tests := []struct {
		name    string
		off     int64
		n       int
		wantN   int
		wantEOF bool
	}{
		{"inside", 100, 5000, 5000, false},
		{"up to the end", size - 10, 10, 10, false},
		{"across the end", size - 10, 30, 10, true},
		{"at the end", size, 10, 0, true},
		{"past the end", size + 4096, 10, 0, true},
		{"empty at the end", size, 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			buf := make([]byte, tc.n)
			n, err := img.ReadAt(buf, tc.off)
			if n != tc.wantN || (err == io.EOF) != tc.wantEOF || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt = %d, %v; want %d, EOF %v", n, err, tc.wantN, tc.wantEOF)
			}
			if n > 0 && !bytes.Equal(buf[:n], want[tc.off:tc.off+int64(n)]) {
				t.Fatal("wrong bytes")
			}
		})
	}
	if _, err := img.ReadAt(make([]byte, 1), -1); err == nil {
		t.Fatal("negative offset: no error")
	}
}

// TestConcurrentReadsWithTinyCaches has many goroutines read at random
// while the caches are too small to hold anything for long.
func TestConcurrentReadsWithTinyCaches(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	for _, l := range []layout{{512, "1.1", "zstd"}, {4096, "1.1", ""}, {65536, "1.1", "zlib"}} {
		t.Run(l.name(), func(t *testing.T) {
			path := buildImage(t, t.TempDir(), l)
			img, err := qcow2.Open(path, qcow2.Options{L2CacheSize: 2 * l.clusterSize, ClusterCacheSize: 3 * l.clusterSize})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			want := qemutest.RawBytes(t, path)
			var wg sync.WaitGroup
			for g := range 16 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 1))
					buf := make([]byte, 256<<10)
					for range 300 {
						off := r.Int64N(img.Size())
						n := min(int64(1+r.IntN(len(buf))), img.Size()-off)
						if _, err := img.ReadAt(buf[:n], off); err != nil && err != io.EOF {
							t.Errorf("ReadAt(%d, %d): %v", off, n, err)
							return
						}
						if at := qemutest.FirstDiff(buf[:n], want[off:off+n]); at >= 0 {
							t.Errorf("read at %d: byte %#x differs", off, off+int64(at))
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}
