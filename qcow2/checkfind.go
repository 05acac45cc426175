package qcow2

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// What the old qcow format's check can see: there are no refcounts, so
// each cluster has one user, and the totals.

func (k *checker) checkQcow1() error {
	img, h := k.img, &k.img.hdr
	k.qcow1 = true
	k.res.TotalClusters = (int64(h.Size) + k.cs - 1) / k.cs
	// QEMU lays the L1 table out right after the header and the backing
	// file's name.
	headerEnd := uint64(qcow1HeaderLength)
	if off := h.BackingFileOffset; off != 0 {
		headerEnd = max(headerEnd, off+uint64(h.BackingFileSize))
	}
	l1Bytes := uint64(img.l1Entries) * 8
	if h.L1TableOffset <= headerEnd+8 {
		k.inc(0, h.L1TableOffset+l1Bytes, useHeader)
	} else {
		k.inc(0, headerEnd, useHeader)
		k.inc(h.L1TableOffset, l1Bytes, useL1)
	}
	l2Bytes := uint64(8) << img.l2Bits
	l2 := make([]byte, l2Bytes)
	next := uint64(0)
	err := k.entries(h.L1TableOffset, uint64(img.l1Entries), func(_, e uint64) error {
		if e == 0 {
			return nil
		}
		k.inc(e, l2Bytes, useL2)
		if err := k.readAt(l2, e); err != nil {
			return err
		}
		for i := uint64(0); i < l2Bytes; i += 8 {
			d := binary.BigEndian.Uint64(l2[i:])
			switch {
			case d == 0:
				continue
			case d&qcow1CompressedFlag != 0:
				host, n := qcowFormat{}.compressedRange(img, d)
				k.inc(host, uint64(n), useCompressed)
				k.res.CompressedClusters++
				k.res.FragmentedClusters++
			default:
				if d&uint64(k.cs-1) != 0 {
					k.problem(true, "ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", d)
				}
				k.inc(d, uint64(k.cs), useData)
				if next != 0 && d != next {
					k.res.FragmentedClusters++
				}
				next = d + uint64(k.cs)
			}
			k.res.AllocatedClusters++
		}
		return nil
	})
	if err != nil {
		return err
	}
	for p, page := range k.refs {
		for i, n := range page.count {
			if n > 1 && (page.use[i] == useData || page.use[i] == useL2) {
				k.problem(true, "ERROR cluster %d reference=%d: a qcow cluster has one user", p*refPageLen+int64(i), n)
			}
		}
	}
	k.res.ImageEndOffset = (k.highestRef + 1) * k.cs
	return nil
}

// Feature bits QEMU knows, beside the incompatible ones (which Open
// refuses when unknown).
const (
	knownCompat    = CompatLazyRefcounts
	knownAutoclear = AutoclearBitmaps | AutoclearDataFileIsRaw
)

// qemuHeaderLengths are the v3 header lengths QEMU writes: 104 before
// compression types, 112 since.
var qemuHeaderLengths = []uint32{104, 112}

// findings notes what an analyst should know beside consistency.
func (k *checker) findings() error {
	img, h := k.img, &k.img.hdr
	if h.IncompatibleFeatures&IncompatDirty != 0 {
		k.find("dirty", true, "the dirty bit is set: the image was not closed cleanly with lazy refcounts, so its refcounts may be stale (errors and leaks that qemu-img check -r all repairs)")
	}
	if h.IncompatibleFeatures&IncompatCorrupt != 0 {
		k.find("corrupt", true, "the corrupt bit is set: QEMU found the metadata inconsistent and refuses to write the image")
	}
	if img.backingName != "" {
		switch {
		case img.backingErr != nil:
			k.find("backing-file", true, "backing file %q (format %s), not opened: %v", img.backingName, orDefault(img.backingFmt, "probed"), img.backingErr)
		case img.backing != nil:
			k.find("backing-file", false, "backing file %q (format %s), opened as %s", img.backingName, orDefault(img.backingFmt, "probed"), img.backingPath)
		default:
			k.find("backing-file", false, "backing file %q (format %s), not opened", img.backingName, orDefault(img.backingFmt, "probed"))
		}
	}
	if img.hasDataFile() {
		raw := ""
		if h.AutoclearFeatures&AutoclearDataFileIsRaw != 0 {
			raw = ", raw (readable without the image)"
		}
		if img.dataErr != nil {
			k.find("data-file", true, "guest data lies in the external data file %q%s, which does not open: %v", img.ext.dataFile, raw, img.dataErr)
		} else {
			k.find("data-file", false, "guest data lies in the external data file %q%s", img.ext.dataFile, raw)
		}
	}
	switch h.CryptMethod {
	case CryptAES:
		k.find("encryption", false, "encrypted with QEMU's legacy AES-CBC (a passphrase cannot be checked, and the scheme is weak)")
	case CryptLUKS:
		k.find("encryption", false, "encrypted with LUKS (header at %#x, %d bytes)", img.ext.fdeOffset, img.ext.fdeLength)
	}
	if h.NbSnapshots > 0 {
		snaps, err := img.Snapshots()
		if err != nil {
			return err
		}
		var names []string
		for i, sn := range snaps {
			if i == 10 {
				names = append(names, "...")
				break
			}
			names = append(names, fmt.Sprintf("%s %q", sn.ID, sn.Name))
		}
		k.find("snapshots", false, "%d internal snapshots: %s", len(snaps), strings.Join(names, ", "))
	}
	if img.ext.hasBitmaps && img.ext.nbBitmaps > 0 {
		k.find("bitmaps", false, "%d persistent dirty bitmaps", img.ext.nbBitmaps)
	}
	for _, u := range img.ext.unknown {
		k.find("unknown-extension", true, "header extension of unknown type %#08x at %#x, %d bytes", u.typ, u.at, u.length)
	}
	if bits := h.CompatibleFeatures &^ knownCompat; bits != 0 {
		k.find("unknown-feature", true, "unknown compatible feature bits %#x", bits)
	}
	if bits := h.AutoclearFeatures &^ knownAutoclear; bits != 0 {
		k.find("unknown-feature", true, "unknown autoclear feature bits %#x (QEMU clears them when it writes the image)", bits)
	}
	if err := k.headerOddities(); err != nil {
		return err
	}
	return k.trailingData()
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// headerOddities notes header fields QEMU accepts but never writes.
func (k *checker) headerOddities() error {
	h := &k.img.hdr
	if h.Size%512 != 0 {
		k.find("header", true, "virtual size %d is not a multiple of 512 (QEMU writes whole sectors): the last %d bytes are not part of the disk", h.Size, h.Size%512)
	}
	if h.Version != 3 {
		return nil
	}
	if !slices.Contains(qemuHeaderLengths, h.HeaderLength) {
		k.find("header", true, "header_length %d: QEMU writes 104 or 112", h.HeaderLength)
	}
	if h.HeaderLength > 105 {
		pad := make([]byte, h.HeaderLength-105)
		if err := k.readAt(pad, 105); err != nil {
			return err
		}
		if i := nonZero(pad); i >= 0 {
			k.find("header", true, "header bytes 105..%d, which QEMU writes as zeros, hold data (the first at offset %d)", h.HeaderLength-1, 105+i)
		}
	}
	return nil
}

// trailingData notes bytes after the last cluster in use, where data can
// hide that no guest read shows.
func (k *checker) trailingData() error {
	end, size := k.res.ImageEndOffset, k.img.fileSize
	if end <= 0 || size <= end {
		return nil
	}
	buf := make([]byte, min(1<<20, size-end))
	for off := end; off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		if err := k.readAt(buf[:n], uint64(off)); err != nil {
			return err
		}
		if i := nonZero(buf[:n]); i >= 0 {
			k.find("trailing-data", true, "%d bytes lie after the last cluster in use (image end offset %d), holding data from offset %d", size-end, end, off+int64(i))
			return nil
		}
	}
	k.find("trailing-data", false, "%d bytes of zeros lie after the last cluster in use (image end offset %d)", size-end, end)
	return nil
}

// nonZero is the index of the first byte of b that is not zero, or -1.
func nonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}
