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
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The name ends at a space or the comment's end: "root" is not
	// "rootless".
	marker := "<!-- README test: " + name
	after, found := string(b), false
	for !found {
		var ok bool
		if _, after, ok = strings.Cut(after, marker); !ok {
			t.Fatalf("README.md has no block marked %q", name)
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
	}
	for _, flow := range flows {
		name := flow.name
		t.Run(name, func(t *testing.T) {
			if name == "root" || name == "whole disk" {
				requireRoot(t)
				// These flows mount on /mnt/q and /mnt/guest, as the
				// README writes them: one clone at a time.
				holdMachineLock(t, "mnt-q")
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
