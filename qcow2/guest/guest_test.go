package guest_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/guest"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// fileDisk is a raw disk file.
type fileDisk struct {
	*os.File
	size int64
}

func (f fileDisk) Size() int64 { return f.size }

func openDisk(t *testing.T, path string) fileDisk {
	t.Helper()
	f, size := qemutest.Open(t, path)
	return fileDisk{f, size}
}

func scan(t *testing.T, path string) *guest.Layout {
	t.Helper()
	l, err := guest.Scan(openDisk(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// newDisk makes a sparse raw disk of size bytes with an sfdisk script.
func newDisk(t *testing.T, size int64, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.raw")
	if script == "" {
		if err := os.Truncate(qemutest.Touch(t, path), size); err != nil {
			t.Fatal(err)
		}
		return path
	}
	qemutest.Require(t, "sfdisk")
	qemutest.Sfdisk(t, path, size, script)
	return path
}

// sfdiskPartitions is what sfdisk reads from the disk: the oracle.
func sfdiskPartitions(t *testing.T, path string) (string, []guest.Partition) {
	t.Helper()
	out := qemutest.Run(t, "sfdisk", "-J", path)
	var j struct {
		Table struct {
			Label      string `json:"label"`
			SectorSize int64  `json:"sectorsize"`
			Partitions []struct {
				Node  string `json:"node"`
				Start int64  `json:"start"`
				Size  int64  `json:"size"`
				Type  string `json:"type"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var parts []guest.Partition
	for _, p := range j.Table.Partitions {
		n, err := strconv.Atoi(strings.TrimPrefix(p.Node, path))
		if err != nil {
			t.Fatalf("node %q: %v", p.Node, err)
		}
		if p.Type == "5" || p.Type == "f" || p.Type == "85" {
			continue // the extended partition holds the logical ones
		}
		parts = append(parts, guest.Partition{Number: n, Start: p.Start * 512, Size: p.Size * 512})
	}
	return j.Table.Label, parts
}

func samePartitions(t *testing.T, got []guest.Partition, want []guest.Partition) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d partitions, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].Number != want[i].Number || got[i].Start != want[i].Start || got[i].Size != want[i].Size {
			t.Errorf("partition %d: %+v, want number %d at %d, %d bytes", i, got[i], want[i].Number, want[i].Start, want[i].Size)
		}
	}
}

// logicals is an MBR whose fourth primary partition is extended, holding
// logical partitions 5 and 6.
const logicals = "label: dos\nstart=2048, size=5M, type=83\nsize=5M, type=83\nsize=5M, type=83\nsize=30M, type=5\nsize=5M, type=82\nsize=5M, type=8e\n"

// TestPartitionTables compares what Scan reads with what sfdisk reads.
func TestPartitionTables(t *testing.T) {
	qemutest.Require(t, "sfdisk")
	tests := []struct {
		name, script string
		types        []string
		names        []string
	}{
		{"gpt", "label: gpt\nstart=2048, size=10M, type=L, name=root\nsize=5M, type=S, name=swap\nsize=20M, type=U\n",
			[]string{"Linux filesystem", "Linux swap", "EFI System"}, []string{"root", "swap", ""}},
		{"gpt with gaps", "label: gpt\nstart=4096, size=3M, type=L\nstart=20480, size=1M, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
			[]string{"Linux filesystem", "Linux LVM"}, nil},
		{"mbr primaries", "label: dos\nstart=2048, size=10M, type=83\nsize=5M, type=82\nsize=5M, type=c\nsize=5M, type=7\n",
			[]string{"Linux", "Linux swap", "W95 FAT32 (LBA)", "HPFS/NTFS/exFAT"}, nil},
		{"mbr with logical partitions", logicals, []string{"Linux", "Linux", "Linux", "Linux swap", "Linux LVM"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := newDisk(t, 64<<20, tc.script)
			l := scan(t, path)
			label, want := sfdiskPartitions(t, path)
			if l.Table != map[string]string{"gpt": "gpt", "dos": "mbr"}[label] {
				t.Errorf("table %q, sfdisk says %q", l.Table, label)
			}
			samePartitions(t, l.Partitions, want)
			for i, p := range l.Partitions {
				if p.Type != tc.types[i] {
					t.Errorf("partition %d: type %q, want %q", p.Number, p.Type, tc.types[i])
				}
				if tc.names != nil && p.Name != tc.names[i] {
					t.Errorf("partition %d: name %q, want %q", p.Number, p.Name, tc.names[i])
				}
			}
			if len(l.Problems) > 0 {
				t.Errorf("problems: %q", l.Problems)
			}
		})
	}
}

// TestRandomPartitionTables: layouts drawn at random (a new seed each
// run, logged), written by sfdisk and read back by sfdisk and by Scan:
// GPTs of up to 16 partitions in any slots with gaps, MBRs of primaries
// and an extended partition of up to 8 logical ones.
func TestRandomPartitionTables(t *testing.T) {
	qemutest.Require(t, "sfdisk")
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(uint64(seed), 0))
	const diskMiB = 256
	for i := range 30 {
		var script strings.Builder
		at := 1 + r.IntN(4) // MiB
		part := func(extra string) bool {
			size := 1 + r.IntN(12)
			if at+size >= diskMiB-1 {
				return false
			}
			fmt.Fprintf(&script, "start=%dM, size=%dM%s\n", at, size, extra)
			at += size + r.IntN(3)
			return true
		}
		if r.IntN(2) == 0 {
			script.WriteString("label: gpt\n")
			for n := r.IntN(16) + 1; n > 0 && part(fmt.Sprintf(", type=%s", []string{"L", "S", "U", "E6D6D379-F507-44C2-A23C-238F2A3DF928"}[r.IntN(4)])); n-- {
			}
		} else {
			script.WriteString("label: dos\n")
			primaries := r.IntN(4)
			for n := primaries; n > 0 && part(fmt.Sprintf(", type=%s", []string{"83", "82", "c", "7", "8e"}[r.IntN(5)])); n-- {
			}
			if primaries < 4 && r.IntN(3) > 0 {
				logical := 1 + r.IntN(8)
				fmt.Fprintf(&script, "start=%dM, size=%dM, type=%s\n", at, logical*16, []string{"5", "f", "85"}[r.IntN(3)])
				for n := logical; n > 0; n-- {
					at++ // room for the record before each logical partition
					part(", type=83")
				}
			}
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			path := newDisk(t, diskMiB<<20, script.String())
			l := scan(t, path)
			_, want := sfdiskPartitions(t, path)
			samePartitions(t, l.Partitions, want)
			if len(l.Problems) > 0 {
				t.Errorf("problems: %q", l.Problems)
			}
			if t.Failed() {
				t.Logf("sfdisk script:\n%s", script.String())
			}
		})
	}
}

// patch rewrites bytes of a file.
func patch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	qemutest.WriteFile(t, path, off, b)
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// mbrEntry is a 16-byte MBR partition entry.
func mbrEntry(typ byte, start, sectors uint32) []byte {
	e := make([]byte, 16)
	e[4] = typ
	binary.LittleEndian.PutUint32(e[8:], start)
	binary.LittleEndian.PutUint32(e[12:], sectors)
	return e
}

// TestDamagedTables: bad entries are left out with a problem naming them;
// good ones are kept; nothing fails.
func TestDamagedTables(t *testing.T) {
	qemutest.Require(t, "sfdisk", "mkfs.fat")
	gpt := "label: gpt\nstart=2048, size=10M, type=L\nsize=10M, type=L\n"
	tests := []struct {
		name     string
		setup    func(t *testing.T) string
		want     []int // partition numbers kept
		problems []string
	}{
		{"primary GPT header damaged: the backup is read", func(t *testing.T) string {
			p := newDisk(t, 64<<20, gpt)
			patch(t, p, 512+16, le32(0xdeadbeef)) // header CRC
			return p
		}, []int{1, 2}, []string{"primary GPT is damaged", "CRC mismatch"}},
		{"primary GPT entries damaged: the backup is read", func(t *testing.T) string {
			p := newDisk(t, 64<<20, gpt)
			patch(t, p, 1024+32, []byte{1, 2, 3}) // first entry's start
			return p
		}, []int{1, 2}, []string{"primary GPT is damaged", "entries at sector 2: CRC mismatch"}},
		{"both GPT headers damaged", func(t *testing.T) string {
			p := newDisk(t, 64<<20, gpt)
			patch(t, p, 512, []byte("XXX"))
			patch(t, p, 64<<20-512, []byte("XXX"))
			return p
		}, nil, []string{"no valid GPT"}},
		{"GPT entry past the disk", func(t *testing.T) string {
			p := newDisk(t, 64<<20, gpt)
			rewriteGPTEntry(t, p, 1, func(e []byte) { binary.LittleEndian.PutUint64(e[40:], 1<<40) })
			return p
		}, []int{1}, []string{"partition 2: sectors 22528 to 1099511627776 do not lie in the usable sectors"}},
		// LBAs near 2^64 wrap to small numbers when multiplied as int64.
		{"GPT entry starting near -2^55", func(t *testing.T) string {
			p := newDisk(t, 64<<20, gpt)
			rewriteGPT(t, p, func(h, table []byte) {
				binary.LittleEndian.PutUint64(h[40:], 0xff80000000000000) // first usable
				binary.LittleEndian.PutUint64(table[128+32:], 0xff80000000000000)
			})
			return p
		}, nil, []string{"partition 2: sectors 18410715276690587648 to 43007 do not lie"}},
		{"GPT entry ending at sector 2^64-1", func(t *testing.T) string {
			p := newDisk(t, 64<<20, gpt)
			rewriteGPT(t, p, func(h, table []byte) {
				binary.LittleEndian.PutUint64(h[48:], ^uint64(0)) // last usable
				binary.LittleEndian.PutUint64(table[128+40:], ^uint64(0))
			})
			return p
		}, []int{1}, []string{"partition 2: sectors 22528 to 18446744073709551615"}},
		{"GPT entries at sector 2^63", func(t *testing.T) string {
			p := newDisk(t, 64<<20, gpt)
			rewriteGPT(t, p, func(h, table []byte) { binary.LittleEndian.PutUint64(h[72:], 1<<63) })
			return p
		}, []int{1, 2}, []string{"primary GPT is damaged", "entries at sector 9223372036854775808 lie past the disk"}},
		// The kernel numbers logical partitions from 5 across every
		// extended partition, and gives an empty record no number.
		{"two extended partitions", func(t *testing.T) string {
			p := newDisk(t, 64<<20, "")
			patch(t, p, 446, append(mbrEntry(0x05, 2048, 20480), mbrEntry(0x0f, 22528, 40960)...))
			patch(t, p, 510, []byte{0x55, 0xaa})
			for _, ebr := range []struct {
				at          int64
				entry, link []byte
			}{
				{2048, mbrEntry(0x83, 2048, 4096), nil},
				{22528, mbrEntry(0, 0, 0), mbrEntry(0x05, 8192, 20480)}, // empty, then a link
				{22528 + 8192, mbrEntry(0x83, 2048, 4096), nil},
			} {
				patch(t, p, ebr.at*512+446, append(ebr.entry, append(ebr.link, make([]byte, 16-len(ebr.link)%16)...)...))
				patch(t, p, ebr.at*512+510, []byte{0x55, 0xaa})
			}
			return p
		}, []int{5, 6}, nil},
		{"MBR entry past the disk", func(t *testing.T) string {
			p := newDisk(t, 64<<20, "label: dos\nstart=2048, size=10M, type=83\n")
			patch(t, p, 446+16, mbrEntry(0x83, 100000, 1<<30))
			return p
		}, []int{1}, []string{"partition 2", "does not lie inside the disk"}},
		{"MBR entries overlapping", func(t *testing.T) string {
			p := newDisk(t, 64<<20, "label: dos\nstart=2048, size=10M, type=83\n")
			patch(t, p, 446+16, mbrEntry(0x83, 4096, 20480))
			return p
		}, []int{1}, []string{"partition 2", "overlaps partition 1"}},
		{"logical partitions that loop", func(t *testing.T) string {
			p := newDisk(t, 64<<20, logicals)
			// The first EBR's link points back at itself.
			ext := int64(2048+3*10240) * 512
			patch(t, p, ext+446+16, mbrEntry(0x05, 0, 10240))
			return p
		}, []int{1, 2, 3, 5}, []string{"loops"}},
		{"no table", func(t *testing.T) string { return newDisk(t, 64<<20, "") }, nil, nil},
		{"a file system on the whole disk", func(t *testing.T) string {
			p := newDisk(t, 64<<20, "")
			qemutest.Run(t, "mkfs.fat", "-F", "32", p)
			return p
		}, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := scan(t, tc.setup(t))
			var got []int
			for _, p := range l.Partitions {
				got = append(got, p.Number)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("partitions %v, want %v (problems %q)", got, tc.want, l.Problems)
			}
			all := strings.Join(l.Problems, "\n")
			for _, p := range tc.problems {
				if !strings.Contains(all, p) {
					t.Errorf("problems %q do not say %q", l.Problems, p)
				}
			}
			if len(tc.problems) == 0 && len(l.Problems) > 0 {
				t.Errorf("problems %q, want none", l.Problems)
			}
		})
	}
}

// rewriteGPTEntry changes entry i of the primary GPT and fixes both CRCs.
func rewriteGPTEntry(t *testing.T, path string, i int, fn func(e []byte)) {
	t.Helper()
	rewriteGPT(t, path, func(_, table []byte) { fn(table[128*i : 128*(i+1)]) })
}

// rewriteGPT changes the primary GPT header and entries (128 bytes each)
// and fixes both CRCs.
func rewriteGPT(t *testing.T, path string, fn func(header, table []byte)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	h := b[512:1024]
	table := b[1024 : 1024+128*int(le.Uint32(h[80:]))]
	fn(h, table)
	le.PutUint32(h[88:], crc32.ChecksumIEEE(table))
	le.PutUint32(h[16:], 0)
	le.PutUint32(h[16:], crc32.ChecksumIEEE(h[:le.Uint32(h[12:])]))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// blkid is what blkid reads at the start of a file: the oracle.
func blkid(t *testing.T, path string) guest.FileSystem {
	t.Helper()
	out, _ := exec.Command("blkid", "-p", "-o", "export", path).Output()
	fs := guest.FileSystem{}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "TYPE":
			fs.Type = v
		case "LABEL":
			fs.Label = v
		case "UUID":
			fs.UUID = v
		}
	}
	return fs
}

// TestFileSystems compares the signatures Identify reads with blkid's.
func TestFileSystems(t *testing.T) {
	qemutest.Require(t, "blkid")
	tests := []struct {
		tool string
		args []string
		size int64
	}{
		{"mkfs.ext4", []string{"-q", "-L", "guest-root", "-U", "0b6ff6d4-3c5d-4c6b-9a43-9d7c0e1a5f21"}, 64 << 20},
		{"mkfs.ext3", []string{"-q", "-L", "old"}, 64 << 20},
		{"mkfs.ext2", []string{"-q"}, 64 << 20},
		{"mkfs.xfs", []string{"-q", "-L", "data"}, 320 << 20},
		{"mkfs.btrfs", []string{"-q", "-L", "pool"}, 128 << 20},
		{"mkfs.fat", []string{"-F", "32", "-n", "EFI", "-i", "1234ABCD"}, 64 << 20},
		{"mkfs.fat", []string{"-F", "16", "-n", "BOOT"}, 64 << 20},
		{"mkswap", []string{"-L", "swap0"}, 64 << 20},
		{"mkntfs", []string{"-Q", "-F", "-L", "Windows"}, 64 << 20},
		{"pvcreate", []string{"-q", "-ff", "-y", "--config", "devices { scan_lvs = 0 } global { use_lvmetad = 0 }"}, 64 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.tool+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			qemutest.Require(t, tc.tool)
			path := newDisk(t, tc.size, "")
			if tc.tool == "pvcreate" {
				if os.Geteuid() != 0 {
					qemutest.Missing(t, "pvcreate needs root and a loop device")
				}
				out := strings.TrimSpace(qemutest.Run(t, "losetup", "--show", "-f", path))
				qemutest.Run(t, "pvcreate", append(tc.args, out)...)
				qemutest.Run(t, "losetup", "-d", out)
			} else {
				qemutest.Run(t, tc.tool, append(tc.args, path)...)
			}
			want := blkid(t, path)
			if tc.tool == "mkntfs" {
				want.Label = "" // NTFS keeps its label in the MFT, which we do not read
			}
			l := scan(t, path)
			if l.FS != want || want.Type == "" {
				t.Errorf("Identify: %+v, blkid: %+v", l.FS, want)
			}
		})
	}
	t.Run("LUKS header", func(t *testing.T) {
		path := newDisk(t, 1<<20, "")
		patch(t, path, 0, []byte("LUKS\xba\xbe\x00\x01"))
		patch(t, path, 168, []byte("8b7e4bd1-2b9f-4b43-a7c6-1c1b1a5c9e0d\x00"))
		fs := scan(t, path).FS
		if fs.Type != "crypto_LUKS" || fs.UUID != "8b7e4bd1-2b9f-4b43-a7c6-1c1b1a5c9e0d" {
			t.Errorf("LUKS: %+v", fs)
		}
	})
}
