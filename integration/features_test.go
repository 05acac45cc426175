package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestMountedFeaturesMatchQEMU mounts images with backing chains,
// subclusters, external data files, snapshots and the qcow v1 format, and
// compares disk.raw with QEMU's view of the same.
func TestMountedFeaturesMatchQEMU(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io", "cmp")
	tests := []struct {
		name  string
		build func(t *testing.T, dir string) (image string, args []string, want string)
	}{
		{"three-level chain", func(t *testing.T, dir string) (string, []string, string) {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			return top, nil, qemutest.Raw(t, top)
		}},
		{"no-backing", func(t *testing.T, dir string) (string, []string, string) {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			alone := fmt.Sprintf(`json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":%q}}`, top)
			return top, []string{"--no-backing"}, qemutest.Raw(t, alone)
		}},
		{"backing-dir", func(t *testing.T, dir string) (string, []string, string) {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			return top, []string{"--backing-dir", dir}, qemutest.Raw(t, top)
		}},
		{"external data file", func(t *testing.T, dir string) (string, []string, string) {
			img := filepath.Join(dir, "meta.qcow2")
			qemutest.Create(t, img, "qcow2", "3M", "data_file=data.bin")
			qemutest.IO(t, img, "write -P 0x51 0 100k", "write -z 40k 8k", "write -P 0x53 3000k 72k")
			return img, nil, qemutest.Raw(t, img)
		}},
		{"snapshot", func(t *testing.T, dir string) (string, []string, string) {
			img := filepath.Join(dir, "snap.qcow2")
			qemutest.Create(t, img, "qcow2", "2M")
			qemutest.IO(t, img, "write -P 0x71 0 300k")
			qemutest.Run(t, "qemu-img", "snapshot", "-c", "before", img)
			qemutest.IO(t, img, "write -P 0x72 100k 300k")
			return img, []string{"--snapshot", "before"}, qemutest.Raw(t, img, "-l", "snapshot.name=before")
		}},
		{"qcow v1", func(t *testing.T, dir string) (string, []string, string) {
			img := filepath.Join(dir, "old.qcow")
			qemutest.Create(t, img, "qcow", "2M")
			qemutest.IOFormat(t, img, "qcow", "write -c -P 0x81 0 4k", "write -P 0x82 100k 50k")
			return img, nil, qemutest.Raw(t, img)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			image, args, want := tc.build(t, t.TempDir())
			mnt := mountImage(t, image, args...)
			cmpFiles(t, filepath.Join(mnt, "disk.raw"), want)
		})
	}
}

func TestMountRefusesUnsafeChains(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	top, _, _ := qemutest.ThreeLevelChain(t, dir)
	os.Remove(filepath.Join(dir, "base.raw"))
	mnt := t.TempDir()
	out, code := run(t, top, mnt)
	if code == 0 || !strings.Contains(out, "middle.qcow2") || !strings.Contains(out, `backing file "base.raw"`) {
		t.Fatalf("exit %d, output %q: want a failure naming both files", code, out)
	}
	if isMounted(mnt) {
		t.Fatal("mounted anyway")
	}
}

// TestHostFilesNotExposed: an image that names a host file as its backing
// file does not mount (one line naming the file, the image and the flag
// that would allow it); info still describes it and says why the backing
// file was not opened. The flag mounts the file; pseudo file systems never.
func TestHostFilesNotExposed(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img")
	tests := []struct {
		name    string
		backing string
		want    string // in the refusal
	}{
		{"absolute", "/etc/passwd", "/etc/passwd lies outside"},
		{"climbing out", "../../../../../../../../../../etc/passwd", "/etc/passwd lies outside"},
		{"proc", "/proc/self/environ", "lies outside"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			top := qemutest.ImageWithBacking(t, t.TempDir(), tc.backing, "raw")
			mnt := t.TempDir()
			out, code := run(t, top, mnt)
			for _, w := range []string{tc.want, top, "--allow-any-backing-path"} {
				if code == 0 || !strings.Contains(out, w) {
					t.Errorf("mount: exit %d, output %q does not say %q", code, out, w)
				}
			}
			if strings.Count(strings.TrimSpace(out), "\n") > 0 {
				t.Errorf("mount: more than one line: %q", out)
			}
			if isMounted(mnt) {
				unmount(t, mnt)
				t.Fatal("mounted anyway")
			}
			out, code = run(t, "info", top)
			if code != 0 || !strings.Contains(out, "backing file: "+tc.backing) || !strings.Contains(out, "backing file not opened:") {
				t.Errorf("info: exit %d: %s", code, out)
			}
		})
	}
	t.Run("allowed by the flag", func(t *testing.T) {
		top := qemutest.ImageWithBacking(t, t.TempDir(), "/etc/passwd", "raw")
		mnt := mountImage(t, top, "--allow-any-backing-path")
		want, err := os.ReadFile("/etc/passwd")
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(mnt, "disk.raw"))
		if err != nil || !bytes.HasPrefix(got, want[:len(want)&^511]) {
			t.Fatalf("disk.raw does not start with /etc/passwd: %v", err)
		}
	})
	t.Run("pseudo file system, even with the flag", func(t *testing.T) {
		top := qemutest.ImageWithBacking(t, t.TempDir(), "/proc/self/environ", "raw")
		out, code := run(t, "--allow-any-backing-path", top, t.TempDir())
		if code == 0 || !strings.Contains(out, "proc pseudo file system") {
			t.Fatalf("exit %d: %s", code, out)
		}
	})
}
