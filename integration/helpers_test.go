// Package integration tests the built qcowmount binary end to end: real
// FUSE mounts, loop devices and guest file systems, with QEMU as the oracle.
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qcowmount/qcowmount/integration/internal/proc"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// bin is the qcowmount binary under test, built by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qcowmount-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "qcowmount")
	// Where there is no syslog, the background processes log to files in
	// the runtime directory: this run's, gone with it, not /run's.
	os.Setenv("XDG_RUNTIME_DIR", dir)
	build := exec.Command("go", "build", "-race", "-o", bin, "../cmd/qcowmount")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building qcowmount:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireFUSE skips (fails in CI) where FUSE mounts cannot be made.
func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		qemutest.Missing(t, "/dev/fuse is missing")
	}
	if os.Geteuid() != 0 {
		qemutest.Require(t, "fusermount3")
	}
}

// requireRoot skips (fails in CI) unless running as root, which loop
// devices and guest mounts need.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		qemutest.Missing(t, "needs root for loop devices and mounts")
	}
}

// holdMachineLock takes, until the test ends, an exclusive lock that every
// test changing the same machine-wide setting (named by what) takes too,
// in this process, another package's or another clone's: such a test
// reads the setting, changes it and puts it back, and two of them at once
// would put back each other's changes.
func holdMachineLock(t *testing.T, what string) {
	t.Helper()
	dir := "/run/lock" // the same for every clone, whatever its TMPDIR
	if _, err := os.Stat(dir); err != nil {
		dir = os.TempDir()
	}
	f, err := os.OpenFile(filepath.Join(dir, "qcowmount-test-"+what+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("locking %s: %v", f.Name(), err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// run runs the binary and returns its combined output and exit code.
func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("running qcowmount: %v", err)
	}
	return string(out), 0
}

// mountImage mounts image in the background with extra arguments and
// returns the mountpoint; the mount goes away when the test ends.
func mountImage(t *testing.T, image string, args ...string) string {
	t.Helper()
	mnt := t.TempDir()
	out, code := run(t, append(args, image, mnt)...)
	if code != 0 {
		t.Fatalf("qcowmount %s: exit %d: %s", image, code, out)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	return mnt
}

// unmount removes a mount made by a test, waiting for its server to exit.
func unmount(t *testing.T, mnt string) {
	pid := serverPID(mnt)
	if !isMounted(mnt) {
		return
	}
	if out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput(); err != nil {
		t.Logf("fusermount3 -u %s: %v: %s; detaching lazily", mnt, err, out)
		exec.Command("umount", "-l", mnt).Run()
	}
	if pid > 0 {
		waitFor(t, "the server to exit", 10*time.Second, func() bool { return !alive(pid) })
	}
}

// isMounted reports whether dir is a mount point.
func isMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.ReplaceAll(f[4], `\040`, " ") == dir {
			return true
		}
	}
	return false
}

// serverPID finds the qcowmount process serving mnt.
func serverPID(mnt string) int { return proc.Find(bin, mnt) }

func alive(pid int) bool { return proc.Alive(pid) }

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sh runs a command and fails the test with its output if it fails.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	return qemutest.Run(t, name, args...)
}

// cmpFiles fails unless the two files have the same bytes.
func cmpFiles(t *testing.T, got, want string) {
	t.Helper()
	out, err := exec.Command("cmp", got, want).CombinedOutput()
	if err != nil {
		t.Fatalf("cmp %s %s: %v: %s", got, want, err, out)
	}
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
