package qcow2_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

func TestHostRange(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	for off := int64(0); off < 1<<20; off += 64 << 10 {
		qemutest.WriteFile(t, raw, off, qemutest.Pattern(byte(off>>16), 32<<10)) // compressible
	}
	if err := os.Truncate(raw, 4<<20); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, plain)
	qemutest.IO(t, plain, "write -z 256k 64k")
	compressed := filepath.Join(dir, "compressed.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-q", "-c", "-O", "qcow2", plain, compressed)

	tests := []struct {
		name     string
		image    string
		off      int64
		n        int
		truncate int64 // cut the image file to this size first, if set
		want     bool
	}{
		{"one run of data", plain, 4096, 200 << 10, 0, true},
		{"runs into zero clusters", plain, 200 << 10, 100 << 10, 0, false},
		{"a hole", plain, 2 << 20, 4096, 0, false},
		{"compressed", compressed, 0, 64 << 10, 0, false},
		{"past the disk", plain, 4<<20 - 10, 20, 0, false},
		{"past the end of the truncated file", plain, 0, 1 << 20, 300 << 10, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "img.qcow2")
			b, err := os.ReadFile(tc.image)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := qcow2.Open(path, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if tc.truncate > 0 {
				if err := os.Truncate(path, tc.truncate); err != nil {
					t.Fatal(err)
				}
			}
			want := make([]byte, tc.n)
			img.ReadAt(want, tc.off) // fails where both must answer false

			f, hostOff, ok := img.HostRange(tc.off, tc.n)
			if ok != tc.want {
				t.Fatalf("HostRange ok = %v, want %v", ok, tc.want)
			}
			if ok {
				got := make([]byte, tc.n)
				if _, err := f.ReadAt(got, hostOff); err != nil {
					t.Fatalf("reading the host range: %v", err)
				}
				if !bytes.Equal(got, want) {
					t.Fatal("the host range holds other bytes than ReadAt returns")
				}
			}

			// The same image from a file that lends its bytes, as a
			// remote one does: PinRange lends where HostRange splices.
			if tc.truncate > 0 {
				b = b[:tc.truncate]
			}
			l := &lendingFile{Reader: bytes.NewReader(b)}
			limg, err := qcow2.New(l, int64(len(b)), qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer limg.Close()
			bufs, release, err := limg.PinRange(tc.off, tc.n)
			if err != nil || (bufs != nil) != tc.want {
				t.Fatalf("PinRange lent %d slices, %v; want lent = %v", len(bufs), err, tc.want)
			}
			if bufs == nil {
				return
			}
			if !bytes.Equal(bytes.Join(bufs, nil), want) {
				t.Fatal("PinRange lends other bytes than ReadAt returns")
			}
			release()
			if l.pinned != 0 {
				t.Fatalf("%d pins left after release", l.pinned)
			}
			l.fail = true
			if _, _, err := limg.PinRange(tc.off, tc.n); err == nil || !strings.Contains(err.Error(), "guest offset") {
				t.Fatalf("a failing Pin: %v, want an error naming the guest offset", err)
			}
		})
	}
}

// lendingFile lends its bytes as a remote file does, in pieces of at most
// 100 KiB, and counts the pins not yet released.
type lendingFile struct {
	*bytes.Reader
	pinned int
	fail   bool
}

func (l *lendingFile) Pin(off int64, n int) ([][]byte, func(), error) {
	if l.fail {
		return nil, nil, errors.New("the server went away")
	}
	var bufs [][]byte
	for n > 0 {
		b := make([]byte, min(n, 100<<10))
		l.ReadAt(b, off)
		bufs = append(bufs, b)
		off, n = off+int64(len(b)), n-len(b)
	}
	l.pinned++
	return bufs, func() { l.pinned-- }, nil
}
