//go:build linux

package qcow2_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/qcowmount/qcowmount/fusefs"
	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// failingFile serves a file whose reads fail with EIO wherever they touch
// [badStart, badEnd): a disk going bad under the image.
type failingFile struct {
	f                *os.File
	size             int64
	badStart, badEnd int64
}

func (d *failingFile) Size() int64 { return d.size }

func (d *failingFile) ReadAt(p []byte, off int64) (int, error) {
	if off < d.badEnd && off+int64(len(p)) > d.badStart {
		return 0, syscall.EIO
	}
	return d.f.ReadAt(p, off)
}

// serveFailing mounts path through FUSE with reads of [start, end) failing,
// and returns the path of the failing copy.
func serveFailing(t *testing.T, path string, start, end int64) string {
	t.Helper()
	f, size := qemutest.Open(t, path)
	mnt := t.TempDir()
	server, err := fusefs.Mount(mnt, []fusefs.File{{Name: fusefs.DiskName, Disk: &failingFile{f, size, start, end}}}, fusefs.Options{Source: "failing"})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return filepath.Join(mnt, fusefs.DiskName)
}

// TestHostIOErrorsStayIOErrors: when the disk under the image fails, the
// reader reports an I/O error (EIO, with the file and offset), not a
// damaged image.
func TestHostIOErrorsStayIOErrors(t *testing.T) {
	qemutest.SkipIfEmulated(t)
	qemutest.Require(t, "qemu-img", "qemu-io")
	if os.Geteuid() != 0 {
		qemutest.Missing(t, "needs root for a FUSE mount")
	}
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.qcow2")
	qemutest.Create(t, plain, "qcow2", "4M")
	qemutest.IO(t, plain, "write -P 0x11 0 1M")
	compressed := filepath.Join(dir, "compressed.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", plain, compressed)
	snap := filepath.Join(dir, "snap.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-O", "qcow2", plain, snap)
	qemutest.Run(t, "qemu-img", "snapshot", "-c", "s1", snap)

	// Where things lie in these images: read from their headers.
	u64At := func(path string, off int64) uint64 {
		b := make([]byte, 8)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		return binary.BigEndian.Uint64(b)
	}
	const offsetMask = 0x00fffffffffffe00
	l2 := func(path string) int64 { return int64(u64At(path, int64(u64At(path, 40))&offsetMask) & offsetMask) }
	data := func(path string) int64 { return int64(u64At(path, l2(path)) & offsetMask) }
	// A compressed descriptor with 64 KiB clusters: offset in the low 54 bits.
	compressedData := func(path string) int64 { return int64(u64At(path, l2(path))&(1<<54-1)) &^ 4095 }
	tests := []struct {
		name  string
		image string
		bad   func(string) int64 // host offset of the page that fails
		open  bool               // the failure shows at open rather than on a read
	}{
		{"L2 table", plain, l2, false},
		{"data cluster", plain, data, false},
		{"compressed cluster", compressed, compressedData, false},
		{"snapshot table", snap, func(p string) int64 { return int64(u64At(p, 64)) }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bad := tc.bad(tc.image)
			if bad <= 0 {
				t.Fatalf("found no %s in %s", tc.name, tc.image)
			}
			path := serveFailing(t, tc.image, bad, bad+4096)
			img, err := qcow2.Open(path, qcow2.Options{})
			if err == nil {
				defer img.Close()
				if tc.open {
					t.Fatal("opened: the failing table was not read")
				}
				_, err = img.ReadAt(make([]byte, 4096), 0)
			}
			if err == nil {
				t.Fatal("the read succeeded over a failing disk")
			}
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("error %v: errors.Is(err, EIO) is false", err)
			}
			var fe *qcow2.FormatError
			if errors.As(err, &fe) {
				t.Errorf("error %v is reported as a format error", err)
			}
		})
	}
}
