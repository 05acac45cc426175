package guest_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// TestCraftedVolumeGroups: what LVM would never write but a crafted disk
// can. No two files get one name, no extents are exposed twice, and text
// from the disk comes back quoted where it is not a plain name.
func TestCraftedVolumeGroups(t *testing.T) {
	lv := func(name string, at, n int64) qemutest.CraftedLV {
		return qemutest.CraftedLV{Name: name, At: at, Extents: n}
	}
	many := make([]qemutest.CraftedLV, 5000)
	for i := range many {
		many[i] = lv(fmt.Sprintf("lv%d", i), int64(i%50), 1)
	}
	tests := []struct {
		name     string
		vg       string
		lvs      []qemutest.CraftedLV
		exposed  []string // file names
		problems []string
	}{
		{"plain", "vg", []qemutest.CraftedLV{lv("a", 0, 2), lv("b", 2, 3)}, []string{"vg-a.raw", "vg-b.raw"}, nil},
		{"two volumes of one name", "vg", []qemutest.CraftedLV{lv("a", 0, 2), lv("a", 2, 3)}, []string{"vg-a.raw"},
			[]string{"LVM volume vg/a is not exposed: its file name vg-a.raw is taken by volume vg/a"}},
		// a/-b and a-/b would both be a---b.raw; LVM allows no leading dash.
		{"a name LVM does not allow", "a", []qemutest.CraftedLV{lv("-b", 0, 2), lv("c", 2, 1)}, []string{"a-c.raw"},
			[]string{"LVM volume a/-b is not exposed: name: starts with a dash"}},
		{"overlapping volumes", "vg", []qemutest.CraftedLV{lv("a", 0, 4), lv("b", 3, 2), lv("c", 5, 1), lv("d", 10, 1), lv("e", 9, 3)}, []string{"vg-c.raw"},
			[]string{"vg/a is not exposed: its extents overlap those of volume vg/b", "vg/b is not exposed: its extents overlap those of volume vg/a",
				"vg/d is not exposed: its extents overlap those of volume vg/e", "vg/e is not exposed: its extents overlap those of volume vg/d"}},
		{"thousands of views of the same extents", "vg", many, nil, []string{"more than 4096 logical volumes", "vg/lv0 is not exposed: its extents overlap"}},
		{"a segment type of escape sequences", "vg", []qemutest.CraftedLV{{Name: "a", Extents: 1, Type: "\x1b[31mred\n\u202e"}}, nil,
			[]string{`LVM volume vg/a is not exposed: "\x1b[31mred\n\u202e" volume`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			disk := qemutest.CraftLVM(64<<20, tc.vg, tc.lvs)
			l, err := guest.Scan(bytesDisk{bytes.NewReader(disk)})
			if err != nil {
				t.Fatal(err)
			}
			var exposed []string
			for _, v := range l.Volumes {
				if v.Unreadable == "" {
					exposed = append(exposed, v.FileName())
				}
			}
			if fmt.Sprint(exposed) != fmt.Sprint(tc.exposed) {
				t.Errorf("exposed %q, want %q (problems %q)", exposed, tc.exposed, l.Problems)
			}
			all := strings.Join(l.Problems, "\n")
			for _, p := range tc.problems {
				if !strings.Contains(all, p) {
					t.Errorf("problems do not say %q:\n%s", p, all)
				}
			}
			if len(tc.problems) == 0 && len(l.Problems) > 0 {
				t.Errorf("problems %q, want none", l.Problems)
			}
		})
	}
}

// TestRandomLVMLayouts: volume groups the LVM tools laid out at random (a
// new seed each run, logged), read back: every linear volume LVM lists,
// with the bytes written where lvs says its extents lie, and no other.
func TestRandomLVMLayouts(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(uint64(seed), 0))
	for i := range 4 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.raw")
			g := qemutest.RandomLVMDisk(t, path, r)
			l := scan(t, path)
			d := openDisk(t, path)
			var got []string
			for _, v := range l.Volumes {
				got = append(got, v.Name)
				want, ok := g.Volumes[v.Name]
				if !ok || v.Unreadable != "" {
					t.Errorf("volume %s: %+v (LVM lists it: %v)", v.Name, v, ok)
					continue
				}
				b := make([]byte, v.Size)
				if _, err := v.View(d).ReadAt(b, 0); err != nil {
					t.Fatal(err)
				}
				if at := qemutest.FirstDiff(b, want); at >= 0 || len(b) != len(want) {
					t.Errorf("volume %s: %d bytes, want %d; first difference at %d", v.Name, len(b), len(want), at)
				}
			}
			if len(got) != len(g.Volumes) || len(l.Problems) > 0 {
				t.Errorf("volumes %q, LVM lists %d; problems %q", got, len(g.Volumes), l.Problems)
			}
		})
	}
}
