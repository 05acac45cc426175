package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadmeLibraryProgram builds docs/library.md's program in a module of
// its own, against this checkout through a go.work file as the page tells
// a user's module to, and runs it on the demo image: its output must be
// what the page says it prints.
func TestReadmeLibraryProgram(t *testing.T) {
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string]string{
		"main.go": docBlock(t, "../docs/library.md", "<!-- docs test: library program") + "\n",
		"go.mod":  "module lsguest\n\ngo 1.26\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "lsguest")
	for _, args := range [][]string{{"work", "init", ".", repo}, {"build", "-o", bin, "."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docs/library.md's program: go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	out, err := exec.Command(bin, filepath.Join(repo, "testdata", "demo.qcow2")).CombinedOutput()
	if err != nil {
		t.Fatalf("lsguest: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), strings.TrimSpace(docBlock(t, "../docs/library.md", "<!-- docs test: library output")); got != want {
		t.Errorf("lsguest printed\n%s\ndocs/library.md says\n%s", got, want)
	}
	// A damaged image: an error naming the field, and a failing exit.
	damaged := filepath.Join(dir, "damaged.qcow2")
	b, err := os.ReadFile(filepath.Join(repo, "testdata", "images", "tiny", "v3-zlib.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	b[23] = 40 // cluster_bits
	if err := os.WriteFile(damaged, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(bin, damaged).CombinedOutput()
	if _, failed := err.(*exec.ExitError); !failed || !strings.Contains(string(out), "cluster_bits at offset 0x14") {
		t.Errorf("lsguest on a damaged image: %v\n%s", err, out)
	}
}
