package qemutest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// Sfdisk makes a sparse raw disk of size bytes at path and writes its
// partition table with an sfdisk script.
func Sfdisk(t testing.TB, path string, size int64, script string) {
	t.Helper()
	if err := os.Truncate(Touch(t, path), size); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "-q", path)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
}

// lvmConfig keeps the LVM tools away from the host's configuration,
// metadata backups, udev, hints and devices file, and lets them work
// without device-mapper. The filter admits only the test's own loop
// devices: LVM otherwise scans every block device on the machine, and
// sees the physical volumes of tests running beside this one.
func lvmConfig(devices []string) string {
	var accept []string
	for _, d := range devices {
		accept = append(accept, fmt.Sprintf("%q", "a|^"+regexp.QuoteMeta(d)+"$|"))
	}
	filter := "[ " + strings.Join(append(accept, `"r|.*|"`), ", ") + " ]"
	return `activation { udev_sync = 0 udev_rules = 0 }
backup { backup = 0 archive = 0 }
devices { obtain_device_list_from_udev = 0 scan_lvs = 0 use_devicesfile = 0 hints = "none"
	filter = ` + filter + ` global_filter = ` + filter + ` }
`
}

// vgSerial numbers the volume groups one test process makes.
var vgSerial atomic.Int64

// LVMGuest is a disk LVMDisk made: its volume group's name, unique on the
// machine, and each linear volume's bytes by volume name.
type LVMGuest struct {
	VG      string
	Volumes map[string][]byte
}

// FileName is the name a mount gives volume lv, as device-mapper names it:
// VG-LV with each dash inside either name doubled.
func (g LVMGuest) FileName(lv string) string {
	return strings.ReplaceAll(g.VG, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--") + ".raw"
}

// LVMDisk makes at path a 96 MiB GPT disk whose two 40 MiB partitions
// (at 1 MiB and 41 MiB) are the physical volumes of a volume group named
// "vg-guest-PID-N" (unique, since packages and clones test at the same
// time), built with the LVM tools on loop devices without device-mapper:
// "root" (two segments on the first PV), "other", "span" (across both
// PVs) and "stripes" (striped, which cannot be read). It writes each
// linear volume's bytes where `lvs --segments` says its extents lie.
func LVMDisk(t testing.TB, path string) LVMGuest {
	t.Helper()
	Require(t, "sfdisk", "losetup", "pvcreate", "vgcreate", "lvcreate", "lvextend", "lvs", "pvs")
	if os.Geteuid() != 0 {
		Missing(t, "the LVM tools need root and loop devices")
	}
	etc := t.TempDir()
	env := append(os.Environ(), "LVM_SYSTEM_DIR="+etc, "LVM_SUPPRESS_FD_WARNINGS=1")
	lvm := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v: %s", args, err, out)
		}
		return string(out)
	}
	const lvmType = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
	Sfdisk(t, path, 96<<20, "label: gpt\nstart=2048, size=40M, type="+lvmType+"\nsize=40M, type="+lvmType+"\n")
	partStart := map[string]int64{}
	var loops []string
	for _, start := range []int64{1 << 20, 41 << 20} {
		dev := strings.TrimSpace(Run(t, "losetup", "--show", "-f", "-o", strconv.FormatInt(start, 10), "--sizelimit", strconv.Itoa(40<<20), path))
		t.Cleanup(func() { Run(t, "losetup", "-d", dev) })
		partStart[dev] = start
		loops = append(loops, dev)
	}
	if err := os.WriteFile(filepath.Join(etc, "lvm.conf"), []byte(lvmConfig(loops)), 0o644); err != nil {
		t.Fatal(err)
	}
	vg := fmt.Sprintf("vg-guest-%d-%d", os.Getpid(), vgSerial.Add(1))
	noDM := []string{"--driverloaded", "n", "--activate", "n", "--zero", "n"}
	lvm("pvcreate", "-q", loops[0], loops[1])
	lvm("vgcreate", "-q", "-s", "1M", vg, loops[0], loops[1])
	lvm(append([]string{"lvcreate", "-q", "-L", "12M", "-n", "root", vg, loops[0]}, noDM...)...)
	lvm(append([]string{"lvcreate", "-q", "-L", "4M", "-n", "other", vg, loops[0]}, noDM...)...)
	lvm("lvextend", "-q", "--driverloaded", "n", "-L", "+8M", vg+"/root", loops[0])
	lvm(append([]string{"lvcreate", "-q", "-L", "13M", "-n", "span", vg, loops[0]}, noDM...)...)
	lvm("lvextend", "-q", "--driverloaded", "n", "-L", "+5M", vg+"/span", loops[1])
	lvm(append([]string{"lvcreate", "-q", "-i", "2", "-I", "64k", "-L", "4M", "-n", "stripes", vg}, noDM...)...)

	// Where LVM says each volume's extents are.
	peStart := map[string]int64{}
	for _, line := range strings.Split(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pv_name,pe_start"), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			peStart[f[0]], _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	type segment struct{ start, size int64 }
	segments := map[string][]segment{}
	out := lvm("lvs", "--segments", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,segtype,seg_pe_ranges", vg)
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[1] != "linear" {
			continue
		}
		dev, ranges, _ := strings.Cut(f[2], ":")
		a, b, _ := strings.Cut(ranges, "-")
		first, _ := strconv.ParseInt(a, 10, 64)
		last, _ := strconv.ParseInt(b, 10, 64)
		segments[f[0]] = append(segments[f[0]], segment{partStart[dev] + peStart[dev] + first<<20, (last - first + 1) << 20})
	}
	if len(segments["root"]) != 2 || len(segments["span"]) != 2 {
		t.Fatalf("the LVM tools made another layout than the tests need: %s", out)
	}
	volumes := map[string][]byte{}
	for i, name := range []string{"root", "other", "span"} {
		var size int64
		for _, s := range segments[name] {
			size += s.size
		}
		volumes[name] = Pattern(byte(i+1), int(size))
		off := int64(0)
		for _, s := range segments[name] {
			WriteFile(t, path, s.start, volumes[name][off:off+s.size])
			off += s.size
		}
	}
	return LVMGuest{VG: vg, Volumes: volumes}
}
