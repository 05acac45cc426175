package qcow2

import (
	"fmt"

	"github.com/qcowmount/qcowmount/qcow2/internal/hostfile"
)

// Info describes one image of a chain. The JSON keys are those of
// `qemu-img info --output=json` where the two overlap.
type Info struct {
	Filename              string `json:"filename"`
	Format                string `json:"format"`
	VirtualSize           int64  `json:"virtual-size"`
	ActualSize            int64  `json:"actual-size"`
	ClusterSize           int64  `json:"cluster-size,omitempty"`
	DirtyFlag             bool   `json:"dirty-flag"`
	Encrypted             bool   `json:"encrypted,omitempty"`
	BackingFilename       string `json:"backing-filename,omitempty"`
	FullBackingFilename   string `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string `json:"backing-filename-format,omitempty"`
	// BackingError says why the backing file did not open, for an
	// image opened with Options.AllowMissing.
	BackingError   string          `json:"backing-error,omitempty"`
	Snapshots      []SnapshotInfo  `json:"snapshots,omitempty"`
	FormatSpecific *FormatSpecific `json:"format-specific,omitempty"`
}

// FormatSpecific is qemu-img's "format-specific" object.
type FormatSpecific struct {
	Type string      `json:"type"`
	Data *Qcow2Extra `json:"data"`
}

// Qcow2Extra holds qcow2 details: qemu-img's keys first, then ours.
type Qcow2Extra struct {
	Compat          string       `json:"compat"`
	CompressionType string       `json:"compression-type"`
	LazyRefcounts   *bool        `json:"lazy-refcounts,omitempty"` // v3 only, as in qemu-img
	RefcountBits    int          `json:"refcount-bits"`
	Corrupt         *bool        `json:"corrupt,omitempty"`     // v3 only
	ExtendedL2      *bool        `json:"extended-l2,omitempty"` // v3 only
	Encrypt         *EncryptInfo `json:"encrypt,omitempty"`
	DataFile        string       `json:"data-file,omitempty"`
	DataFileRaw     bool         `json:"data-file-raw,omitempty"`

	Version              uint32   `json:"version"`
	L1Size               uint32   `json:"l1-size"`
	IncompatibleFeatures []string `json:"incompatible-features"`
	CompatibleFeatures   []string `json:"compatible-features"`
	AutoclearFeatures    []string `json:"autoclear-features"`
}

// SnapshotInfo is one internal snapshot, keyed as qemu-img does.
type SnapshotInfo struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	VMStateSize uint64 `json:"vm-state-size"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	VMClockSec  int64  `json:"vm-clock-sec"`
	VMClockNsec int64  `json:"vm-clock-nsec"`
	ICount      *int64 `json:"icount,omitempty"`
	DiskSize    uint64 `json:"disk-size"`
}

// Feature names QEMU gives the bits it knows, used where an image carries
// no feature-name table.
var defaultFeatureNames = map[featureKey]string{
	{featureIncompatible, 0}: "dirty bit",
	{featureIncompatible, 1}: "corrupt bit",
	{featureIncompatible, 2}: "external data file",
	{featureIncompatible, 3}: "compression type",
	{featureIncompatible, 4}: "extended L2 entries",
	{featureCompatible, 0}:   "lazy refcounts",
	{featureAutoclear, 0}:    "bitmaps",
	{featureAutoclear, 1}:    "raw external data",
}

func (img *Image) featureNames(kind uint8, mask uint64) []string {
	names := []string{}
	for bit := 0; bit < 64; bit++ {
		if mask&(1<<bit) == 0 {
			continue
		}
		k := featureKey{kind, uint8(bit)}
		switch {
		case img.ext.featureNames[k] != "":
			names = append(names, img.ext.featureNames[k])
		case defaultFeatureNames[k] != "":
			names = append(names, defaultFeatureNames[k])
		default:
			names = append(names, fmt.Sprintf("bit %d", bit))
		}
	}
	return names
}

// Info describes the image (not its backing files: see Chain). It reads
// the snapshot table again, so it can fail with an I/O error.
func (img *Image) Info() (Info, error) {
	h := &img.hdr
	in := Info{
		Filename:              img.path,
		Format:                "qcow2",
		VirtualSize:           img.size,
		ActualSize:            allocatedBytes(img.file, img.fileSize),
		ClusterSize:           img.clusterSize(),
		DirtyFlag:             h.IncompatibleFeatures&IncompatDirty != 0,
		Encrypted:             h.CryptMethod != CryptNone,
		BackingFilename:       img.backingName,
		BackingFilenameFormat: img.backingFmt,
	}
	_, local := img.chain.resolver.(*localFiles)
	switch {
	case img.backingPath != "":
		in.FullBackingFilename = img.backingPath
	case img.backingName != "" && local:
		// Not opened (--no-backing, or refused): where it would be.
		if p, err := resolveReference(img.path, img.backingName, "backing file"); err == nil {
			in.FullBackingFilename = p
		}
	}
	if img.backingErr != nil {
		in.BackingError = img.backingErr.Error()
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return Info{}, err
	}
	for _, sn := range snaps {
		si := SnapshotInfo{
			ID: sn.ID, Name: sn.Name, VMStateSize: sn.VMStateSize,
			DateSec: sn.Date.Unix(), DateNsec: int64(sn.Date.Nanosecond()),
			VMClockSec: int64(sn.VMClock / 1e9), VMClockNsec: int64(sn.VMClock % 1e9),
			DiskSize: sn.DiskSize,
		}
		if sn.ICount >= 0 {
			ic := sn.ICount
			si.ICount = &ic
		}
		in.Snapshots = append(in.Snapshots, si)
	}
	if img.hdr.Version == 1 {
		in.Format = "qcow"
		return in, nil
	}
	extra := &Qcow2Extra{
		Compat:               map[uint32]string{2: "0.10", 3: "1.1"}[h.Version],
		CompressionType:      map[uint8]string{CompressionDeflate: "zlib", CompressionZstd: "zstd"}[h.CompressionType],
		RefcountBits:         1 << h.RefcountOrder,
		Version:              h.Version,
		L1Size:               h.L1Size,
		IncompatibleFeatures: img.featureNames(featureIncompatible, h.IncompatibleFeatures),
		CompatibleFeatures:   img.featureNames(featureCompatible, h.CompatibleFeatures),
		AutoclearFeatures:    img.featureNames(featureAutoclear, h.AutoclearFeatures),
	}
	extra.Encrypt = img.encryptInfo()
	if h.Version >= 3 {
		lazy, corrupt, extended := h.CompatibleFeatures&CompatLazyRefcounts != 0, h.IncompatibleFeatures&IncompatCorrupt != 0, img.extendedL2
		extra.LazyRefcounts, extra.Corrupt, extra.ExtendedL2 = &lazy, &corrupt, &extended
	}
	if img.hasDataFile() {
		extra.DataFile = img.ext.dataFile
		extra.DataFileRaw = h.AutoclearFeatures&AutoclearDataFileIsRaw != 0
	}
	in.FormatSpecific = &FormatSpecific{Type: "qcow2", Data: extra}
	return in, nil
}

// Layer is one image of a chain, able to describe itself.
type Layer interface {
	Info() (Info, error)
}

// Chain returns the image and each backing file below it, top first. A
// caller describes them one at a time, so that only one image's snapshot
// list is in memory at once.
func (img *Image) Chain() []Layer {
	out := []Layer{img}
	switch b := img.backing.(type) {
	case *Image:
		out = append(out, b.Chain()...)
	case *rawDisk:
		out = append(out, b)
	}
	return out
}

// Info describes a raw backing file.
func (r *rawDisk) Info() (Info, error) {
	return Info{
		Filename:    r.f.Name(),
		Format:      "raw",
		VirtualSize: r.size,
		ActualSize:  allocatedBytes(r.f, r.size),
	}, nil
}

// allocatedBytes is what the file takes on disk, as qemu-img's
// actual-size; for a file that is not local, its size.
func allocatedBytes(f File, size int64) int64 {
	of, ok := osFile(f)
	if !ok {
		return size
	}
	n, err := hostfile.Allocated(of)
	if err != nil {
		return 0
	}
	return n
}
