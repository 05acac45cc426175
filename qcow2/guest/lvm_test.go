package guest_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/guest"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// lvmConfig keeps the LVM tools away from the host's configuration,
// metadata backups and udev, and lets them work without device-mapper.
const lvmConfig = `activation { udev_sync = 0 udev_rules = 0 }
backup { backup = 0 archive = 0 }
devices { obtain_device_list_from_udev = 0 scan_lvs = 0 }
`

// TestLVMVolumes builds a volume group over two GPT partitions with the
// LVM tools (on loop devices, without device-mapper), writes each logical
// volume's bytes where `lvs --segments` says its extents lie, and reads
// the volumes back: a linear volume of two segments, one that spans both
// physical volumes, a plain one, and a striped one that is listed but not
// exposed.
func TestLVMVolumes(t *testing.T) {
	qemutest.Require(t, "sfdisk", "losetup", "pvcreate", "vgcreate", "lvcreate", "lvextend", "lvs", "pvs")
	if os.Geteuid() != 0 {
		qemutest.Missing(t, "the LVM tools need root and loop devices")
	}
	etc := t.TempDir()
	if err := os.WriteFile(filepath.Join(etc, "lvm.conf"), []byte(lvmConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LVM_SYSTEM_DIR", etc)
	t.Setenv("LVM_SUPPRESS_FD_WARNINGS", "1")
	const lvmType = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
	path := newDisk(t, 96<<20, "label: gpt\nstart=2048, size=40M, type="+lvmType+"\nsize=40M, type="+lvmType+"\n")
	_, parts := sfdiskPartitions(t, path)
	// One loop device per partition; which partition each is.
	partOf := map[string]guest.Partition{}
	var loops []string
	for _, p := range parts {
		dev := strings.TrimSpace(qemutest.Run(t, "losetup", "--show", "-f", "-o", strconv.FormatInt(p.Start, 10),
			"--sizelimit", strconv.FormatInt(p.Size, 10), path))
		t.Cleanup(func() { qemutest.Run(t, "losetup", "-d", dev) })
		partOf[dev] = p
		loops = append(loops, dev)
	}
	lvm := func(args ...string) { qemutest.Run(t, args[0], append([]string{"-q"}, args[1:]...)...) }
	lv := []string{"--driverloaded", "n", "--activate", "n", "--zero", "n"}
	lvm("pvcreate", loops[0], loops[1])
	lvm("vgcreate", "-s", "1M", "vg-guest", loops[0], loops[1])
	lvm(append([]string{"lvcreate", "-L", "12M", "-n", "root", "vg-guest", loops[0]}, lv...)...)
	lvm(append([]string{"lvcreate", "-L", "4M", "-n", "other", "vg-guest", loops[0]}, lv...)...)
	lvm("lvextend", "--driverloaded", "n", "-L", "+8M", "vg-guest/root", loops[0])
	lvm(append([]string{"lvcreate", "-L", "13M", "-n", "span", "vg-guest", loops[0]}, lv...)...)
	lvm("lvextend", "--driverloaded", "n", "-L", "+5M", "vg-guest/span", loops[1])
	lvm(append([]string{"lvcreate", "-i", "2", "-I", "64k", "-L", "4M", "-n", "stripes", "vg-guest"}, lv...)...)

	// Where LVM says each volume's extents are.
	peStart := map[string]int64{}
	for _, line := range strings.Split(qemutest.Run(t, "pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pv_name,pe_start"), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			peStart[f[0]], _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	segments := map[string][]guest.Segment{}
	out := qemutest.Run(t, "lvs", "--segments", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,segtype,seg_pe_ranges", "vg-guest")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[1] != "linear" {
			continue
		}
		dev, ranges, _ := strings.Cut(f[2], ":")
		a, b, _ := strings.Cut(ranges, "-")
		first, _ := strconv.ParseInt(a, 10, 64)
		last, _ := strconv.ParseInt(b, 10, 64)
		segments[f[0]] = append(segments[f[0]], guest.Segment{
			Start: partOf[dev].Start + peStart[dev] + first<<20, Size: (last - first + 1) << 20})
	}
	if len(segments["root"]) != 2 || len(segments["span"]) != 2 {
		t.Fatalf("the layout is not what the test needs: %s", out)
	}
	// Write each linear volume's bytes through its segments.
	want := map[string][]byte{}
	for i, name := range []string{"root", "other", "span"} {
		var size int64
		for _, s := range segments[name] {
			size += s.Size
		}
		want[name] = qemutest.Pattern(byte(i+1), int(size))
		off := int64(0)
		for _, s := range segments[name] {
			qemutest.WriteFile(t, path, s.Start, want[name][off:off+s.Size])
			off += s.Size
		}
	}

	l := scan(t, path)
	d := openDisk(t, path)
	found := map[string]guest.Volume{}
	for _, v := range l.Volumes {
		found[v.Name] = v
	}
	for name, bytesWant := range want {
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
	if v := found["root"]; v.FileName() != "vg--guest-root.raw" {
		t.Errorf("file name %q", v.FileName())
	}
	if v := found["stripes"]; !strings.Contains(v.Unreadable, "striped over 2") {
		t.Errorf("striped volume: %+v", v)
	}
	if !strings.Contains(strings.Join(l.Problems, "\n"), "vg-guest/stripes is not exposed") {
		t.Errorf("problems %q", l.Problems)
	}
	for _, p := range l.Partitions {
		if p.FS.Type != "LVM2_member" || !bytes.Contains([]byte(p.Type), []byte("LVM")) {
			t.Errorf("partition %d: %+v", p.Number, p)
		}
	}
}
