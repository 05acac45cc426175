package integration

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestMakeGo: make go (run by every target that builds) does nothing
// where the go on PATH can fetch the Go that go.mod names, and where it
// is too old (Debian 12's 1.19) or missing, fetches that Go from the
// module proxy, refusing an archive whose SHA-256 is not the one pinned,
// or stops with one line that says what to install.
func TestMakeGo(t *testing.T) {
	qemutest.Require(t, "make")
	dir := t.TempDir()
	old := filepath.Join(dir, "go1.19")
	if err := os.WriteFile(old, []byte("#!/bin/sh\necho 'go version go1.19.8 linux/amd64'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Not the toolchain: whatever it holds, its sum is not the pinned one.
	junk := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("PK not Go")) }))
	defer junk.Close()
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	tests := []struct {
		name, goCmd, proxy string
		fails              bool
		says               string
	}{
		{"a go that fetches its own", "go", gone.URL, false, ""},
		{"go 1.19, the proxy unreachable", old, gone.URL, true, "found go1.19.8, and " + gone.URL + "/golang.org/toolchain/@v/v0.0.1-go"},
		{"go 1.19, an archive that is not the one pinned", old, junk.URL, true, "not the one pinned here"},
		{"no go at all", filepath.Join(dir, "missing"), gone.URL, true, "found no go"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			goDir := filepath.Join(t.TempDir(), "go")
			cmd := exec.Command("make", "--no-print-directory", "-C", "..", "go", "GO="+tc.goCmd, "GO_DIR="+goDir, "GO_PROXY="+tc.proxy)
			out, err := cmd.CombinedOutput()
			if (err != nil) != tc.fails || !strings.Contains(string(out), tc.says) {
				t.Fatalf("make go: %v, want failure %v saying %q:\n%s", err, tc.fails, tc.says, out)
			}
			if tc.fails && !strings.Contains(string(out), "install Go from https://go.dev/dl/") {
				t.Errorf("make go failed without saying what to install:\n%s", out)
			}
			if _, err := os.Stat(goDir); err == nil {
				t.Errorf("make go left %s", goDir)
			}
		})
	}
}

// TestMakeInstallAndUninstall: make uninstall takes away every file make
// install put in place.
func TestMakeInstallAndUninstall(t *testing.T) {
	qemutest.Require(t, "make")
	root := t.TempDir()
	files := func() []string {
		var out []string
		filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				out = append(out, strings.TrimPrefix(path, root))
			}
			return nil
		})
		return out
	}
	for _, target := range []string{"install", "uninstall"} {
		if out, err := exec.Command("make", "--no-print-directory", "-C", "..", target, "DESTDIR="+root).CombinedOutput(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out)
		}
		if got := files(); target == "install" && len(got) != 5 || target == "uninstall" && len(got) != 0 {
			t.Fatalf("after make %s: %q", target, got)
		}
	}
}
