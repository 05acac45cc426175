//go:build unix

package qcow2_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// secret is a file outside every image directory that a hostile image
// tries to expose as its backing file.
func secret(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	qemutest.WriteFile(t, p, 0, bytes.Repeat([]byte("SECRET!\n"), 512))
	return p
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestPathPolicyRefuses: by default no backing or data file may lie
// outside the image's directory, however the image names it; pseudo file
// systems never.
func TestPathPolicyRefuses(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	tests := []refusal{
		{"absolute path outside", func(t *testing.T, dir string) (string, qcow2.Options) {
			return qemutest.ImageWithBacking(t, dir, secret(t), "raw"), qcow2.Options{}
		}, []string{"top.qcow2", "lies outside", "outside the allowed directories"}},
		{"/etc/passwd", func(t *testing.T, dir string) (string, qcow2.Options) {
			return qemutest.ImageWithBacking(t, dir, "/etc/passwd", "raw"), qcow2.Options{}
		}, []string{`backing file "/etc/passwd"`, "lies outside"}},
		{"dot-dot climbing out", func(t *testing.T, dir string) (string, qcow2.Options) {
			return qemutest.ImageWithBacking(t, dir, "../../../../../../../../etc/passwd", "raw"), qcow2.Options{}
		}, []string{"/etc/passwd lies outside"}},
		{"symlink inside pointing out", func(t *testing.T, dir string) (string, qcow2.Options) {
			mustSymlink(t, secret(t), filepath.Join(dir, "base.raw"))
			return qemutest.ImageWithBacking(t, dir, "base.raw", "raw"), qcow2.Options{}
		}, []string{"lies outside"}},
		{"symlinked directory pointing out", func(t *testing.T, dir string) (string, qcow2.Options) {
			mustSymlink(t, filepath.Dir(secret(t)), filepath.Join(dir, "sub"))
			return qemutest.ImageWithBacking(t, dir, "sub/secret", "raw"), qcow2.Options{}
		}, []string{"lies outside"}},
		{"second level names a file outside", func(t *testing.T, dir string) (string, qcow2.Options) {
			mustMkdir(t, filepath.Join(dir, "sub"))
			qemutest.ImageWithBacking(t, filepath.Join(dir, "sub"), secret(t), "raw") // sub/top.qcow2
			top := filepath.Join(dir, "top.qcow2")
			qemutest.Create(t, top, "qcow2", "1M", "backing_file=sub/top.qcow2", "backing_fmt=qcow2")
			return top, qcow2.Options{}
		}, []string{"sub/top.qcow2", "lies outside"}},
		{"outside both the image's dir and --backing-dir", func(t *testing.T, dir string) (string, qcow2.Options) {
			return qemutest.ImageWithBacking(t, dir, secret(t), "raw"), qcow2.Options{BackingDir: t.TempDir()}
		}, []string{"lies outside", " or "}},
		{"data file outside", func(t *testing.T, dir string) (string, qcow2.Options) {
			img := filepath.Join(dir, "meta.qcow2")
			qemutest.Create(t, img, "qcow2", "1M", "data_file="+secret(t), "data_file_raw=on")
			return img, qcow2.Options{}
		}, []string{"external data file", "lies outside"}},
		{"proc, even with any path allowed", func(t *testing.T, dir string) (string, qcow2.Options) {
			return qemutest.ImageWithBacking(t, dir, "/proc/self/environ", "raw"), qcow2.Options{AllowAnyPath: true}
		}, []string{"proc pseudo file system"}},
		{"sysfs, even with any path allowed", func(t *testing.T, dir string) (string, qcow2.Options) {
			return qemutest.ImageWithBacking(t, dir, "/sys/kernel/mm/transparent_hugepage/enabled", "raw"), qcow2.Options{AllowAnyPath: true}
		}, []string{"sysfs pseudo file system"}},
		{"proc through --backing-dir /proc", func(t *testing.T, dir string) (string, qcow2.Options) {
			return qemutest.ImageWithBacking(t, dir, "/proc/self/environ", "raw"), qcow2.Options{BackingDir: "/proc"}
		}, []string{"refused by path policy"}},
	}
	checkRefusals(t, tests, func(t *testing.T, err error) {
		if !errors.Is(err, qcow2.ErrUnsafePath) {
			t.Errorf("error %v does not wrap ErrUnsafePath", err)
		}
	})
}

// TestPathPolicyAllows: ordinary chains need no flag; files elsewhere need
// --backing-dir or AllowAnyPath. Each is compared with QEMU's reading.
func TestPathPolicyAllows(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	base := func(t *testing.T, path string) {
		t.Helper()
		mustMkdir(t, filepath.Dir(path))
		qemutest.WriteFile(t, path, 0, qemutest.Pattern(7, 1<<20))
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) (string, qcow2.Options)
	}{
		{"relative name beside the image", func(t *testing.T, dir string) (string, qcow2.Options) {
			base(t, filepath.Join(dir, "base.raw"))
			return qemutest.ImageWithBacking(t, dir, "base.raw", "raw"), qcow2.Options{}
		}},
		{"absolute name beside the image", func(t *testing.T, dir string) (string, qcow2.Options) {
			base(t, filepath.Join(dir, "base.raw"))
			return qemutest.ImageWithBacking(t, dir, filepath.Join(dir, "base.raw"), "raw"), qcow2.Options{}
		}},
		{"chain over subdirectories", func(t *testing.T, dir string) (string, qcow2.Options) {
			base(t, filepath.Join(dir, "a", "base.raw"))
			mid := filepath.Join(dir, "b", "c", "mid.qcow2")
			mustMkdir(t, filepath.Dir(mid))
			qemutest.Create(t, mid, "qcow2", "1M", "backing_file=../../a/base.raw", "backing_fmt=raw")
			qemutest.IO(t, mid, "write -P 0x21 64k 64k")
			top := filepath.Join(dir, "top.qcow2")
			qemutest.Create(t, top, "qcow2", "1M", "backing_file=b/c/mid.qcow2", "backing_fmt=qcow2")
			return top, qcow2.Options{}
		}},
		{"symlink that stays inside", func(t *testing.T, dir string) (string, qcow2.Options) {
			base(t, filepath.Join(dir, "store", "base.raw"))
			mustSymlink(t, "store/base.raw", filepath.Join(dir, "link.raw"))
			return qemutest.ImageWithBacking(t, dir, "link.raw", "raw"), qcow2.Options{}
		}},
		{"image opened through a symlinked directory", func(t *testing.T, dir string) (string, qcow2.Options) {
			real := filepath.Join(dir, "real")
			base(t, filepath.Join(real, "base.raw"))
			qemutest.ImageWithBacking(t, real, filepath.Join(real, "base.raw"), "raw")
			mustSymlink(t, real, filepath.Join(dir, "alias"))
			return filepath.Join(dir, "alias", "top.qcow2"), qcow2.Options{}
		}},
		{"shared base directory with --backing-dir", func(t *testing.T, dir string) (string, qcow2.Options) {
			shared := filepath.Join(dir, "_base")
			base(t, filepath.Join(shared, "base.raw"))
			inst := filepath.Join(dir, "instance")
			mustMkdir(t, inst)
			return qemutest.ImageWithBacking(t, inst, "../_base/base.raw", "raw"), qcow2.Options{BackingDir: shared}
		}},
		{"anywhere with AllowAnyPath", func(t *testing.T, dir string) (string, qcow2.Options) {
			elsewhere := filepath.Join(t.TempDir(), "base.raw")
			base(t, elsewhere)
			return qemutest.ImageWithBacking(t, dir, elsewhere, "raw"), qcow2.Options{AllowAnyPath: true}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path, opts := tc.setup(t, t.TempDir())
			openAndCompare(t, path, opts)
		})
	}
}

// TestPathPolicyRace flips a symlink inside the image's directory between
// a legitimate base and a file outside while the image is opened again and
// again: every open must read the legitimate base or be refused, never the
// file outside.
func TestPathPolicyRace(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	dir := t.TempDir()
	good := qemutest.Pattern(3, 4096)
	qemutest.WriteFile(t, filepath.Join(dir, "good.raw"), 0, good)
	if err := os.Truncate(filepath.Join(dir, "good.raw"), 1<<20); err != nil {
		t.Fatal(err)
	}
	top := qemutest.ImageWithBacking(t, dir, "link", "raw")
	outside := secret(t)
	link := filepath.Join(dir, "link")
	mustSymlink(t, "good.raw", link)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		targets := []string{outside, "good.raw"}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tmp := filepath.Join(dir, "link.tmp")
			os.Remove(tmp)
			if err := os.Symlink(targets[i%2], tmp); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(tmp, link); err != nil {
				t.Error(err)
				return
			}
		}
	})
	opened, refused := 0, 0
	buf := make([]byte, 4096)
	for range 500 {
		img, err := qcow2.Open(top, qcow2.Options{})
		if err != nil {
			if !errors.Is(err, qcow2.ErrUnsafePath) && !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("open failed other than by the path policy: %v", err)
			}
			refused++
			continue
		}
		_, err = img.ReadAt(buf, 0)
		img.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, good) {
			t.Fatalf("after %d opens, the image read a file outside its directory: %q", opened+refused, buf[:16])
		}
		opened++
	}
	close(stop)
	wg.Wait()
	t.Logf("%d opens read the legitimate base, %d were refused", opened, refused)
}
