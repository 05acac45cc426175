package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestCraftedGuests: guest disks LVM would never write. The mount, info,
// hash and export --volume agree on one set of file names, none twice;
// no extents are exposed twice; and text from the guest reaches neither
// the terminal nor the log raw.
func TestCraftedGuests(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img")
	lv := func(name string, at, n int64) qemutest.CraftedLV {
		return qemutest.CraftedLV{Name: name, At: at, Extents: n}
	}
	evil := "\x1b]0;pwned\x07\x1b[2J\nERROR forged line \u202eexe.txt"
	tests := []struct {
		name    string
		vg      string
		lvs     []qemutest.CraftedLV
		exposed []string // volumes, as VG/LV
	}{
		{"two volumes of one name", "vg", []qemutest.CraftedLV{lv("a", 0, 2), lv("a", 2, 3), lv("b", 5, 1)}, []string{"vg/a", "vg/b"}},
		{"names whose files would clash", "a", []qemutest.CraftedLV{lv("-b", 0, 2), lv("b", 2, 1)}, []string{"a/b"}},
		{"overlapping volumes", "vg", []qemutest.CraftedLV{lv("a", 0, 4), lv("b", 3, 2), lv("c", 6, 1)}, []string{"vg/c"}},
		{"escape sequences in a segment type", "vg", []qemutest.CraftedLV{{Name: "evil", Extents: 1, Type: evil}, lv("good", 1, 1)}, []string{"vg/good"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			raw := filepath.Join(dir, "guest.raw")
			disk := qemutest.CraftLVM(16<<20, tc.vg, tc.lvs)
			if err := os.WriteFile(raw, disk, 0o644); err != nil {
				t.Fatal(err)
			}
			image := filepath.Join(dir, "guest.qcow2")
			sh(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, image)
			var want []string
			for _, v := range tc.exposed {
				vg, name, _ := strings.Cut(v, "/")
				want = append(want, qemutest.LVMGuest{VG: vg}.FileName(name))
			}
			slices.Sort(want)
			noRaw := func(what, out string) {
				t.Helper()
				if strings.ContainsAny(out, "\x1b\x07\u202e") || strings.Contains(out, "\nERROR forged") {
					t.Errorf("%s passes guest text through raw:\n%q", what, out)
				}
			}

			log := filepath.Join(dir, "mount.log")
			mnt := mountImage(t, image, "--log-file", log)
			var mounted []string
			for _, f := range mountedFiles(t, mnt) {
				if f != "disk.raw" {
					mounted = append(mounted, f)
				}
			}
			if fmt.Sprint(mounted) != fmt.Sprint(want) {
				t.Errorf("mount serves %q, want %q", mounted, want)
			}
			for _, f := range mounted {
				b, err := os.ReadFile(filepath.Join(mnt, f))
				if err != nil || len(b) == 0 {
					t.Errorf("reading %s: %d bytes, %v", f, len(b), err)
				}
			}
			unmount(t, mnt)
			b, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			noRaw("the log", string(b))
			if !strings.Contains(string(b), "is not exposed") {
				t.Errorf("the log does not say what was left out:\n%s", b)
			}

			out, code := run(t, "info", image)
			noRaw("info", out)
			var listed []string
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 1 && strings.HasSuffix(f[1], ".raw") {
					listed = append(listed, f[1])
				}
			}
			slices.Sort(listed)
			if code != 0 || fmt.Sprint(listed) != fmt.Sprint(want) {
				t.Errorf("info lists %q, want %q: exit %d\n%s", listed, want, code, out)
			}

			js, err := exec.Command(bin, "hash", "--json", image).Output()
			var hash struct {
				Parts []struct{ Name, Volume string }
			}
			if err == nil {
				err = json.Unmarshal(js, &hash)
			}
			if err != nil {
				t.Fatalf("hash --json: %v: %s", err, js)
			}
			var hashed []string
			for _, p := range hash.Parts {
				if p.Volume != "" {
					hashed = append(hashed, p.Name)
				}
			}
			slices.Sort(hashed)
			if fmt.Sprint(hashed) != fmt.Sprint(want) {
				t.Errorf("hash covers %q, want %q", hashed, want)
			}
			for _, c := range tc.lvs {
				v := tc.vg + "/" + c.Name
				out, code := run(t, "export", "--volume", v, image, filepath.Join(dir, "volume.raw"))
				noRaw("export", out)
				if exposed := slices.Contains(tc.exposed, v); exposed != (code == 0) {
					t.Errorf("export --volume %s: exit %d, exposed %v: %s", v, code, exposed, out)
				}
			}
		})
	}
}
