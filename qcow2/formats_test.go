package qcow2_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestOtherFormatsAreNamed: an image in another format is refused with
// its format's name and what to do instead.
func TestOtherFormatsAreNamed(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	qemuFormat := func(format string) func(t *testing.T, p string) {
		return func(t *testing.T, p string) { qemutest.Create(t, p, format, "1M") }
	}
	bytesAt := func(off int64, magic string) func(t *testing.T, p string) {
		return func(t *testing.T, p string) {
			qemutest.WriteFile(t, p, off, []byte(magic))
			if err := os.Truncate(p, 1<<20); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name string
		make func(t *testing.T, p string)
		want string
	}{
		{"vmdk", qemuFormat("vmdk"), "VMware VMDK"},
		{"vhdx", qemuFormat("vhdx"), "Hyper-V VHDX"},
		{"vhd", qemuFormat("vpc"), "Virtual PC VHD"},
		{"vdi", qemuFormat("vdi"), "VirtualBox VDI"},
		{"luks", bytesAt(0, "LUKS\xba\xbe\x00\x01"), "LUKS encrypted volume"},
		{"iso", bytesAt(0x8001, "CD001"), "ISO 9660"},
		{"gzip", bytesAt(0, "\x1f\x8b\x08\x00"), "archive"},
		{"xz", bytesAt(0, "\xfd7zXZ\x00"), "archive"},
		{"raw", bytesAt(0, "\xeb\x63\x90"), "attach it read-only as it is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "image."+tc.name)
			tc.make(t, p)
			img, err := qcow2.Open(p, qcow2.Options{})
			if err == nil {
				img.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
	t.Run("directory", func(t *testing.T) {
		_, err := qcow2.Open(t.TempDir(), qcow2.Options{})
		if err == nil || !strings.Contains(err.Error(), "is a directory, not an image file") {
			t.Fatalf("error %v", err)
		}
	})
}
