package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestQEMULocks checks that our mount and QEMU exclude each other as two
// QEMU processes would, on every image of the chain.
func TestQEMULocks(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	top, middle, _ := qemutest.ThreeLevelChain(t, dir)

	t.Run("our mount keeps writers out", func(t *testing.T) {
		mnt := mountImage(t, top)
		for _, image := range []string{top, middle} {
			out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write 0 512", image).CombinedOutput()
			if err == nil || !strings.Contains(string(out), `Failed to get "write" lock`) {
				t.Fatalf("qemu-io write on %s while mounted: %v: %s", filepath.Base(image), err, out)
			}
			qemutest.Run(t, "qemu-img", "info", image)
		}
		unmount(t, mnt)
		// The locks went with the process.
		qemutest.IO(t, top, "write -P 0x99 0 512")
	})

	t.Run("a writer keeps our mount out", func(t *testing.T) {
		writer := exec.Command("qemu-io", "-f", "qcow2", top)
		stdin, err := writer.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out := &lockedBuffer{}
		writer.Stdout = out
		if err := writer.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stdin.Close(); writer.Wait() })
		// qemu-io holds the image once it accepts a command.
		stdin.Write([]byte("length\n"))
		waitFor(t, "qemu-io to open the image", 10*time.Second, func() bool { return strings.Contains(out.String(), "MiB") })

		mnt := t.TempDir()
		msg, code := run(t, top, mnt)
		if code == 0 || !strings.Contains(msg, "in use by another process") || !strings.Contains(msg, "--force-share") {
			t.Fatalf("mount while qemu-io writes: exit %d: %s", code, msg)
		}
		if isMounted(mnt) {
			t.Fatal("mounted anyway")
		}
		log := filepath.Join(t.TempDir(), "log")
		mountImage(t, top, "--force-share", "--log-file", log)
		b, _ := os.ReadFile(log)
		if !strings.Contains(string(b), "force share") {
			t.Fatalf("no warning about --force-share in the log: %s", b)
		}
	})
}
