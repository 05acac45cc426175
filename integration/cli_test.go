package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// installForMount puts the binary where mount(8)'s helper finds it, under
// a name of this run's own, and returns the name: `mount -t fuse.NAME`
// runs NAME. mount(8) runs mount.fuse3 without a PATH, so its /bin/sh
// looks in the default one, /usr/local/sbin first. A fixed name there
// would be shared with another clone's run, which may be executing it.
func installForMount(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	qemutest.Require(t, "mount", "umount", "mount.fuse3")
	name := fmt.Sprintf("qcowmount-test-%d", os.Getpid())
	dst := filepath.Join("/usr/local/sbin", name)
	b, err := os.ReadFile(plainBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dst) })
	return name
}

// TestMountHelperAndFstab: mount -t fuse.NAME and an fstab line, with
// mount(8)'s own options (ignored) and ours as -o keys.
func TestMountHelperAndFstab(t *testing.T) {
	requireFUSE(t)
	helper := installForMount(t)
	image, _ := filepath.Abs("../testdata/demo.qcow2")
	want := qemutest.Raw(t, image)
	t.Run("mount -t fuse.NAME", func(t *testing.T) {
		mnt := t.TempDir()
		sh(t, "mount", "-t", "fuse."+helper, image, mnt, "-o", "ro,allow_other")
		t.Cleanup(func() { unmount(t, mnt) })
		if got := strings.Join(mountedFiles(t, mnt), " "); got != "disk.raw p1.raw p2.raw" {
			t.Fatalf("files %q", got)
		}
		cmpFiles(t, filepath.Join(mnt, "disk.raw"), want)
	})
	t.Run("fstab", func(t *testing.T) {
		mnt := t.TempDir()
		fstab := filepath.Join(t.TempDir(), "fstab")
		line := image + " " + mnt + " fuse." + helper + " ro,nofail,_netdev,noauto,user,x-systemd.automount,allow_other,no_partitions 0 0\n"
		if err := os.WriteFile(fstab, []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
		sh(t, "mount", "-T", fstab, mnt)
		t.Cleanup(func() { unmount(t, mnt) })
		if got := strings.Join(mountedFiles(t, mnt), " "); got != "disk.raw" {
			t.Fatalf("files %q (no_partitions given)", got)
		}
		cmpFiles(t, filepath.Join(mnt, "disk.raw"), want)
		sh(t, "umount", mnt)
		if isMounted(mnt) {
			t.Fatal("umount left the mount")
		}
	})
}

// TestOptionsAfterArguments: flags and -o anywhere, as other mount tools
// take them; -- ends the flags.
func TestOptionsAfterArguments(t *testing.T) {
	requireFUSE(t)
	image, _ := filepath.Abs("../testdata/demo.qcow2")
	mnt := t.TempDir()
	if out, code := run(t, image, mnt, "-o", "no_partitions", "--debug"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	if got := strings.Join(mountedFiles(t, mnt), " "); got != "disk.raw" {
		t.Fatalf("files %q: -o no_partitions after the arguments was not taken", got)
	}
	if out, code := run(t, "umount", mnt); code != 0 || isMounted(mnt) {
		t.Fatalf("qcowmount umount: exit %d: %s", code, out)
	}
}

// TestPidfileAndWorkingDirectory: --pidfile names the serving process,
// which works from /, and goes away with it.
func TestPidfileAndWorkingDirectory(t *testing.T) {
	requireFUSE(t)
	image, _ := filepath.Abs("../testdata/demo.qcow2")
	mnt := t.TempDir()
	pidfile := filepath.Join(t.TempDir(), "qcowmount.pid")
	if out, code := run(t, image, mnt, "--pidfile", pidfile); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid := serverPID(mnt)
	if strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Fatalf("pidfile says %q, the server is %d", b, pid)
	}
	if cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd"); err != nil || cwd != "/" {
		t.Fatalf("the server works in %q (%v), want /", cwd, err)
	}
	unmount(t, mnt)
	if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
		t.Fatalf("pidfile left after unmount: %v", err)
	}
}

// TestUmountWhenBusy: with a partition file attached to a loop device
// and mounted, umount says what holds the mount and how to release it
// (exit 5); --wait unmounts once it is released.
func TestUmountWhenBusy(t *testing.T) {
	requireFUSE(t)
	requireRoot(t)
	image, _ := filepath.Abs("../testdata/demo.qcow2")
	mnt := mountImage(t, image)
	loop := strings.TrimSpace(sh(t, "losetup", "-r", "--show", "-f", filepath.Join(mnt, "p1.raw")))
	guest := t.TempDir()
	sh(t, "mount", "-t", "ext4", "-o", "ro,noload", loop, guest)
	released := false
	release := func() {
		if !released {
			sh(t, "umount", guest)
			sh(t, "losetup", "-d", loop)
			released = true
		}
	}
	t.Cleanup(release)
	out, code := run(t, "umount", mnt)
	if code != 5 {
		t.Fatalf("exit %d, want 5: %s", code, out)
	}
	for _, want := range []string{"is busy; release it first:\n", "\n    umount " + guest + " (ext4 from " + loop + ")\n",
		"\n    losetup -d " + loop + " (on " + filepath.Join(mnt, "p1.raw") + ")\n", "--wait"} {
		if !strings.Contains(out, want) {
			t.Errorf("umount output does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, `\n`) {
		t.Errorf("umount output holds an escaped newline:\n%s", out)
	}
	wait := exec.Command(bin, "umount", "--wait", mnt)
	var waitOut bytes.Buffer
	wait.Stdout, wait.Stderr = &waitOut, &waitOut
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if !isMounted(mnt) {
		t.Fatal("umount --wait unmounted a busy mount")
	}
	release()
	if err := wait.Wait(); err != nil {
		t.Fatalf("umount --wait: %v: %s", err, waitOut.String())
	}
	if isMounted(mnt) || !strings.Contains(waitOut.String(), "waiting") {
		t.Fatalf("after umount --wait: mounted %v, output %s", isMounted(mnt), waitOut.String())
	}
}

// TestLogFileWithoutSyslog: where there is no /dev/log, the background
// process says where it logs, and does.
func TestLogFileWithoutSyslog(t *testing.T) {
	requireFUSE(t)
	if _, err := os.Stat("/dev/log"); err == nil {
		t.Skip("this machine has syslog (/dev/log)")
	}
	image, _ := filepath.Abs("../testdata/demo.qcow2")
	mnt := t.TempDir()
	out, code := run(t, image, mnt)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	_, path, ok := strings.Cut(strings.TrimSpace(out), "no syslog here: logging to ")
	if !ok {
		t.Fatalf("the mount does not say where it logs: %q", out)
	}
	path = strings.Trim(path, "'")
	t.Cleanup(func() { os.Remove(path) })
	waitFor(t, "the log line", 5*time.Second, func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(b, []byte("mounted")) && bytes.Contains(b, []byte(mnt))
	})
}

// TestSubcommandMistakes: the subcommands' bad inputs each get one line
// saying what is wrong, and their exit code.
func TestSubcommandMistakes(t *testing.T) {
	image, _ := filepath.Abs("../testdata/demo.qcow2")
	notMounted := t.TempDir()
	badHeaders := filepath.Join(t.TempDir(), "headers")
	if err := os.WriteFile(badHeaders, []byte("# a comment\nAuthorization: Bearer x\nno colon here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		msg  string
		code int
	}{
		{[]string{"info"}, "info takes one IMAGE", 2},
		{[]string{"info", "--output", "yaml", image}, `--output "yaml": json or human`, 2},
		{[]string{"umount"}, "umount takes one MOUNTPOINT", 2},
		{[]string{"umount", notMounted}, "is not a mount point", 1},
		{[]string{"completion", "tcsh"}, `completion for "tcsh": bash, zsh or fish`, 2},
		{[]string{"-f", "--pidfile", "/nonexistent/dir/qcowmount.pid", image, t.TempDir()}, "--pidfile", 1},
		{[]string{"info", "--max-kdf-time", "0s", image}, "--max-kdf-time 0s: must be positive", 2},
		{[]string{"info", "--key-file", "demo.qcow2=", image}, `--key-file "demo.qcow2=": no file named`, 2},
		{[]string{"info", "--key-file", "/nonexistent/key", "../testdata/images/v3-luks.qcow2"}, "--key-file /nonexistent/key: open /nonexistent/key: no such file", 2},
		{[]string{"info", "--remote-cache-size", "1K", "http://127.0.0.1:9/x.qcow2"}, "--remote-cache-size: 1024 bytes is outside", 2},
		{[]string{"info", "--remote-timeout", "0s", "http://127.0.0.1:9/x.qcow2"}, "--remote-timeout 0s: must be positive", 2},
		{[]string{"info", "--header-file", badHeaders, "http://127.0.0.1:9/x.qcow2"}, "line 3 is not \"Name: value\"", 2},
		{[]string{"info", "ftp://127.0.0.1/x.qcow2"}, "no such file", 3},
		{[]string{"export", image}, "export takes IMAGE and OUT", 2},
		{[]string{"export", "--partition", "9", image, filepath.Join(notMounted, "x")}, "--partition 9: no such partition (the guest disk has: 1, 2)", 2},
		{[]string{"export", "--volume", "vg/root", image, filepath.Join(notMounted, "x")}, "--volume vg/root: no such volume (the guest disk has: none)", 2},
		{[]string{"export", "--partition", "1", "--volume", "vg/root", image, filepath.Join(notMounted, "x")}, "--partition and --volume: give one of them", 2},
		{[]string{"export", image, image}, "a file the image reads: refusing to overwrite it", 2},
		{[]string{"export", image, "/"}, "/ is a directory: export writes to files, block devices and -", 2},
		{[]string{"export", image, "/dev/full"}, "export to /dev/full: write /dev/full: no space left on device (0 bytes of 8388608 written to /dev/full)", 1},
		{[]string{"hash", "--algo", "sha256,sha3", image}, `"sha3" is not one of md5, sha1, sha256, sha512, blake3`, 2},
		{[]string{"check"}, "check takes one IMAGE", 1},
		{[]string{"check", "--output", "xml", image}, `--output "xml": json or human`, 1},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, code := run(t, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.msg) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
				t.Fatalf("exit %d (want %d), output %q (want one line saying %q)", code, tc.code, out, tc.msg)
			}
		})
	}
}

// TestFallbackLogLeftOnlyWhenWorthIt: without syslog, the background
// process logs to a file it names at mount time; a clean unmount removes
// that file unless the log holds a warning (here: --force-share's).
func TestFallbackLogLeftOnlyWhenWorthIt(t *testing.T) {
	requireFUSE(t)
	if _, err := os.Stat("/dev/log"); err == nil {
		t.Skip("this machine has syslog: the background process logs there, not to a file")
	}
	image, _ := filepath.Abs("../testdata/demo.qcow2")
	for _, tc := range []struct {
		args []string
		kept bool
	}{{nil, false}, {[]string{"--force-share"}, true}} {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			mnt := t.TempDir()
			out, code := run(t, append(tc.args, image, mnt)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, out)
			}
			t.Cleanup(func() { unmount(t, mnt) })
			_, log, ok := strings.Cut(strings.TrimSpace(out), "no syslog here: logging to ")
			log, _, _ = strings.Cut(log, "\n")
			if !ok {
				t.Fatalf("the mount did not say where it logs: %s", out)
			}
			t.Cleanup(func() { os.Remove(log) })
			if _, err := os.Stat(log); err != nil {
				t.Fatalf("the log %s: %v", log, err)
			}
			unmount(t, mnt)
			if _, err := os.Stat(log); (err == nil) != tc.kept {
				t.Fatalf("after a clean unmount the log is there: %v, want %v", err == nil, tc.kept)
			}
		})
	}
}

// TestUmountNamesWhatHoldsIt: a fuse2fs mount made from a partition
// file by a relative path, as the kernel records it, and a process that
// holds a file open, are named with how to release them.
func TestUmountNamesWhatHoldsIt(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "fuse2fs")
	image, _ := filepath.Abs("../testdata/demo.qcow2")
	dir := t.TempDir()
	mnt, guest := filepath.Join(dir, "m"), filepath.Join(dir, "g")
	for _, d := range []string{mnt, guest} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, code := run(t, image, mnt); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	qemutest.RunIn(t, dir, "fuse2fs", "-o", "ro,fakeroot", "m/p1.raw", "g")
	t.Cleanup(func() { exec.Command("fusermount3", "-u", guest).Run() })
	held, err := os.Open(filepath.Join(mnt, "p2.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	out, code := run(t, "umount", mnt)
	for _, want := range []string{
		"\n    fusermount -u " + guest + " (fuse.ext4 from " + filepath.Join(mnt, "p1.raw") + ")\n",
		fmt.Sprintf("\n    process %d (", os.Getpid()),
		") holds " + filepath.Join(mnt, "p2.raw") + " open\n",
	} {
		if code != 5 || !strings.Contains(out, want) {
			t.Errorf("exit %d, does not say %q:\n%s", code, want, out)
		}
	}
}
