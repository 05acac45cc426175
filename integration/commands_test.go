package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestHashLinesCheckInTheMount: hash's lines check with sha256sum -c in
// the mount's directory.
func TestHashLinesCheckInTheMount(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "sha256sum")
	dir := t.TempDir()
	raw, _ := qemutest.GuestDisk(t, dir)
	image := filepath.Join(dir, "guest.qcow2")
	sh(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, image)
	lines, code := run(t, "hash", image)
	if code != 0 || strings.Count(lines, "\n") != 3 {
		t.Fatalf("hash: exit %d:\n%s", code, lines)
	}
	mnt := mountImage(t, image)
	check := exec.Command("sha256sum", "--check", "--strict")
	check.Dir, check.Stdin = mnt, strings.NewReader(lines)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("%v\n%s", err, out)
	}
}

// TestExportInterrupted: Ctrl-C during an export removes the file it
// made, or keeps it with --keep-partial; an OUT that existed keeps its
// identity and mode, and is left empty (its old bytes were gone from the
// start) or with what was written.
func TestExportInterrupted(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	// 64 GiB of encrypted clusters (over holes of the file, which decrypt
	// to noise: data): minutes to read, so that the signal always comes
	// first.
	image := filepath.Join(t.TempDir(), "big.qcow2")
	qemutest.CreateEncrypted(t, image, "qcow2", "64G", "pass", "encrypt.format=luks", "encrypt.iter-time=10", "preallocation=metadata")
	key := qemutest.KeyFile(t, "pass")
	for _, existed := range []bool{false, true} {
		for _, keep := range []bool{false, true} {
			t.Run(fmt.Sprintf("existed=%v keep-partial=%v", existed, keep), func(t *testing.T) {
				dir := t.TempDir()
				out := filepath.Join(dir, "out.raw")
				var before os.FileInfo
				if existed {
					if err := os.WriteFile(out, []byte("old contents"), 0o640); err != nil {
						t.Fatal(err)
					}
					before, _ = os.Stat(out)
				}
				args := []string{"export", "--progress", "--key-file", key, image, out}
				if keep {
					args = append(args, "--keep-partial")
				}
				cmd := exec.Command(bin, args...)
				var stderr lockedBuffer
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				// The bar counts what was written to OUT: wait until it
				// says something was.
				written := regexp.MustCompile(`\(\d+(\.\d+)? [KMG]iB/64 GiB`)
				waitFor(t, "the export to write something", 60*time.Second, func() bool { return written.MatchString(stderr.String()) })
				cmd.Process.Signal(os.Interrupt)
				err := cmd.Wait()
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
					t.Fatalf("exit %v, want 130: %s", err, stderr.String())
				}
				left, _ := filepath.Glob(filepath.Join(dir, "*"))
				hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
				left = append(left, hidden...)
				said := stderr.String()
				switch {
				case !existed && keep && (len(left) != 1 || !strings.Contains(said, "kept in "+out)):
					t.Errorf("left %q, said %q; want %s kept", left, said, out)
				case !existed && !keep && (len(left) != 0 || !strings.Contains(said, "interrupted (removed the partial output")):
					t.Errorf("left %q, said %q; want nothing", left, said)
				case existed:
					st, err := os.Stat(out)
					if err != nil || !os.SameFile(st, before) || st.Mode() != before.Mode() {
						t.Fatalf("OUT is now %v (%v), was %v: not the same file with the same mode", st, err, before)
					}
					if empty := st.Size() == 0; empty == keep || len(left) != 1 {
						t.Errorf("OUT has %d bytes, left %q, said %q (keep-partial %v)", st.Size(), left, said, keep)
					}
				}
			})
		}
	}
}

// TestExportRefusesATerminal: export - with standard output on a terminal
// says so rather than filling the screen with a disk.
func TestExportRefusesATerminal(t *testing.T) {
	master, slave := openPTY(t)
	defer master.Close()
	defer slave.Close()
	image, _ := filepath.Abs("../testdata/demo.qcow2")
	cmd := exec.Command(bin, "export", image, "-")
	var stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = slave, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "standard output is a terminal") {
		t.Fatalf("exit %v: %s", err, stderr.String())
	}
}

// TestLongCommandsStopAtASignal: hash and export of a disk that is one
// long hole (a piece of its own, hours of zeros to hash or write) end at
// SIGINT or SIGTERM, exit 130. They stop in milliseconds; the test allows
// 10 s for a loaded machine, and fails rather than waits hours.
func TestLongCommandsStopAtASignal(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	image := filepath.Join(t.TempDir(), "empty.qcow2")
	qemutest.Create(t, image, "qcow2", "16T")
	for _, args := range [][]string{{"hash", "--progress", "--no-partitions", image}, {"export", "--progress", image, "-"}} {
		for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
			t.Run(fmt.Sprintf("%s %v", args[0], sig), func(t *testing.T) {
				cmd := exec.Command(bin, args...)
				var stderr lockedBuffer
				cmd.Stderr = &stderr
				devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer devNull.Close()
				cmd.Stdout = devNull
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				// The progress bar is drawn once the signals are caught,
				// just before the hole: a signal before that would end the
				// command the default way, whatever the machine's load.
				for start := time.Now(); stderr.String() == ""; time.Sleep(10 * time.Millisecond) {
					if time.Since(start) > 30*time.Second {
						cmd.Process.Kill()
						t.Fatal("no progress bar 30 s after the start")
					}
				}
				time.Sleep(300 * time.Millisecond) // into the hole
				cmd.Process.Signal(sig)
				signalled := time.Now()
				stopped := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
				err = cmd.Wait()
				if !stopped.Stop() {
					t.Fatalf("still running 10 s after the signal")
				}
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 || !strings.Contains(stderr.String(), "interrupted") {
					t.Fatalf("exit %v, want 130 saying interrupted: %s", err, stderr.String())
				}
				t.Logf("stopped %v after the signal", time.Since(signalled))
			})
		}
	}
}
