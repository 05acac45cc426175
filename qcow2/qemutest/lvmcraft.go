package qemutest

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// CraftedLV is a logical volume of CraftLVM's volume group: Extents
// extents of 1 MiB from extent At of the physical volume, of segment type
// Type ("striped" with one stripe, linear, when empty).
type CraftedLV struct {
	Name        string
	At, Extents int64
	Type        string
}

// CraftLVM returns a disk of size bytes (a multiple of 1 MiB, at least
// 2 MiB) that is, whole, one LVM2 physical volume of volume group vg
// holding lvs, written as the LVM tools lay it out: label in sector 1,
// one metadata area from 4 KiB, extents of 1 MiB from 1 MiB. Nothing is
// checked: it makes the disks LVM would refuse to make.
func CraftLVM(size int64, vg string, lvs []CraftedLV) []byte {
	const pvUUID = "PV0abcdefghijklmnopqrstuvwxyz012"
	const mdaStart, mdaSize = 4096, 1<<20 - 4096
	var text strings.Builder
	fmt.Fprintf(&text, "%s {\nid = \"VG0abc-defg-hijk-lmno-pqrs-tuvw-xyz012\"\nseqno = 1\nformat = \"lvm2\"\nstatus = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\nextent_size = 2048\n", vg)
	fmt.Fprintf(&text, "physical_volumes {\npv0 {\nid = %q\ndevice = \"/dev/loop0\"\npe_start = 2048\npe_count = %d\n}\n}\n", dashed(pvUUID), size>>20-1)
	text.WriteString("logical_volumes {\n")
	for _, lv := range lvs {
		typ := lv.Type
		if typ == "" {
			typ = "striped"
		}
		fmt.Fprintf(&text, "%s {\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nsegment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = %d\ntype = \"%s\"\nstripe_count = 1\nstripes = [\"pv0\", %d]\n}\n}\n",
			lv.Name, lv.Extents, typ, lv.At)
	}
	text.WriteString("}\n}\ncontents = \"Text Format Volume Group\"\nversion = 1\n")

	le := binary.LittleEndian
	disk := make([]byte, size)
	label := disk[512:1024]
	copy(label, "LABELONE")
	le.PutUint64(label[8:], 1)
	le.PutUint32(label[20:], 32)
	copy(label[24:], "LVM2 001")
	pvh := label[32:]
	copy(pvh, pvUUID)
	le.PutUint64(pvh[32:], uint64(size))
	// Data areas: one from 1 MiB to the end; then metadata areas: one.
	le.PutUint64(pvh[40:], 1<<20)
	le.PutUint64(pvh[48:], uint64(size-1<<20))
	le.PutUint64(pvh[72:], mdaStart)
	le.PutUint64(pvh[80:], mdaSize)
	mda := disk[mdaStart:]
	copy(mda[4:], " LVM2 x[5A%r0N*>")
	le.PutUint32(mda[20:], 1)
	le.PutUint64(mda[24:], mdaStart)
	le.PutUint64(mda[32:], mdaSize)
	le.PutUint64(mda[40:], 512)
	le.PutUint64(mda[48:], uint64(text.Len()))
	copy(mda[512:], text.String())
	return disk
}

// dashed writes a 32-character LVM UUID as the metadata text does.
func dashed(u string) string {
	return u[:6] + "-" + u[6:10] + "-" + u[10:14] + "-" + u[14:18] + "-" + u[18:22] + "-" + u[22:26] + "-" + u[26:]
}
