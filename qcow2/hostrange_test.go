package qcow2_test

import (
	"bytes"
	"os"
	"path/filepath"
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
			f, hostOff, ok := img.HostRange(tc.off, tc.n)
			if ok != tc.want {
				t.Fatalf("HostRange ok = %v, want %v", ok, tc.want)
			}
			if !ok {
				return
			}
			got := make([]byte, tc.n)
			if _, err := f.ReadAt(got, hostOff); err != nil {
				t.Fatalf("reading the host range: %v", err)
			}
			want := make([]byte, tc.n)
			if _, err := img.ReadAt(want, tc.off); err != nil {
				t.Fatalf("ReadAt: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the host range holds other bytes than ReadAt returns")
			}
		})
	}
}
