package guest

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// FileSystem is what a signature says a partition (or volume, or disk)
// holds. Type uses blkid's names; Type is "" when nothing is recognised.
type FileSystem struct {
	Type  string `json:"type,omitempty"`
	Label string `json:"label,omitempty"`
	UUID  string `json:"uuid,omitempty"`
}

// probeLen is how much of a volume's start signatures need: btrfs keeps
// its superblock at 64 KiB.
const probeLen = 64<<10 + 4096

// Identify reads the signature of the file system (or volume format) in
// [start, start+size) of d.
func Identify(d Disk, start, size int64) (FileSystem, error) {
	b := make([]byte, min(probeLen, size))
	if err := readAt(d, b, start); err != nil {
		if isDamage(err) {
			return FileSystem{}, nil
		}
		return FileSystem{}, err
	}
	for _, probe := range probes {
		if fs, ok := probe(b); ok {
			return fs, nil
		}
	}
	return FileSystem{}, nil
}

// at returns b[off:off+n], or nil where b is too short.
func at(b []byte, off, n int) []byte {
	if off < 0 || n < 0 || off+n > len(b) {
		return nil
	}
	return b[off : off+n]
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(string(b), " ")
}

func uuidString(b []byte) string {
	if len(b) != 16 {
		return ""
	}
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

var probes = []func(b []byte) (FileSystem, bool){
	probeLUKS, probeLVM, probeXFS, probeExt, probeBtrfs, probeSwap, probeNTFS, probeFAT,
}

func probeExt(b []byte) (FileSystem, bool) {
	sb := at(b, 1024, 1024)
	if sb == nil || binary.LittleEndian.Uint16(sb[56:]) != 0xef53 {
		return FileSystem{}, false
	}
	le := binary.LittleEndian
	compat, incompat, roCompat := le.Uint32(sb[92:]), le.Uint32(sb[96:]), le.Uint32(sb[100:])
	typ := "ext2"
	switch {
	case incompat&^0x6 != 0 || roCompat&^0x7 != 0: // extents, 64bit, flex_bg, ... beyond ext3's
		typ = "ext4"
	case compat&0x4 != 0: // has_journal
		typ = "ext3"
	}
	return FileSystem{Type: typ, Label: cstring(sb[120:136]), UUID: uuidString(sb[104:120])}, true
}

func probeXFS(b []byte) (FileSystem, bool) {
	if string(at(b, 0, 4)) != "XFSB" {
		return FileSystem{}, false
	}
	return FileSystem{Type: "xfs", Label: cstring(at(b, 108, 12)), UUID: uuidString(at(b, 32, 16))}, true
}

func probeBtrfs(b []byte) (FileSystem, bool) {
	sb := at(b, 64<<10, 4096)
	if sb == nil || string(sb[64:72]) != "_BHRfS_M" {
		return FileSystem{}, false
	}
	return FileSystem{Type: "btrfs", Label: cstring(sb[299 : 299+256]), UUID: uuidString(sb[32:48])}, true
}

func probeSwap(b []byte) (FileSystem, bool) {
	for _, page := range []int{4096, 8192, 16384, 65536} {
		if sig := string(at(b, page-10, 10)); sig == "SWAPSPACE2" || sig == "SWAP-SPACE" {
			return FileSystem{Type: "swap", Label: cstring(at(b, 1024+28, 16)), UUID: uuidString(at(b, 1024+12, 16))}, true
		}
	}
	return FileSystem{}, false
}

// probeNTFS reads the boot sector's serial number; the label lives in
// the MFT, which is not read.
func probeNTFS(b []byte) (FileSystem, bool) {
	if string(at(b, 3, 8)) != "NTFS    " {
		return FileSystem{}, false
	}
	return FileSystem{Type: "ntfs", UUID: fmt.Sprintf("%016X", binary.LittleEndian.Uint64(b[72:]))}, true
}

func probeFAT(b []byte) (FileSystem, bool) {
	if len(b) < 512 || binary.LittleEndian.Uint16(b[510:]) != mbrSignature {
		return FileSystem{}, false
	}
	// FAT32 keeps its extended boot record further in than FAT12/16.
	for _, f := range []struct{ typ, serial, label int }{{82, 67, 71}, {54, 39, 43}} {
		if strings.HasPrefix(string(b[f.typ:f.typ+8]), "FAT") && b[f.serial-1] == 0x29 {
			serial := binary.LittleEndian.Uint32(b[f.serial:])
			label := cstring(b[f.label : f.label+11])
			if label == "NO NAME" {
				label = ""
			}
			return FileSystem{Type: "vfat", Label: label, UUID: fmt.Sprintf("%04X-%04X", serial>>16, serial&0xffff)}, true
		}
	}
	return FileSystem{}, false
}

func probeLUKS(b []byte) (FileSystem, bool) {
	if string(at(b, 0, 6)) != "LUKS\xba\xbe" {
		return FileSystem{}, false
	}
	return FileSystem{Type: "crypto_LUKS", UUID: cstring(at(b, 168, 40))}, true
}

func probeLVM(b []byte) (FileSystem, bool) {
	for s := 0; s < labelScanSectors; s++ {
		if h := at(b, s*sectorSize, sectorSize); h != nil && string(h[:8]) == labelID && string(h[24:32]) == labelType {
			if pvh := at(h, int(binary.LittleEndian.Uint32(h[20:])), 32); pvh != nil {
				return FileSystem{Type: "LVM2_member", UUID: dashedLVMUUID(lvmUUID(string(pvh)))}, true
			}
		}
	}
	return FileSystem{}, false
}

// dashedLVMUUID writes a 32-character LVM UUID as LVM and blkid show it:
// 6-4-4-4-4-4-6.
func dashedLVMUUID(s string) string {
	if len(s) != 32 {
		return s
	}
	return s[:6] + "-" + s[6:10] + "-" + s[10:14] + "-" + s[14:18] + "-" + s[18:22] + "-" + s[22:26] + "-" + s[26:]
}
