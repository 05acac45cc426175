package qcow2

import (
	"encoding/binary"
)

// Header extension types.
const (
	extEnd            = 0x00000000
	extBackingFormat  = 0xe2792aca
	extFeatureTable   = 0x6803f857
	extBitmaps        = 0x23852875
	extFullDiskCrypto = 0x0537be77
	extDataFile       = 0x44415441
)

// Feature types in the feature-name table.
const (
	featureIncompatible = 0
	featureCompatible   = 1
	featureAutoclear    = 2
)

type featureKey struct {
	kind uint8
	bit  uint8
}

// extensions holds what the reader uses from the header extensions.
type extensions struct {
	backingFormat string
	dataFile      string
	namesDataFile bool
	featureNames  map[featureKey]string
	hasFDE        bool   // full disk encryption: where the LUKS header lies
	fdeOffset     uint64 // in the image file
	fdeLength     uint64
	// The bitmaps extension, for check: how many, and the directory.
	hasBitmaps                  bool
	nbBitmaps                   uint32
	bitmapDirSize, bitmapDirOff uint64
	// Extensions of types nobody defined, for check (at most maxUnknownExtensions).
	unknown []unknownExtension
}

// unknownExtension is a header extension of a type the spec does not define.
type unknownExtension struct {
	typ    uint32
	at     int64
	length uint64
}

// maxUnknownExtensions bounds what a header area full of junk costs.
const maxUnknownExtensions = 64

// bitmapsExtensionBytes is the length of the bitmaps extension's body.
const bitmapsExtensionBytes = 24

// maxBackingFormatLen mirrors QEMU's 16-byte buffer for the format name.
const maxBackingFormatLen = 15

// parseExtensions walks the extensions in first[start:end] (end is the
// backing file name's offset, or the end of the first cluster).
func parseExtensions(path string, first []byte, start, end uint64) (*extensions, error) {
	ext := &extensions{featureNames: map[featureKey]string{}}
	be := binary.BigEndian
	if end > uint64(len(first)) {
		end = uint64(len(first))
	}
	off := start
	for off < end {
		if end-off < 8 {
			return nil, formatErr(path, "header extension", int64(off), "only %d bytes left for an 8-byte extension header", end-off)
		}
		typ := be.Uint32(first[off:])
		length := uint64(be.Uint32(first[off+4:]))
		data := off + 8
		if length > end-data {
			return nil, formatErr(path, "header extension", int64(off), "type %#x has length %d, running past the header area (ends at %#x)", typ, length, end)
		}
		body := first[data : data+length]
		switch typ {
		case extEnd:
			return ext, nil
		case extBackingFormat:
			if length > maxBackingFormatLen {
				return nil, formatErr(path, "backing format extension", int64(off), "length %d is too long (at most %d)", length, maxBackingFormatLen)
			}
			ext.backingFormat = string(body)
		case extFeatureTable:
			for i := uint64(0); i+48 <= length; i += 48 {
				name := body[i+2 : i+48]
				n := 0
				for n < len(name) && name[n] != 0 {
					n++
				}
				ext.featureNames[featureKey{body[i], body[i+1]}] = string(name[:n])
			}
		case extFullDiskCrypto:
			if length != fdeExtensionBytes {
				return nil, formatErr(path, "full disk encryption extension", int64(off), "length %d, not %d", length, fdeExtensionBytes)
			}
			ext.hasFDE = true
			ext.fdeOffset, ext.fdeLength = be.Uint64(body), be.Uint64(body[8:])
		case extDataFile:
			ext.dataFile = string(body)
			ext.namesDataFile = true
		case extBitmaps:
			// Reading ignores bitmaps; check counts their clusters.
			if length >= bitmapsExtensionBytes {
				ext.hasBitmaps = true
				ext.nbBitmaps = be.Uint32(body)
				ext.bitmapDirSize, ext.bitmapDirOff = be.Uint64(body[8:]), be.Uint64(body[16:])
			}
		default:
			if len(ext.unknown) < maxUnknownExtensions {
				ext.unknown = append(ext.unknown, unknownExtension{typ, int64(off), length})
			}
		}
		off = data + (length+7)&^7
	}
	return ext, nil
}
