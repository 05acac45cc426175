package qemutest

import (
	"fmt"
	"math/rand/v2"
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
	g, segments := buildLVM(t, path, func(lvm lvmRunner, vg string, pvs []string) {
		lvm.create(vg, "root", 12, pvs[0])
		lvm.create(vg, "other", 4, pvs[0])
		lvm.extend(vg, "root", 8, pvs[0])
		lvm.create(vg, "span", 13, pvs[0])
		lvm.extend(vg, "span", 5, pvs[1])
		lvm("lvcreate", "-q", "-i", "2", "-I", "64k", "-L", "4M", "-n", "stripes", vg, "--driverloaded", "n", "--activate", "n", "--zero", "n")
	})
	if len(segments["root"]) != 2 || len(segments["span"]) != 2 {
		t.Fatalf("the LVM tools made another layout than the tests need: %v", segments)
	}
	return g
}

// RandomLVMDisk is LVMDisk's disk with a layout drawn from r: up to eight
// linear volumes of 1 to 8 MiB on either physical volume, some extended
// once or twice, on the same or the other one.
func RandomLVMDisk(t testing.TB, path string, r *rand.Rand) LVMGuest {
	t.Helper()
	g, _ := buildLVM(t, path, func(lvm lvmRunner, vg string, pvs []string) {
		free := []int{lvmPVExtents, lvmPVExtents}
		// place picks a PV with room for n extents, or -1.
		place := func(n int) int {
			i := r.IntN(2)
			for _, pv := range []int{i, 1 - i} {
				if free[pv] >= n {
					free[pv] -= n
					return pv
				}
			}
			return -1
		}
		var names []string
		for i := range 1 + r.IntN(8) {
			n := 1 + r.IntN(8)
			if pv := place(n); pv >= 0 {
				names = append(names, fmt.Sprintf("lv%d", i))
				lvm.create(vg, names[len(names)-1], n, pvs[pv])
			}
			for range r.IntN(3) {
				if len(names) == 0 {
					break
				}
				n := 1 + r.IntN(4)
				if pv := place(n); pv >= 0 {
					lvm.extend(vg, names[r.IntN(len(names))], n, pvs[pv])
				}
			}
		}
	})
	return g
}

// lvmPVExtents is how many 1 MiB extents each 40 MiB physical volume has
// once LVM has put its metadata at the start.
const lvmPVExtents = 39

// lvmRunner runs an LVM command with the test's own configuration and
// returns its output, failing the test if it fails.
type lvmRunner func(args ...string) string

// create makes linear volume lv of n MiB on pv, extend adds n MiB on pv:
// metadata only, with no device-mapper to activate or zero it.
func (lvm lvmRunner) create(vg, lv string, n int, pv string) {
	lvm("lvcreate", "-q", "-L", fmt.Sprintf("%dM", n), "-n", lv, vg, pv, "--driverloaded", "n", "--activate", "n", "--zero", "n")
}

func (lvm lvmRunner) extend(vg, lv string, n int, pv string) {
	lvm("lvextend", "-q", "--driverloaded", "n", "-L", fmt.Sprintf("+%dM", n), vg+"/"+lv, pv)
}

// lvmSegment is a run of a volume's bytes on the disk.
type lvmSegment struct{ start, size int64 }

// buildLVM makes the disk of LVMDisk, lets create make the volumes in its
// volume group, and writes each linear volume's bytes (a pattern of its
// own) where `lvs --segments` says its extents lie.
func buildLVM(t testing.TB, path string, create func(lvm lvmRunner, vg string, pvs []string)) (LVMGuest, map[string][]lvmSegment) {
	t.Helper()
	Require(t, "sfdisk", "losetup", "pvcreate", "vgcreate", "lvcreate", "lvextend", "lvs", "pvs")
	if os.Geteuid() != 0 {
		Missing(t, "the LVM tools need root and loop devices")
	}
	etc := t.TempDir()
	env := append(os.Environ(), "LVM_SYSTEM_DIR="+etc, "LVM_SUPPRESS_FD_WARNINGS=1")
	lvm := lvmRunner(func(args ...string) string {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v: %s", args, err, out)
		}
		return string(out)
	})
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
	lvm("pvcreate", "-q", loops[0], loops[1])
	lvm("vgcreate", "-q", "-s", "1M", vg, loops[0], loops[1])
	create(lvm, vg, loops)

	// Where LVM says each volume's extents are.
	peStart := map[string]int64{}
	for _, line := range strings.Split(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pv_name,pe_start"), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			peStart[f[0]], _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	segments := map[string][]lvmSegment{}
	var names []string
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
		if segments[f[0]] == nil {
			names = append(names, f[0])
		}
		segments[f[0]] = append(segments[f[0]], lvmSegment{partStart[dev] + peStart[dev] + first<<20, (last - first + 1) << 20})
	}
	volumes := map[string][]byte{}
	for i, name := range names {
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
	return LVMGuest{VG: vg, Volumes: volumes}, segments
}
