package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// readmeBlock returns the indented code block that follows the marker
// `<!-- README test: NAME` in README.md.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	return docBlock(t, "../README.md", "<!-- README test: "+name)
}

// docBlock returns the indented code block that follows marker in the
// document at path.
func docBlock(t *testing.T, path, marker string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The name ends at a space or the comment's end: "root" is not
	// "rootless".
	after, found := string(b), false
	for !found {
		var ok bool
		if _, after, ok = strings.Cut(after, marker); !ok {
			t.Fatalf("%s has no block marked %q", path, marker)
		}
		found = strings.HasPrefix(after, " ")
	}
	var lines []string
	started := false
	for _, line := range strings.Split(after, "\n")[1:] {
		code, isCode := strings.CutPrefix(line, "    ")
		switch {
		case isCode:
			started = true
			lines = append(lines, code)
		case started && strings.TrimSpace(line) != "":
			return strings.Join(lines, "\n")
		}
	}
	return strings.Join(lines, "\n")
}

// TestReadmeFlows runs the README's flows as written, from the top of the
// repository, with the binary `make build` made.
func TestReadmeFlows(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "fuse2fs", "bash")
	if _, err := os.Stat("../bin/qcowmount"); err != nil {
		qemutest.Missing(t, "bin/qcowmount is missing: make test builds it first")
	}
	qemutest.Require(t, "qemu-img")
	// What each flow's output shows when it worked: the guest's files, or
	// for the commands the last line of check.
	flows := []struct{ name, shows string }{
		{"rootless", "hello.txt"}, {"root", "hello.txt"}, {"whole disk", "hello.txt"}, {"encrypted", "hello.txt"},
		{"commands", "No errors were found on the image."},
		{"edit", "edited in the overlay"}, {"edit as root", "edited as root"},
	}
	for _, flow := range flows {
		name := flow.name
		t.Run(name, func(t *testing.T) {
			if name == "root" || name == "whole disk" || name == "edit as root" {
				requireRoot(t)
				// These flows mount on /mnt/q and /mnt/guest, as the
				// README writes them: one clone at a time.
				holdMachineLock(t, "mnt-q")
			}
			if strings.HasPrefix(name, "edit") {
				qemutest.NeverWritten(t, "../testdata/demo.qcow2")
			}
			script := readmeBlock(t, name)
			cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
			cmd.Dir = ".."
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("the README's %s flow failed: %v\n%s\nscript:\n%s", name, err, out, script)
			}
			if !strings.Contains(string(out), flow.shows) {
				t.Fatalf("the %s flow did not show %q:\n%s", name, flow.shows, out)
			}
		})
	}
	t.Run("no mounts left", func(t *testing.T) {
		for _, dir := range []string{"/mnt/q", "/mnt/guest", filepath.Join(os.Getenv("HOME"), "q")} {
			if isMounted(dir) {
				t.Errorf("%s is still mounted", dir)
			}
		}
	})
}

// TestReadmeSystemdUnit: the README's unit is one systemd takes without a
// word (systemd-analyze verify), with the binary where make install puts
// it replaced by this build.
func TestReadmeSystemdUnit(t *testing.T) {
	qemutest.Require(t, "systemd-analyze")
	unit := strings.ReplaceAll(readmeBlock(t, "systemd unit"), "/usr/local/bin/qcowmount", bin)
	if !strings.Contains(unit, bin) || !strings.Contains(unit, "[Install]") {
		t.Fatalf("the README's unit names no qcowmount to run, or cannot be enabled:\n%s", unit)
	}
	path := filepath.Join(t.TempDir(), "qcowmount-vm.service")
	if err := os.WriteFile(path, []byte(unit+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// verify exits 0 for some faults (an unknown Type=), but says them.
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s\nthe unit:\n%s", err, out, unit)
	}
}
