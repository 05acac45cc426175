package guest

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// LVM2 on-disk layout (all little endian): a label in one of the first
// four sectors, "LABELONE"; after it the PV header (UUID, size, lists of
// data and metadata areas); each metadata area starts with an mda header
// whose raw locations point at the current metadata text, written
// circularly in the rest of the area.
const (
	labelID          = "LABELONE"
	labelType        = "LVM2 001"
	labelScanSectors = 4
	mdaMagic         = " LVM2 x[5A%r0N*>"
	mdaHeaderLen     = 512
	maxAreas         = 16      // disk_locn entries read from a PV header
	maxMetadataLen   = 8 << 20 // of VG metadata text (LVM's own default area is 1 MiB)
	maxSegments      = 4096    // of one logical volume
	maxVolumes       = 4096    // logical volumes read from one disk
	maxLVMName       = 127     // bytes in a VG or LV name, as LVM's NAME_LEN
)

// pvArea is where a physical volume lies on the disk.
type pvArea struct {
	start, size int64
	where       string
}

// A Volume is an LVM2 logical volume. Linear volumes (one or more linear
// segments, on physical volumes of this disk) can be read; others are
// listed with the reason they cannot.
type Volume struct {
	VG       string    `json:"vg"`
	Name     string    `json:"name"`
	Size     int64     `json:"size"`
	Segments []Segment `json:"segments,omitempty"` // where its bytes lie on the disk, in order
	// Unreadable says why the volume is not exposed (thin, raid, ...);
	// empty for a linear volume.
	Unreadable string     `json:"unreadable,omitempty"`
	FS         FileSystem `json:"file-system"`
}

// Segment is a run of a volume's bytes on the disk.
type Segment struct {
	Start int64 `json:"start"` // on the disk
	Size  int64 `json:"size"`
}

// FileName is the name the volume's file takes, as device-mapper names it
// (dashes in names doubled).
func (v Volume) FileName() string {
	esc := func(s string) string { return strings.ReplaceAll(s, "-", "--") }
	return esc(v.VG) + "-" + esc(v.Name) + ".raw"
}

// pv is a physical volume as its label describes it.
type pv struct {
	area   pvArea
	uuid   string
	mdas   []int64 // metadata area offsets, from the PV's start
	mdaLen []int64
}

func (l *Layout) readLVM(d Disk, areas []pvArea) error {
	var pvs []pv
	for _, a := range areas {
		p, err := readPVLabel(d, a)
		if err != nil {
			if !isDamage(err) {
				return err
			}
			l.problem("LVM physical volume on %s: %v", a.where, err)
			continue
		}
		pvs = append(pvs, p)
	}
	// Each VG's metadata is on its PVs; read it once per VG, from the
	// first PV whose metadata parses.
	seen := map[string]bool{}   // volume group names
	seenOn := map[string]bool{} // PV UUIDs of the volume groups read
	for _, p := range pvs {
		text, err := readMetadata(d, p)
		if err != nil {
			if !isDamage(err) {
				return err
			}
			l.problem("LVM metadata on %s: %v", p.area.where, err)
			continue
		}
		if text == "" {
			continue // a PV without metadata areas: its VG's other PVs hold it
		}
		vg, err := parseMetadata(text)
		if err != nil {
			l.problem("LVM metadata on %s: %v", p.area.where, err)
			continue
		}
		if seen[vg.name] {
			if !seenOn[p.uuid] {
				l.problem("LVM metadata on %s: a second volume group named %s: left out", p.area.where, vg.name)
			}
			continue
		}
		seen[vg.name] = true
		for _, id := range vg.pvIDs {
			seenOn[lvmUUID(id)] = true
		}
		l.addVolumes(vg, pvs)
	}
	l.refuseClashes()
	// File systems last: a crafted disk's thousands of refused volumes
	// cost no reads.
	for i := range l.Volumes {
		if v := &l.Volumes[i]; v.Unreadable == "" {
			fs, err := Identify(v.View(d), 0, v.Size)
			if err != nil {
				return err
			}
			v.FS = fs
		}
	}
	return nil
}

// refuseClashes leaves out volumes that would give two files one name or
// the same bytes twice: the later of two volumes whose file names are
// equal, and every volume whose extents overlap another's or its own
// (LVM never makes either; a crafted disk could make thousands of views
// of the same extents and multiply the work of reading them all).
func (l *Layout) refuseClashes() {
	names := map[string]string{}
	type owned struct {
		Segment
		volume int
	}
	var segs []owned
	for i := range l.Volumes {
		v := &l.Volumes[i]
		if v.Unreadable != "" {
			continue
		}
		if other, taken := names[v.FileName()]; taken {
			l.refuse(v, fmt.Sprintf("its file name %s is taken by volume %s", v.FileName(), other))
			continue
		}
		names[v.FileName()] = v.VG + "/" + v.Name
		for _, s := range v.Segments {
			segs = append(segs, owned{s, i})
		}
	}
	// One sweep in order of start: a segment that starts before the
	// furthest end so far overlaps the segment that reached it.
	sort.Slice(segs, func(i, j int) bool { return segs[i].Start < segs[j].Start })
	overlaps := map[int]int{} // volume -> a volume it overlaps
	reach, reachedBy := int64(-1), -1
	for _, s := range segs {
		if s.Start < reach {
			overlaps[s.volume], overlaps[reachedBy] = reachedBy, s.volume
		}
		if end := s.Start + s.Size; end > reach {
			reach, reachedBy = end, s.volume
		}
	}
	for i := range l.Volumes {
		if other, ok := overlaps[i]; ok {
			o := l.Volumes[other]
			l.refuse(&l.Volumes[i], fmt.Sprintf("its extents overlap those of volume %s/%s", o.VG, o.Name))
		}
	}
}

// refuse leaves out a volume that was readable, saying why.
func (l *Layout) refuse(v *Volume, why string) {
	v.Unreadable, v.Segments = why, nil
	l.problem("LVM volume %s/%s is not exposed: %s", v.VG, v.Name, why)
}

func readPVLabel(d Disk, a pvArea) (pv, error) {
	le := binary.LittleEndian
	b := make([]byte, labelScanSectors*sectorSize)
	if err := readAt(d, b, a.start); err != nil {
		return pv{}, err
	}
	for s := 0; s < labelScanSectors; s++ {
		h := b[s*sectorSize : (s+1)*sectorSize]
		if string(h[:8]) != labelID || string(h[24:32]) != labelType {
			continue
		}
		off := int(le.Uint32(h[20:]))
		if off < 32 || off > sectorSize-40 {
			return pv{}, damage("label: PV header offset %d", off)
		}
		pvh := h[off:]
		p := pv{area: a, uuid: lvmUUID(string(pvh[:32]))}
		// Data areas, then metadata areas, each list ending with a zero entry.
		pos, list := 40, 0
		for n := 0; list < 2; n++ {
			if n > 2*maxAreas || pos+16 > len(pvh) {
				return pv{}, damage("PV header: area lists run past the label sector")
			}
			off, size := int64(le.Uint64(pvh[pos:])), int64(le.Uint64(pvh[pos+8:]))
			pos += 16
			switch {
			case off == 0 && size == 0:
				list++
			case list == 1:
				if off < 0 || size < mdaHeaderLen || off > a.size-size {
					return pv{}, damage("metadata area [%d, %+d) lies outside the PV (%d bytes)", off, size, a.size)
				}
				p.mdas, p.mdaLen = append(p.mdas, off), append(p.mdaLen, size)
			}
		}
		return p, nil
	}
	return pv{}, damage("no LVM2 label in the first %d sectors", labelScanSectors)
}

// readMetadata returns the current metadata text of the PV's first
// metadata area, or "" when it has none.
func readMetadata(d Disk, p pv) (string, error) {
	le := binary.LittleEndian
	if len(p.mdas) == 0 {
		return "", nil
	}
	start, size := p.area.start+p.mdas[0], p.mdaLen[0]
	h := make([]byte, mdaHeaderLen)
	if err := readAt(d, h, start); err != nil {
		return "", err
	}
	if string(h[4:20]) != mdaMagic {
		return "", damage("metadata area at byte %d: bad magic", start)
	}
	off, n := int64(le.Uint64(h[40:])), int64(le.Uint64(h[48:]))
	if off == 0 && n == 0 {
		return "", damage("metadata area at byte %d holds no metadata", start)
	}
	textLen := size - mdaHeaderLen // the circular buffer after the header
	if n <= 0 || n > maxMetadataLen || n > textLen || off < mdaHeaderLen || off >= size {
		return "", damage("metadata area at byte %d: metadata at %d, %d bytes, does not fit the area (%d bytes)", start, off, n, size)
	}
	text := make([]byte, n)
	first := min(n, size-off) // up to the end of the area, then from just after the header
	if err := readAt(d, text[:first], start+off); err != nil {
		return "", err
	}
	if first < n {
		if err := readAt(d, text[first:], start+mdaHeaderLen); err != nil {
			return "", err
		}
	}
	return strings.TrimRight(string(text), "\x00"), nil
}

func (l *Layout) addVolumes(vg *vgMetadata, pvs []pv) {
	// Physical volumes by their name in the metadata (pv0, pv1, ...).
	onDisk := map[string]pv{}
	for name, id := range vg.pvIDs {
		for _, p := range pvs {
			if p.uuid == lvmUUID(id) {
				onDisk[name] = p
			}
		}
	}
	extent := vg.extentSectors * sectorSize
	for _, lv := range vg.lvs {
		if len(l.Volumes) == maxVolumes {
			l.problem("volume group %s: more than %d logical volumes on the disk; the rest are left out", vg.name, maxVolumes)
			return
		}
		v := Volume{VG: vg.name, Name: lv.name, Unreadable: lv.unreadable}
		for _, seg := range lv.segments {
			if v.Unreadable != "" {
				break
			}
			p, ok := onDisk[seg.pv]
			if !ok {
				v.Unreadable = fmt.Sprintf("segment on %s, which is not on this disk", seg.pv)
				break
			}
			// Every count is checked against the PV's size before it
			// is multiplied, so nothing here can overflow.
			fits := func(n int64) bool { return n >= 0 && n <= p.area.size/extent }
			pvStart := vg.peStart[seg.pv]
			if pvStart > p.area.size/sectorSize || !fits(seg.pvExtent) || !fits(seg.extents) || seg.extents == 0 {
				v.Unreadable = fmt.Sprintf("a segment on %s lies outside it", seg.pv)
				break
			}
			inPV := pvStart*sectorSize + seg.pvExtent*extent
			s := Segment{Start: p.area.start + inPV, Size: seg.extents * extent}
			if inPV > p.area.size-s.Size {
				v.Unreadable = fmt.Sprintf("segment [%d, %+d) lies outside its physical volume", s.Start, s.Size)
				break
			}
			if v.Size > math.MaxInt64-s.Size {
				v.Unreadable = "segments add up to more than 2^63 bytes"
				break
			}
			v.Segments = append(v.Segments, s)
			v.Size += s.Size
		}
		if v.Unreadable == "" && len(v.Segments) == 0 {
			v.Unreadable = "no segments"
		}
		if v.Unreadable != "" {
			v.Segments, v.Size = nil, min(lv.extents, math.MaxInt64/extent)*extent
			l.problem("LVM volume %s/%s is not exposed: %s", v.VG, v.Name, v.Unreadable)
		}
		l.Volumes = append(l.Volumes, v)
	}
}

// badLVMName says why name could not be an LVM volume group or logical
// volume name, or "" when it could. Names of LVM's own characters (the
// parser takes no others as a section name) that do not start with a
// dash make distinct device-mapper names (VG-LV, dashes doubled), and so
// distinct file names.
func badLVMName(name string) string {
	switch {
	case len(name) > maxLVMName:
		return fmt.Sprintf("%d bytes long, more than LVM's %d", len(name), maxLVMName)
	case name == "." || name == "..":
		return "not a name LVM allows"
	case strings.HasPrefix(name, "-"):
		return "starts with a dash, which LVM does not allow"
	}
	return ""
}

// guestText is text from the disk as it may be shown: as it is when it
// is a plain name, else quoted with Go's escapes, so that no control or
// format character reaches a terminal or a log through a message.
func guestText(s string) string {
	if isIdent(s) {
		return s
	}
	return strconv.Quote(s)
}

// lvmUUID is an LVM UUID without its dashes: the label stores 32
// characters, the metadata text the same with dashes.
func lvmUUID(s string) string { return strings.ReplaceAll(s, "-", "") }

// vgMetadata is what a volume group's metadata says about reading it.
type vgMetadata struct {
	name          string
	extentSectors int64
	pvIDs         map[string]string // pv0 -> its UUID
	peStart       map[string]int64  // pv0 -> where its extents start, in sectors
	lvs           []lvMetadata
}

type lvMetadata struct {
	name       string
	extents    int64 // in all its segments, of any type
	segments   []segMetadata
	unreadable string
}

type segMetadata struct {
	startExtent, extents int64
	pv                   string
	pvExtent             int64
}

// parseMetadata reads a VG's metadata text: the VG section and, in it,
// physical_volumes and logical_volumes.
func parseMetadata(text string) (*vgMetadata, error) {
	root, err := parseConfig(text)
	if err != nil {
		return nil, err
	}
	var vgSec *section
	for _, s := range root.sections {
		if _, ok := s.values["extent_size"]; ok {
			vgSec = s
			break
		}
	}
	if vgSec == nil {
		return nil, fmt.Errorf("no volume group section")
	}
	if why := badLVMName(vgSec.name); why != "" {
		return nil, fmt.Errorf("volume group name %s: %s", vgSec.name, why)
	}
	vg := &vgMetadata{name: vgSec.name, pvIDs: map[string]string{}, peStart: map[string]int64{}}
	if vg.extentSectors = vgSec.int("extent_size"); vg.extentSectors <= 0 || vg.extentSectors > 1<<32 {
		return nil, fmt.Errorf("volume group %s: extent_size %d", vg.name, vg.extentSectors)
	}
	if pvs := vgSec.child("physical_volumes"); pvs != nil {
		for _, p := range pvs.sections {
			vg.pvIDs[p.name] = p.str("id")
			if vg.peStart[p.name] = p.int("pe_start"); vg.peStart[p.name] < 0 {
				return nil, fmt.Errorf("volume group %s: %s: pe_start %d", vg.name, p.name, vg.peStart[p.name])
			}
		}
	}
	lvs := vgSec.child("logical_volumes")
	if lvs == nil {
		return vg, nil
	}
	for _, s := range lvs.sections {
		lv := lvMetadata{name: s.name}
		if !s.hasFlag("status", "VISIBLE") {
			continue // internal volumes: thin pools' data, raid images, ...
		}
		if why := badLVMName(s.name); why != "" {
			lv.unreadable = "name: " + why
		}
		var segs []*section
		for _, c := range s.sections {
			if strings.HasPrefix(c.name, "segment") {
				segs = append(segs, c)
			}
		}
		if len(segs) > maxSegments {
			lv.unreadable = fmt.Sprintf("%d segments", len(segs))
		}
		sort.Slice(segs, func(i, j int) bool { return segs[i].int("start_extent") < segs[j].int("start_extent") })
		for _, c := range segs {
			if n := c.int("extent_count"); n > 0 && lv.extents <= math.MaxInt64-n {
				lv.extents += n
			}
		}
		next := int64(0)
		for _, c := range segs {
			if lv.unreadable != "" {
				break
			}
			typ := c.str("type")
			stripes := c.list("stripes")
			switch {
			case typ != "striped":
				lv.unreadable = fmt.Sprintf("%s volume", guestText(typ))
			case c.int("stripe_count") != 1 || len(stripes) != 2:
				lv.unreadable = fmt.Sprintf("striped over %d physical volumes", c.int("stripe_count"))
			case c.int("start_extent") != next || c.int("extent_count") <= 0:
				lv.unreadable = "segments leave a gap or overlap"
			default:
				pvExtent, _ := stripes[1].(int64)
				name, _ := stripes[0].(string)
				lv.segments = append(lv.segments, segMetadata{c.int("start_extent"), c.int("extent_count"), name, pvExtent})
				next += c.int("extent_count")
			}
		}
		vg.lvs = append(vg.lvs, lv)
	}
	return vg, nil
}
