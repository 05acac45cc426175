package qcow2

import "fmt"

// What an image asks of its reader: the feature bits it sets, refused
// where this reader cannot honour them, noted where it reads with a caveat.

// checkFeatures refuses what this reader cannot read correctly and notes
// what it reads with a caveat.
func (img *Image) checkFeatures() error {
	h := &img.hdr
	if unknown := h.IncompatibleFeatures &^ knownIncompat; unknown != 0 {
		return &UnsupportedError{Feature: describeIncompat(unknown, img.ext.featureNames)}
	}
	if img.hasDataFile() && !img.ext.namesDataFile {
		return img.formatErr("incompatible_features", 72, "external data file bit is set but the image names no data file")
	}
	if h.AutoclearFeatures&AutoclearDataFileIsRaw != 0 && !img.hasDataFile() {
		return img.formatErr("autoclear_features", 88, "raw external data bit is set without an external data file")
	}
	if h.IncompatibleFeatures&IncompatCorrupt != 0 {
		img.warnings = append(img.warnings, "image is marked corrupt: QEMU allows reading it, but data may be wrong")
	}
	return nil
}

// describeIncompat names the incompatible bits in mask, using the image's
// feature-name table where it has an entry and the bit number otherwise.
func describeIncompat(mask uint64, names map[featureKey]string) string {
	s := ""
	for bit := 0; bit < 64; bit++ {
		if mask&(1<<bit) == 0 {
			continue
		}
		if s != "" {
			s += ", "
		}
		if n, ok := names[featureKey{featureIncompatible, uint8(bit)}]; ok && n != "" {
			s += fmt.Sprintf("%q (incompatible bit %d)", n, bit)
		} else {
			s += fmt.Sprintf("unknown incompatible bit %d", bit)
		}
	}
	return s
}
