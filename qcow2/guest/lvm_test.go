package guest_test

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/guest"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestLVMVolumes reads the volume group qemutest.LVMDisk builds with the
// LVM tools: a linear volume of two segments, one that spans both
// physical volumes, a plain one, and a striped one that is listed but not
// exposed.
func TestLVMVolumes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	g := qemutest.LVMDisk(t, path)
	l := scan(t, path)
	d := openDisk(t, path)
	found := map[string]guest.Volume{}
	for _, v := range l.Volumes {
		found[v.Name] = v
	}
	for name, bytesWant := range g.Volumes {
		v, ok := found[name]
		if !ok || v.Unreadable != "" {
			t.Errorf("volume %s: %+v (problems %q)", name, v, l.Problems)
			continue
		}
		got := make([]byte, v.Size)
		if _, err := v.View(d).ReadAt(got, 0); err != nil {
			t.Fatalf("volume %s: %v", name, err)
		}
		if at := qemutest.FirstDiff(got, bytesWant); at >= 0 {
			t.Errorf("volume %s: byte %d differs (size %d, want %d)", name, at, len(got), len(bytesWant))
		}
	}
	if v := found["root"]; v.FileName() != g.FileName("root") {
		t.Errorf("file name %q, want %q", v.FileName(), g.FileName("root"))
	}
	if v := found["stripes"]; !strings.Contains(v.Unreadable, "striped over 2") {
		t.Errorf("striped volume: %+v", v)
	}
	if !strings.Contains(strings.Join(l.Problems, "\n"), g.VG+"/stripes is not exposed") {
		t.Errorf("problems %q", l.Problems)
	}
	for _, p := range l.Partitions {
		if p.FS.Type != "LVM2_member" || !bytes.Contains([]byte(p.Type), []byte("LVM")) {
			t.Errorf("partition %d: %+v", p.Number, p)
		}
	}
}
