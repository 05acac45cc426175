package qcow2_test

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestCacheBudgetFitsTheImage: the table cache counts what the chain's
// tables can take, not its whole budget, and the cluster cache holds 8 of
// the chain's largest clusters within its bounds, so that a small disk's
// mount sets a small memory limit; budgets the caller chose stand.
func TestCacheBudgetFitsTheImage(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	dir := t.TempDir()
	create := func(name, size string, opts ...string) string {
		p := filepath.Join(dir, name)
		qemutest.Run(t, "qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, opts...), p, size)...)
		return p
	}
	big := create("1t.qcow2", "1T")
	twoG := create("2g.qcow2", "2G")
	mib := create("1m-clusters.qcow2", "2G", "-o", "cluster_size=1M")
	twoMiB := create("2m-clusters.qcow2", "2G", "-o", "cluster_size=2M")
	over2M := create("over-2m.qcow2", "2G", "-o", "cluster_size=512", "-b", twoMiB, "-F", "qcow2")
	tiny := "../testdata/images/tiny/"
	const lo, hi = qcow2.MinClusterCacheSize, qcow2.MaxClusterCacheSize
	for _, tc := range []struct {
		name                 string
		path                 string
		opts                 qcow2.Options
		tablesMin, tablesMax int64
		clusters             int64
	}{
		// 129 guest clusters of 512 bytes: 3 L2 slices, 1 L1 slice.
		{"64 KiB disk", tiny + "v3-zlib.qcow2", qcow2.Options{}, 4 << 10, 20 << 10, lo},
		// The top's tables and its base's.
		{"chain of two", tiny + "v3-top.qcow2", qcow2.Options{}, 8 << 10, 40 << 10, lo},
		// 32768 L2 entries: 256 KiB of tables.
		{"2 GiB disk", twoG, qcow2.Options{}, 256 << 10, 300 << 10, lo},
		{"1 MiB clusters", mib, qcow2.Options{}, 1 << 10, 40 << 10, 8 << 20},
		{"2 MiB clusters", twoMiB, qcow2.Options{}, 1 << 10, 40 << 10, hi},
		{"512-byte clusters over 2 MiB ones", over2M, qcow2.Options{}, 32 << 20, 32 << 20, hi},
		{"1 TiB disk", big, qcow2.Options{}, qcow2.DefaultL2CacheSize, qcow2.DefaultL2CacheSize, lo},
		{"1 TiB disk, budgets chosen", big, qcow2.Options{L2CacheSize: 1 << 20, ClusterCacheSize: 100 << 20}, 1 << 20, 1 << 20, 100 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := qcow2.Open(tc.path, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if got := img.CacheBudget() - tc.clusters; got < tc.tablesMin || got > tc.tablesMax {
				t.Errorf("CacheBudget %d: %d bytes for tables, want %d to %d, besides %d for clusters",
					img.CacheBudget(), got, tc.tablesMin, tc.tablesMax, tc.clusters)
			}
		})
	}
}

// slowFile counts the reads of a file and makes each take a while, so
// that reads started together overlap.
type slowFile struct {
	f     *os.File
	reads atomic.Int32
}

func (s *slowFile) ReadAt(p []byte, off int64) (int, error) {
	s.reads.Add(1)
	time.Sleep(20 * time.Millisecond)
	return s.f.ReadAt(p, off)
}

// TestConcurrentReadsDecompressOnce: reads of one compressed cluster that
// arrive together (as the kernel's readahead sends them) read and
// decompress it once, and each gets its part.
func TestConcurrentReadsDecompressOnce(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	path := filepath.Join(t.TempDir(), "compressed.qcow2")
	qemutest.Create(t, path, "qcow2", "1M")
	qemutest.IO(t, path, "write -c -P 0x21 0 64k", "write -c -P 0x22 64k 64k")
	f, size := qemutest.Open(t, path)
	file := &slowFile{f: f}
	img, err := qcow2.New(file, size, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	// The second cluster brings the L2 table into the cache.
	if _, err := img.ReadAt(make([]byte, 1), 64<<10); err != nil {
		t.Fatal(err)
	}
	file.reads.Store(0)
	const readers = 8
	var wg sync.WaitGroup
	parts := make([][]byte, readers)
	errs := make([]error, readers)
	for i := range readers {
		parts[i] = make([]byte, 4<<10)
		wg.Go(func() { _, errs[i] = img.ReadAt(parts[i], int64(i)*8<<10) })
	}
	wg.Wait()
	for i := range readers {
		if errs[i] != nil {
			t.Fatalf("reader %d: %v", i, errs[i])
		}
		if !bytes.Equal(parts[i], bytes.Repeat([]byte{0x21}, 4<<10)) {
			t.Errorf("reader %d got other bytes than 0x21", i)
		}
	}
	if n := file.reads.Load(); n != 1 {
		t.Errorf("%d readers of one compressed cluster read the file %d times, want once", readers, n)
	}
}
