package qcow2_test

import (
	"path/filepath"
	"testing"

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
