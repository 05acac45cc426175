package qcow2

import (
	"bytes"
	"encoding/binary"
	"io"
)

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
	return "not a qcow2 image, nor any other format qcowmount knows; if it is a raw disk image, use it as it is (losetup -r --show -f FILE)"
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
