package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

func TestMountedDiskMatchesQEMU(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io", "cmp")
	tests := []struct {
		clusterSize      int64
		compat, compress string
		size             int64
	}{
		{512, "0.10", "", 3<<20 + 512},
		{4096, "1.1", "zstd", 5<<20 + 1536},
		{65536, "1.1", "zlib", 9<<20 + 512},
		{2 << 20, "1.1", "", 20<<20 + 1024},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("cs%d-%s-%s", tc.clusterSize, tc.compat, tc.compress), func(t *testing.T) {
			image := qemutest.PatternImage(t, t.TempDir(), tc.clusterSize, tc.compat, tc.compress, tc.size)
			mnt := mountImage(t, image)
			cmpFiles(t, filepath.Join(mnt, "disk.raw"), qemutest.Raw(t, image))
		})
	}
}

func TestMountAttributes(t *testing.T) {
	requireFUSE(t)
	image, _ := filepath.Abs("../testdata/images/v3-4k.qcow2")
	mnt := mountImage(t, image)
	disk := filepath.Join(mnt, "disk.raw")
	st, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	imgSt, _ := os.Stat(image)
	if st.Mode() != 0o444 || st.Size() != 256<<10 || !st.ModTime().Equal(imgSt.ModTime()) {
		t.Errorf("disk.raw: mode %v size %d mtime %v; want 0444, 262144, %v", st.Mode(), st.Size(), st.ModTime(), imgSt.ModTime())
	}
	if n := st.Sys().(*syscall.Stat_t).Nlink; n != 1 {
		t.Errorf("disk.raw has %d links", n)
	}
	entries, _ := os.ReadDir(mnt)
	if len(entries) != 1 || entries[0].Name() != "disk.raw" {
		t.Errorf("mount holds %v", entries)
	}
	if _, err := os.OpenFile(disk, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open for writing: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644); err == nil {
		t.Error("created a file in the mount")
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	want := image + " " + mnt + " fuse.qcowmount ro,"
	if !strings.Contains(string(mounts), want) {
		t.Errorf("/proc/self/mounts lacks %q", want)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(mnt, &sfs); err != nil || sfs.Blocks*uint64(sfs.Bsize) < 256<<10 {
		t.Errorf("statfs: %v, %d blocks of %d", err, sfs.Blocks, sfs.Bsize)
	}
}

func TestBackgroundModeIsReadyOnReturn(t *testing.T) {
	requireFUSE(t)
	image, _ := filepath.Abs("../testdata/images/v3-zstd.qcow2")
	mnt := mountImage(t, image)
	// No waiting: the command returned, so the mount must serve now.
	b, err := os.ReadFile(filepath.Join(mnt, "disk.raw"))
	if err != nil || len(b) != 256<<10 {
		t.Fatalf("read right after mount: %d bytes, %v", len(b), err)
	}
	if serverPID(mnt) == 0 {
		t.Fatal("no background process serves the mount")
	}
}

func TestBadInvocationsFailCleanly(t *testing.T) {
	requireFUSE(t)
	good, _ := filepath.Abs("../testdata/images/v3-4k.qcow2")
	dir := t.TempDir()
	notImage := filepath.Join(dir, "not-an-image")
	os.WriteFile(notImage, []byte("this is not a qcow2 image, it is a text file\n"), 0o644)
	truncated := filepath.Join(dir, "truncated.qcow2")
	b, _ := os.ReadFile(good)
	os.WriteFile(truncated, b[:0x3004], 0o644)
	aFile := filepath.Join(dir, "a-file")
	os.WriteFile(aFile, nil, 0o644)
	busy := mountImage(t, good)
	vmdk := filepath.Join(dir, "disk.vmdk")
	qemutest.Create(t, vmdk, "vmdk", "1M")
	tests := []struct {
		name string
		args func(mnt string) []string
		msg  string
		code int
	}{
		{"no arguments", func(string) []string { return nil }, "need IMAGE and MOUNTPOINT", 2},
		{"one argument", func(string) []string { return []string{good} }, "need IMAGE and MOUNTPOINT", 2},
		{"missing image", func(m string) []string { return []string{filepath.Join(dir, "nope.qcow2"), m} }, "no such file", 3},
		{"not an image", func(m string) []string { return []string{notImage, m} }, "magic at offset 0x0", 3},
		{"a VMDK image", func(m string) []string { return []string{vmdk, m} }, "VMware VMDK image, not qcow2", 3},
		{"a directory as the image", func(m string) []string { return []string{dir, m} }, "is a directory, not an image file", 3},
		{"truncated in the L1 table", func(m string) []string { return []string{truncated, m} }, "l1_table_offset", 3},
		{"missing mountpoint", func(string) []string { return []string{good, filepath.Join(dir, "no dir")} }, "create it with mkdir -p '" + dir + "/no dir'", 4},
		{"mountpoint is a file", func(string) []string { return []string{good, aFile} }, "is a regular file, not a directory", 4},
		{"mountpoint already mounted", func(string) []string { return []string{good, busy} }, "already a mount point: unmount it first (qcowmount umount", 4},
		{"unknown snapshot", func(m string) []string { return []string{"--snapshot", "nope", good, m} }, `no snapshot "nope"`, 3},
		{"unknown flag", func(m string) []string { return []string{"--frobnicate", good, m} }, "frobnicate", 2},
		{"cache size zero", func(m string) []string { return []string{good, m, "--l2-cache-size", "0"} }, "--l2-cache-size: 0 bytes is outside 4 KiB..1 TiB", 2},
		{"cache size not a size", func(m string) []string { return []string{good, m, "-o", "cluster_cache_size=lots"} }, `"lots" is not a size`, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mnt := t.TempDir()
			out, code := run(t, tc.args(mnt)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; output %q", code, tc.code, out)
			}
			if !strings.Contains(out, tc.msg) {
				t.Fatalf("output %q does not say %q", out, tc.msg)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine") {
				t.Fatalf("output looks like a crash: %s", out)
			}
			if isMounted(mnt) {
				t.Fatal("left a mount behind")
			}
			if pid := serverPID(mnt); pid != 0 {
				t.Fatalf("left process %d behind", pid)
			}
		})
	}
}

// startForeground runs qcowmount -f and waits for the mount.
func startForeground(t *testing.T, image string) (*exec.Cmd, string) {
	t.Helper()
	mnt := t.TempDir()
	cmd := exec.Command(bin, "-f", image, mnt)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmount(t, mnt)
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("qcowmount -f output:\n%s", out.String())
		}
	})
	waitFor(t, "the mount", 10*time.Second, func() bool { return isMounted(mnt) })
	return cmd, mnt
}

func TestSIGTERMUnmounts(t *testing.T) {
	requireFUSE(t)
	image, _ := filepath.Abs("../testdata/images/v3-4k.qcow2")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, mnt := startForeground(t, image)
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("exit: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("still running 10s after the signal")
			}
			if isMounted(mnt) {
				t.Fatal("still mounted")
			}
		})
	}
}

func TestBusyMountSurvivesSIGTERM(t *testing.T) {
	requireFUSE(t)
	requireRoot(t)
	qemutest.Require(t, "losetup")
	image, _ := filepath.Abs("../testdata/images/v3-zlib.qcow2")
	mnt := mountImage(t, image)
	pid := serverPID(mnt)
	loop := strings.TrimSpace(sh(t, "losetup", "-r", "--show", "-f", filepath.Join(mnt, "disk.raw")))
	detached := false
	t.Cleanup(func() {
		if !detached {
			exec.Command("losetup", "-d", loop).Run()
		}
	})
	syscall.Kill(pid, syscall.SIGTERM)
	time.Sleep(1500 * time.Millisecond)
	if !alive(pid) || !isMounted(mnt) {
		t.Fatal("the server went away while a loop device held the mount")
	}
	b := make([]byte, 4096)
	f, err := os.Open(loop)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(b, 100000)
	f.Close()
	if err != nil {
		t.Fatalf("reading the loop device after SIGTERM: %v", err)
	}
	sh(t, "losetup", "-d", loop)
	detached = true
	waitFor(t, "the unmount once the loop device is gone", 10*time.Second, func() bool { return !isMounted(mnt) && !alive(pid) })
}
