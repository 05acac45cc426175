package guest

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"unicode/utf16"
)

// MBR layout.
const (
	mbrEntries     = 446 // offset of the four 16-byte entries
	mbrSignature   = 0xaa55
	mbrTypeGPT     = 0xee
	maxLogicals    = 128 // EBRs followed before a chain is taken as a loop
	gptSignature   = "EFI PART"
	gptMinHeader   = 92
	gptMinEntry    = 128
	gptMaxEntries  = 1024    // parted and fdisk write 128; the spec allows more
	gptMaxTableLen = 1 << 20 // bytes of entries read at the most
)

// mbrTypes names the MBR partition types people meet.
var mbrTypes = map[byte]string{
	0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16", 0x07: "HPFS/NTFS/exFAT",
	0x0b: "W95 FAT32", 0x0c: "W95 FAT32 (LBA)", 0x0e: "W95 FAT16 (LBA)", 0x0f: "W95 Extended (LBA)",
	0x11: "Hidden FAT12", 0x27: "Hidden NTFS WinRE", 0x82: "Linux swap", 0x83: "Linux",
	0x85: "Linux extended", 0x8e: "Linux LVM", 0xa5: "FreeBSD", 0xa6: "OpenBSD", 0xaf: "HFS / HFS+",
	0xef: "EFI (FAT-12/16/32)", 0xfd: "Linux raid autodetect",
}

// gptTypes names the GPT partition type GUIDs people meet.
var gptTypes = map[string]string{
	"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
	"21686148-6449-6E6F-744E-656564454649": "BIOS boot",
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
	"B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM-64)",
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
	"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
	"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
	"E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
	"A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
	"CA7D7CCB-63ED-4C53-861C-1742536059CC": "Linux LUKS",
	"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
	"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
	"DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery environment",
	"48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS/HFS+",
	"516E7CB4-6ECF-11D6-8FF8-00022D09712B": "FreeBSD",
}

// readTable reads the partition table: GPT behind a protective MBR (the
// backup GPT where the primary is damaged, as fdisk does), or MBR.
func (l *Layout) readTable(d Disk) error {
	mbr := make([]byte, sectorSize)
	if err := readAt(d, mbr, 0); err != nil {
		if isDamage(err) {
			return nil // too small for a table
		}
		return err
	}
	if binary.LittleEndian.Uint16(mbr[510:]) != mbrSignature {
		return nil
	}
	entries := make([][]byte, 4)
	for i := range entries {
		entries[i] = mbr[mbrEntries+16*i : mbrEntries+16*i+16]
		// A boot sector of a file system also ends in 55 aa; its bytes
		// here are code, whose status bytes are rarely 0 or 0x80.
		if s := entries[i][0]; s != 0 && s != 0x80 {
			return nil
		}
	}
	if slices.ContainsFunc(entries, func(e []byte) bool { return e[4] == mbrTypeGPT }) {
		return l.readGPT(d)
	}
	l.Table = "mbr"
	if err := l.readMBR(d, entries); err != nil {
		return err
	}
	// Logical partitions were found while reading their extended one.
	slices.SortFunc(l.Partitions, func(a, b Partition) int { return a.Number - b.Number })
	return nil
}

func (l *Layout) readMBR(d Disk, entries [][]byte) error {
	le := binary.LittleEndian
	// Logical partitions are numbered from 5 on across every extended
	// partition, as the kernel numbers them.
	nextLogical := 5
	for i, e := range entries {
		typ, start, n := e[4], int64(le.Uint32(e[8:])), int64(le.Uint32(e[12:]))
		if typ == 0 || n == 0 {
			continue
		}
		if isExtended(typ) {
			if err := l.readLogicals(d, start*sectorSize, n*sectorSize, &nextLogical); err != nil {
				return err
			}
			continue
		}
		l.add(d, Partition{Number: i + 1, Start: start * sectorSize, Size: n * sectorSize, Type: mbrTypeName(typ)})
	}
	return nil
}

func isExtended(typ byte) bool { return typ == 0x05 || typ == 0x0f || typ == 0x85 }

// readLogicals follows the chain of extended boot records in the extended
// partition [extStart, extStart+extSize). Each record's first entry is a
// logical partition, which takes the number *next; as in the kernel, an
// empty entry takes none.
func (l *Layout) readLogicals(d Disk, extStart, extSize int64, next *int) error {
	le := binary.LittleEndian
	ebr := make([]byte, sectorSize)
	seen := map[int64]bool{}
	at := extStart
	for records := 0; ; records++ {
		if records >= maxLogicals || seen[at] {
			l.problem("extended partition: the chain of logical partitions loops or runs past %d entries; the rest is left out", maxLogicals)
			return nil
		}
		seen[at] = true
		if at < extStart || at >= extStart+extSize {
			l.problem("extended partition: a logical partition's record at byte %d lies outside it; the rest is left out", at)
			return nil
		}
		if err := readAt(d, ebr, at); err != nil {
			if isDamage(err) {
				l.problem("extended partition: the record at byte %d lies past the end of the disk", at)
				return nil
			}
			return err
		}
		if le.Uint16(ebr[510:]) != mbrSignature {
			l.problem("extended partition: the record at byte %d has no 55 aa signature; the rest is left out", at)
			return nil
		}
		e, link := ebr[mbrEntries:mbrEntries+16], ebr[mbrEntries+16:mbrEntries+32]
		if typ, n := e[4], int64(le.Uint32(e[12:])); n != 0 && !isExtended(typ) {
			number := *next
			*next++
			start := at + int64(le.Uint32(e[8:]))*sectorSize
			p := Partition{Number: number, Start: start, Size: n * sectorSize, Type: mbrTypeName(typ)}
			if start+p.Size > extStart+extSize {
				l.problem("partition %d [%d, %d) runs out of its extended partition: left out", number, start, start+p.Size)
			} else {
				l.add(d, p)
			}
		}
		if link[4] == 0 || le.Uint32(link[12:]) == 0 {
			return nil
		}
		at = extStart + int64(le.Uint32(link[8:]))*sectorSize
	}
}

func mbrTypeName(t byte) string {
	if name, ok := mbrTypes[t]; ok {
		return name
	}
	return fmt.Sprintf("type %#02x", t)
}

// readGPT reads the primary GPT, or the backup where the primary is
// damaged, at 512- or 4096-byte sectors.
func (l *Layout) readGPT(d Disk) error {
	var damaged []string
	for _, ss := range []int64{512, 4096} {
		for _, backup := range []bool{false, true} {
			lba := int64(1)
			if backup {
				lba = d.Size()/ss - 1
			}
			parts, problems, err := readGPTAt(d, ss, lba)
			if err == nil {
				l.Table = "gpt"
				if backup {
					l.problem("the primary GPT is damaged (%s); read the backup at the end of the disk", strings.Join(damaged, "; "))
				}
				l.Problems = append(l.Problems, problems...)
				for _, p := range parts {
					l.add(d, p)
				}
				return nil
			}
			if !isDamage(err) {
				return err
			}
			if ss == 512 {
				damaged = append(damaged, err.Error())
			}
		}
	}
	l.problem("protective MBR but no valid GPT: %s", strings.Join(damaged, "; "))
	return nil
}

// readGPTAt reads the GPT header at sector lba and its entries. Entries
// whose range is impossible are left out with a problem. LBAs stay
// unsigned until they are known to lie on the disk, so no product wraps.
func readGPTAt(d Disk, ss, lba int64) (parts []Partition, problems []string, err error) {
	le := binary.LittleEndian
	h := make([]byte, ss)
	if err := readAt(d, h, lba*ss); err != nil {
		return nil, nil, err
	}
	if string(h[:8]) != gptSignature {
		return nil, nil, damage("no GPT signature at sector %d", lba)
	}
	size := le.Uint32(h[12:])
	if size < gptMinHeader || int64(size) > ss {
		return nil, nil, damage("GPT header at sector %d: header size %d", lba, size)
	}
	want := le.Uint32(h[16:])
	hdr := slices.Clone(h[:size])
	clear(hdr[16:20])
	if crc32.ChecksumIEEE(hdr) != want {
		return nil, nil, damage("GPT header at sector %d: CRC mismatch", lba)
	}
	sectors := uint64(d.Size() / ss)
	firstUsable, lastUsable := le.Uint64(h[40:]), le.Uint64(h[48:])
	tableLBA, count, entrySize := le.Uint64(h[72:]), int64(le.Uint32(h[80:])), int64(le.Uint32(h[84:]))
	if entrySize < gptMinEntry || entrySize%8 != 0 || count > gptMaxEntries || count*entrySize > gptMaxTableLen {
		return nil, nil, damage("GPT header at sector %d: %d entries of %d bytes", lba, count, entrySize)
	}
	if tableLBA >= sectors {
		return nil, nil, damage("GPT header at sector %d: entries at sector %d lie past the disk", lba, tableLBA)
	}
	table := make([]byte, count*entrySize)
	if err := readAt(d, table, int64(tableLBA)*ss); err != nil {
		if isDamage(err) {
			return nil, nil, damage("GPT entries at sector %d run past the end of the disk", tableLBA)
		}
		return nil, nil, err
	}
	if crc32.ChecksumIEEE(table) != le.Uint32(h[88:]) {
		return nil, nil, damage("GPT entries at sector %d: CRC mismatch", tableLBA)
	}
	for i := int64(0); i < count; i++ {
		e := table[i*entrySize : (i+1)*entrySize]
		typ := guidString(e[0:16])
		if typ == "00000000-0000-0000-0000-000000000000" {
			continue
		}
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		if first < firstUsable || last > lastUsable || first > last || last >= sectors {
			problems = append(problems, fmt.Sprintf("partition %d: sectors %d to %d do not lie in the usable sectors %d to %d of the disk (%d sectors of %d bytes): left out",
				i+1, first, last, firstUsable, min(lastUsable, sectors-1), sectors, ss))
			continue
		}
		p := Partition{Number: int(i) + 1, Type: typ, Name: utf16Name(e[56:128]), Start: int64(first) * ss, Size: int64(last-first+1) * ss}
		if name, ok := gptTypes[typ]; ok {
			p.Type = name
		}
		parts = append(parts, p)
	}
	return parts, problems, nil
}

// add keeps a partition that lies inside the disk and overlaps no other;
// anything else is left out with a problem.
func (l *Layout) add(d Disk, p Partition) {
	if p.Size <= 0 || p.Start < 0 || p.Start > d.Size()-p.Size {
		l.problem("partition %d: [%d, %+d) does not lie inside the disk (%d bytes): left out", p.Number, p.Start, p.Size, d.Size())
		return
	}
	for _, q := range l.Partitions {
		if p.Start < q.Start+q.Size && q.Start < p.Start+p.Size {
			l.problem("partition %d [%d, %d) overlaps partition %d: left out", p.Number, p.Start, p.Start+p.Size, q.Number)
			return
		}
	}
	l.Partitions = append(l.Partitions, p)
}

// guidString formats a GUID as written, its first three fields little endian.
func guidString(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X", le.Uint32(b), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16])
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
