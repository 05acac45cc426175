package integration

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestHostileCorpusFromTheCLI runs info, check, export and a mount on every
// damaged image: refused at open with one line naming the field, leaving
// nothing behind; or checked (exit 0, 2 or 3), exported (QEMU's bytes, or
// an error naming the offset of a damaged range) and mounted, with EIO for
// the damaged ranges only and the mount still up.
func TestHostileCorpusFromTheCLI(t *testing.T) {
	requireFUSE(t)
	corpus := qemutest.HostileCorpus(t, t.TempDir())
	for _, h := range corpus {
		t.Run(h.Name, func(t *testing.T) {
			var key []string
			if h.Passphrase != "" {
				key = []string{"--key-file", qemutest.KeyFile(t, h.Passphrase)}
			}
			out, code := run(t, append([]string{"info", h.Path}, key...)...)
			crashed := strings.Contains(out, "panic") || strings.Contains(out, "goroutine ")
			if crashed || (h.OpenError != "" && (code == 0 || !strings.Contains(out, h.OpenError))) || (h.OpenError == "" && code != 0) {
				t.Fatalf("info: exit %d: %s", code, out)
			}
			// check needs no passphrase: a LUKS image refused only when
			// unlocked is checked.
			out, code = run(t, "check", h.Path)
			crashed = strings.Contains(out, "panic") || strings.Contains(out, "goroutine ")
			refused := code == 1 && h.OpenError != "" && strings.Contains(out, h.OpenError)
			checked := code == 0 || code == 2 || code == 3
			if crashed || !(refused || checked && (h.OpenError == "" || h.Passphrase != "")) {
				t.Fatalf("check: exit %d: %s", code, out)
			}
			if h.OpenError == "" {
				exported := filepath.Join(t.TempDir(), "out.raw")
				out, code = run(t, append([]string{"export", h.Path, exported}, key...)...)
				switch {
				case len(h.Bad) > 0 && (code != 3 || !strings.Contains(out, "the disk at offset")): // reading or mapping
					t.Fatalf("export of a damaged image: exit %d: %s", code, out)
				case len(h.Bad) == 0 && code != 0:
					t.Fatalf("export: exit %d: %s", code, out)
				case len(h.Bad) == 0:
					cmpFiles(t, exported, h.Want)
				}
			}
			mnt := t.TempDir()
			out, code = run(t, append([]string{h.Path, mnt}, key...)...)
			if h.OpenError != "" {
				if code == 0 || !strings.Contains(out, h.OpenError) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
					t.Fatalf("mount: exit %d, want one line naming %q: %s", code, h.OpenError, out)
				}
				if isMounted(mnt) || serverPID(mnt) != 0 {
					t.Fatal("a refused mount left something behind")
				}
				return
			}
			if code != 0 {
				t.Fatalf("mount: exit %d: %s", code, out)
			}
			t.Cleanup(func() { unmount(t, mnt) })
			checkMountedHostile(t, filepath.Join(mnt, "disk.raw"), h)
			if _, err := os.Stat(filepath.Join(mnt, "disk.raw")); err != nil || serverPID(mnt) == 0 {
				t.Fatalf("the mount did not survive: %v", err)
			}
		})
	}
}

func checkMountedHostile(t *testing.T, disk string, h qemutest.Hostile) {
	want, err := os.ReadFile(h.Want)
	if err != nil {
		t.Fatal(err)
	}
	// O_DIRECT, so every read reaches the server instead of stopping at
	// a page that readahead failed to fill.
	f, err := os.OpenFile(disk, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedBuffer(4096)
	for off := int64(0); off < int64(len(want)); off += 4096 {
		_, err := f.ReadAt(buf, off)
		bad := h.IsBad(off)
		switch {
		case bad && !errors.Is(err, syscall.EIO):
			t.Fatalf("read at %#x: %v, want EIO", off, err)
		case !bad && err != nil && err != io.EOF:
			t.Fatalf("read at %#x: %v", off, err)
		case !bad && !bytes.Equal(buf, want[off:off+4096]):
			t.Fatalf("read at %#x: wrong bytes", off)
		}
	}
}

// alignedBuffer returns n bytes aligned for O_DIRECT.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+4096)
	skip := (4096 - int(uintptr(unsafe.Pointer(&b[0]))%4096)) % 4096
	return b[skip : skip+n]
}
