//go:build unix

package hostfile

import (
	"os"
	"path/filepath"
	"testing"
)

// TestExtent: data and holes as the file system keeps them, and bytes past
// the end of the file as data (reading them fails and says so), never as
// a hole that would read as zeros.
func TestExtent(t *testing.T) {
	const k = 64 << 10
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// data [0, k), hole [k, 2k), data [2k, 3k), hole [3k, 4k), the end.
	for _, off := range []int64{0, 2 * k} {
		if _, err := f.WriteAt(make([]byte, k), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(4 * k); err != nil {
		t.Fatal(err)
	}
	if data, n, err := Extent(f, k, k); err != nil || data {
		t.Skipf("this file system keeps no holes (data %v for %d bytes, %v)", data, n, err)
	}
	for _, tc := range []struct {
		off, limit int64
		data       bool
		n          int64
	}{
		{0, 10 * k, true, k},
		{k / 2, k, true, k / 2},
		{k, 10 * k, false, k},
		{2 * k, 10 * k, true, k},
		{3 * k, 10 * k, false, k},     // the last hole, up to the end
		{3 * k, k / 4, false, k / 4},  // within the limit
		{4 * k, 10 * k, true, 10 * k}, // at the end: data
		{5*k + 7, k, true, k},         // past it
	} {
		data, n, err := Extent(f, tc.off, tc.limit)
		if err != nil || data != tc.data || n != tc.n {
			t.Errorf("Extent(%d, %d) = %v, %d, %v; want %v, %d", tc.off, tc.limit, data, n, err, tc.data, tc.n)
		}
	}
}
