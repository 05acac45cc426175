package qcow2

import (
	"bytes"
	"encoding/binary"
	"io"
)

// format is what differs, once an image is open, between the two formats
// this reader reads, qcow2 (qcow2Format) and the old qcow (qcowFormat): how
// their table entries decode.
type format interface {
	// l2Offset checks an L1 entry, found at offset at, and returns the
	// offset of the L2 table it points to; 0 for none.
	l2Offset(img *Image, entry uint64, at int64) (uint64, error)
	// clusterExtent classifies the guest bytes from off to the end of
	// their run inside off's cluster, from the L2 slice at tableOff.
	clusterExtent(img *Image, table []uint64, tableOff uint64, off int64) (extent, error)
	// compressedRange decodes a compressed cluster's descriptor: where
	// its bytes start, and how many there are at most.
	compressedRange(img *Image, desc uint64) (host uint64, length int64)
}

// qcow2Format is qcow2's: flags and checks in L1 and L2 entries (the
// classifier's rule), sector counts in compressed descriptors.
type qcow2Format struct{}

// sniffed is what a file's first bytes show it is.
type sniffed int

const (
	sniffedOther sniffed = iota
	sniffedQcow          // qcow version 1
	sniffedQcow2         // qcow2, or too short to tell: its header check says so
)

// sniff tells the format from the first bytes of a file.
func sniff(first []byte) sniffed {
	switch {
	case len(first) >= 8 && binary.BigEndian.Uint32(first) == Magic && binary.BigEndian.Uint32(first[4:]) == 1:
		return sniffedQcow
	case len(first) >= 4 && binary.BigEndian.Uint32(first) != Magic:
		return sniffedOther
	}
	return sniffedQcow2
}

// foreignFormat names what a file that is not a qcow image is, from its
// magic numbers, and says what to do with it instead.
func foreignFormat(first []byte, r io.ReaderAt, size int64) string {
	at := func(off int, magic string) bool {
		return len(first) >= off+len(magic) && string(first[off:off+len(magic)]) == magic
	}
	convert := "convert it with qemu-img convert -O qcow2, or serve it with qemu-nbd"
	switch {
	case at(0, "KDMV"), at(0, "# Disk DescriptorFile"):
		return "a VMware VMDK image, not qcow2: " + convert
	case at(0, "vhdxfile"):
		return "a Hyper-V VHDX image, not qcow2: " + convert
	case at(0, "conectix") || vhdFooter(r, size):
		return "a Virtual PC VHD image, not qcow2: " + convert
	case len(first) >= 68 && binary.LittleEndian.Uint32(first[64:]) == 0xbeda107f:
		return "a VirtualBox VDI image, not qcow2: " + convert
	case at(0, "LUKS\xba\xbe"):
		return "a LUKS encrypted volume, not a qcow2 image: open it with cryptsetup"
	case at(0x8001, "CD001"):
		return "an ISO 9660 image, not a disk image: mount it with mount -o loop,ro"
	case at(0, "\x1f\x8b"), at(0, "\xfd7zXZ\x00"), at(0, "\x28\xb5\x2f\xfd"), at(0, "BZh"), at(0, "PK\x03\x04"), at(257, "ustar"):
		return "a compressed file or archive: unpack the image in it first"
	}
	return "not a qcow2 image, nor any other format qcowmount knows; if it is a raw disk image, it needs no reader: attach it read-only as it is (a loop device)"
}

// vhdFooter reports whether a VHD footer ends the file.
func vhdFooter(r io.ReaderAt, size int64) bool {
	if size < 512 {
		return false
	}
	var b [8]byte
	_, err := r.ReadAt(b[:], size-512)
	return err == nil && bytes.Equal(b[:], []byte("conectix"))
}

// notQcow is the error for a file of at least 4 bytes without qcow's magic.
func notQcow(path string, first []byte, r io.ReaderAt, size int64) error {
	return formatErr(path, "magic", 0, "%#08x is not QFI\\xfb: %s", binary.BigEndian.Uint32(first), foreignFormat(first, r, size))
}
