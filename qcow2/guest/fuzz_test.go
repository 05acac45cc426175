package guest_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/guest"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// The fuzz targets' seeds are made here, small: a fuzzer mutates every
// byte of its input alike, and bytes no parser reads only slow it down.
// Disks are the input followed by zeros up to a size of their own, so
// that a few KiB of tables can describe partitions and volumes of MiBs.

// bytesDisk is a disk in memory.
type bytesDisk struct{ *bytes.Reader }

// paddedDisk is b followed by zeros up to size bytes.
type paddedDisk struct {
	b    []byte
	size int64
}

func (d paddedDisk) Size() int64 { return d.size }

func (d paddedDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= d.size {
		return 0, io.EOF
	}
	n := copy(p, d.b[min(off, int64(len(d.b))):])
	want := min(int64(len(p)), d.size-off)
	clear(p[n:want])
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return len(p), nil
}

// fuzzDiskSize is the size of every fuzzed disk.
const fuzzDiskSize = 64 << 20

// mbrSeed is an MBR of a Linux partition and an extended one holding two
// logical partitions, one of them an LVM type.
func mbrSeed() []byte {
	b := make([]byte, 16*512)
	entry := func(at int, typ byte, start, sectors uint32) { copy(b[at:], mbrEntry(typ, start, sectors)) }
	entry(446, 0x83, 2048, 2048)
	entry(446+16, 0x05, 8, 100000)
	binary.LittleEndian.PutUint16(b[510:], 0xaa55)
	// EBRs at sectors 8 and 12: a logical partition each, and a link.
	entry(8*512+446, 0x83, 8192, 4096)
	entry(8*512+446+16, 0x05, 4, 8192)
	binary.LittleEndian.PutUint16(b[8*512+510:], 0xaa55)
	entry(12*512+446, 0x8e, 20000, 4096)
	binary.LittleEndian.PutUint16(b[12*512+510:], 0xaa55)
	return b
}

// gptSeed is a protective MBR and a primary GPT of four entries (two in
// use) on a disk of fuzzDiskSize; the backup is left to the zeros, so a
// damaged primary finds none.
func gptSeed() []byte {
	le := binary.LittleEndian
	b := make([]byte, 3*512)
	copy(b[446:], mbrEntry(0xee, 1, 0xffffffff))
	le.PutUint16(b[510:], 0xaa55)
	h, entries := b[512:1024], b[1024:1536]
	// Type GUIDs as stored: Linux filesystem and Linux LVM.
	linux := []byte{0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4}
	lvm := []byte{0x79, 0xd3, 0xd6, 0xe6, 0x07, 0xf5, 0xc2, 0x44, 0xa2, 0x3c, 0x23, 0x8f, 0x2a, 0x3d, 0xf9, 0x28}
	for i, p := range []struct {
		typ         []byte
		first, last uint64
	}{{linux, 2048, 4095}, {lvm, 4096, 20479}} {
		e := entries[128*i:]
		copy(e, p.typ)
		le.PutUint64(e[32:], p.first)
		le.PutUint64(e[40:], p.last)
		copy(e[56:], []byte{'r', 0, 'o', 0, 'o', 0, 't', 0})
	}
	copy(h, "EFI PART")
	le.PutUint32(h[8:], 0x10000)
	le.PutUint32(h[12:], 92)
	le.PutUint64(h[24:], 1)
	le.PutUint64(h[32:], fuzzDiskSize/512-1)
	le.PutUint64(h[40:], 34)
	le.PutUint64(h[48:], fuzzDiskSize/512-34)
	le.PutUint64(h[72:], 2)
	le.PutUint32(h[80:], 4)
	le.PutUint32(h[84:], 128)
	le.PutUint32(h[88:], crc32.ChecksumIEEE(entries))
	le.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
	return b
}

// lvmSeed is a whole-disk physical volume whose metadata names a linear
// volume of two segments, one of one, and a striped one; only its first
// sectors, which hold everything LVM keeps.
func lvmSeed() []byte {
	disk := qemutest.CraftLVM(fuzzDiskSize, "vg", []qemutest.CraftedLV{
		{Name: "root", At: 0, Extents: 4}, {Name: "swap", At: 4, Extents: 2}, {Name: "pool", At: 6, Extents: 1, Type: "thin-pool"},
	})
	return bytes.TrimRight(disk[:16<<10], "\x00")
}

// lvmClashSeed is a physical volume whose metadata LVM would not write:
// two volumes of one name, a name with a leading dash, overlapping
// extents, a volume of two segments.
func lvmClashSeed() []byte {
	disk := qemutest.CraftLVM(fuzzDiskSize, "vg", []qemutest.CraftedLV{
		{Name: "a", At: 0, Extents: 2}, {Name: "a", At: 2, Extents: 1}, {Name: "-b", At: 3, Extents: 1},
		{Name: "c", At: 4, Extents: 3}, {Name: "d", At: 6, Extents: 2}, {Name: "e", At: 9, Extents: 1},
	})
	return bytes.TrimRight(disk[:16<<10], "\x00")
}

// FuzzScan scans fuzzed disks: partition tables (MBR with logical
// partitions, GPT), file-system signatures and LVM. Whatever the bytes,
// the partitions lie inside the disk, overlap nothing and have numbers
// and file names of their own; the exposed volumes lie inside the disk,
// overlap nothing, and read exactly what was asked.
func FuzzScan(f *testing.F) {
	for _, seed := range [][]byte{mbrSeed(), gptSeed(), lvmSeed(), lvmClashSeed()} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d := paddedDisk{b, fuzzDiskSize}
		l, err := guest.Scan(d)
		if err != nil {
			t.Fatalf("a disk in memory failed with an I/O error: %v", err)
		}
		names := map[string]bool{"disk.raw": true}
		type span struct{ start, end int64 }
		var parts, vols []span
		for _, p := range l.Partitions {
			if p.Start < 0 || p.Size <= 0 || p.Start > d.Size()-p.Size {
				t.Fatalf("partition outside the disk: %+v", p)
			}
			parts = append(parts, span{p.Start, p.Start + p.Size})
			if names[p.FileName()] {
				t.Fatalf("two files named %s", p.FileName())
			}
			names[p.FileName()] = true
		}
		for _, v := range l.Volumes {
			if v.Unreadable != "" {
				continue
			}
			if names[v.FileName()] {
				t.Fatalf("two files named %s", v.FileName())
			}
			names[v.FileName()] = true
			for _, s := range v.Segments {
				if s.Start < 0 || s.Size <= 0 || s.Start > d.Size()-s.Size {
					t.Fatalf("volume %s: segment outside the disk: %+v", v.Name, s)
				}
				vols = append(vols, span{s.Start, s.Start + s.Size})
			}
			buf := make([]byte, min(v.Size, 4096)+10)
			view := v.View(d)
			n, err := view.ReadAt(buf, v.Size-int64(len(buf))+10)
			if n != len(buf)-10 || err != io.EOF {
				t.Fatalf("volume %s: reading its last %d bytes and 10 past its end: %d, %v", v.Name, len(buf)-10, n, err)
			}
			if n, err := view.ReadAt(buf[:len(buf)-10], 0); n != len(buf)-10 || err != nil {
				t.Fatalf("volume %s: reading its first %d bytes: %d, %v", v.Name, len(buf)-10, n, err)
			}
		}
		for _, spans := range [][]span{parts, vols} {
			sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
			for i := 1; i < len(spans); i++ {
				if spans[i].start < spans[i-1].end {
					t.Fatalf("overlapping: %v and %v", spans[i-1], spans[i])
				}
			}
		}
	})
}

// FuzzIdentify reads file-system signatures from fuzzed bytes placed at
// a fuzzed offset of a volume's first 68 KiB: the seeds are each
// signature the probes know, where it lies.
func FuzzIdentify(f *testing.F) {
	sig := func(parts ...any) []byte {
		var b []byte
		for i := 0; i < len(parts); i += 2 {
			at, v := parts[i].(int), parts[i+1]
			s := []byte(fmt.Sprint(v))
			if bs, ok := v.([]byte); ok {
				s = bs
			}
			b = append(b, make([]byte, max(0, at+len(s)-len(b)))...)
			copy(b[at:], s)
		}
		return b
	}
	f.Add(uint32(1024), sig(56, []byte{0x53, 0xef}, 92, []byte{4}, 96, []byte{0x40}, 120, "label"))
	f.Add(uint32(0), sig(0, "XFSB", 108, "label"))
	f.Add(uint32(64<<10), sig(64, "_BHRfS_M", 299, "label"))
	f.Add(uint32(0), sig(1024+28, "label", 4086, "SWAPSPACE2"))
	f.Add(uint32(0), sig(3, "NTFS    ", 72, "serial!!"))
	f.Add(uint32(0), sig(66, []byte{0x29}, 71, "LABEL      FAT32   ", 510, []byte{0x55, 0xaa}))
	f.Add(uint32(0), sig(38, []byte{0x29}, 43, "NO NAME    FAT16   ", 510, []byte{0x55, 0xaa}))
	f.Add(uint32(0), sig(0, "LUKS\xba\xbe", 168, "uuid"))
	f.Add(uint32(512), sig(0, "LABELONE", 20, []byte{32}, 24, "LVM2 001", 32, "0123456789abcdef0123456789abcdef"))
	f.Fuzz(func(t *testing.T, off uint32, b []byte) {
		buf := make([]byte, 68<<10)
		copy(buf[int(off%uint32(len(buf))):], b)
		d := bytesDisk{bytes.NewReader(buf)}
		for _, size := range []int64{d.Size(), 4096, 100} {
			if _, err := guest.Identify(d, 0, size); err != nil {
				t.Fatalf("a disk in memory failed with an I/O error: %v", err)
			}
		}
	})
}
