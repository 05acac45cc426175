package qcow2

import (
	"encoding/binary"
	"math"
)

// Magic is the first four bytes of every qcow and qcow2 image: "QFI\xfb".
const Magic = 0x514649fb

// Incompatible feature bits.
const (
	IncompatDirty           = 1 << 0
	IncompatCorrupt         = 1 << 1
	IncompatExternalData    = 1 << 2
	IncompatCompressionType = 1 << 3
	IncompatExtendedL2      = 1 << 4
	knownIncompat           = IncompatDirty | IncompatCorrupt | IncompatExternalData |
		IncompatCompressionType | IncompatExtendedL2
)

// Compatible and autoclear feature bits.
const (
	CompatLazyRefcounts    = 1 << 0
	AutoclearBitmaps       = 1 << 0
	AutoclearDataFileIsRaw = 1 << 1
)

// Compression types (header byte 104).
const (
	CompressionDeflate = 0
	CompressionZstd    = 1
)

// Encryption methods (crypt_method).
const (
	CryptNone = 0
	CryptAES  = 1
	CryptLUKS = 2
)

// Header is the fixed part of a qcow2 header, fields as in the spec.
type Header struct {
	Version               uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64
	CryptMethod           uint32
	L1Size                uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64
	IncompatibleFeatures  uint64
	CompatibleFeatures    uint64
	AutoclearFeatures     uint64
	RefcountOrder         uint32
	HeaderLength          uint32
	CompressionType       uint8
}

// parseHeader decodes and checks the header in buf, the start of the file
// (at most one cluster, at least the header), whose magic openImage has
// checked. fileSize bounds the tables.
func parseHeader(path string, buf []byte, fileSize int64) (*Header, error) {
	be := binary.BigEndian
	if len(buf) < v2HeaderLength {
		return nil, formatErr(path, "header", 0, "file is %d bytes, shorter than a qcow2 header (72)", len(buf))
	}
	h := &Header{
		Version:               be.Uint32(buf[4:]),
		BackingFileOffset:     be.Uint64(buf[8:]),
		BackingFileSize:       be.Uint32(buf[16:]),
		ClusterBits:           be.Uint32(buf[20:]),
		Size:                  be.Uint64(buf[24:]),
		CryptMethod:           be.Uint32(buf[32:]),
		L1Size:                be.Uint32(buf[36:]),
		L1TableOffset:         be.Uint64(buf[40:]),
		RefcountTableOffset:   be.Uint64(buf[48:]),
		RefcountTableClusters: be.Uint32(buf[56:]),
		NbSnapshots:           be.Uint32(buf[60:]),
		SnapshotsOffset:       be.Uint64(buf[64:]),
		RefcountOrder:         4,
		HeaderLength:          v2HeaderLength,
	}
	if h.Version != 2 && h.Version != 3 {
		return nil, formatErr(path, "version", 4, "%d is not a qcow2 version (2 or 3)", h.Version)
	}
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return nil, formatErr(path, "cluster_bits", 20, "%d is outside %d..%d", h.ClusterBits, minClusterBits, maxClusterBits)
	}
	clusterSize := uint64(1) << h.ClusterBits
	if h.Version == 3 {
		if len(buf) < v3MinHeaderLength {
			return nil, formatErr(path, "header", 0, "file is %d bytes, shorter than a v3 header (104)", len(buf))
		}
		h.IncompatibleFeatures = be.Uint64(buf[72:])
		h.CompatibleFeatures = be.Uint64(buf[80:])
		h.AutoclearFeatures = be.Uint64(buf[88:])
		h.RefcountOrder = be.Uint32(buf[96:])
		h.HeaderLength = be.Uint32(buf[100:])
		if h.HeaderLength < v3MinHeaderLength {
			return nil, formatErr(path, "header_length", 100, "%d is shorter than 104", h.HeaderLength)
		}
		if uint64(h.HeaderLength) > clusterSize {
			return nil, formatErr(path, "header_length", 100, "%d exceeds the cluster size %d", h.HeaderLength, clusterSize)
		}
		if h.HeaderLength > v3MinHeaderLength {
			if len(buf) <= v3MinHeaderLength {
				return nil, formatErr(path, "header_length", 100, "%d runs past the end of the file", h.HeaderLength)
			}
			h.CompressionType = buf[104]
		}
	}
	if h.RefcountOrder > maxRefcountOrder {
		return nil, formatErr(path, "refcount_order", 96, "%d exceeds %d", h.RefcountOrder, maxRefcountOrder)
	}
	if err := h.checkCompression(path); err != nil {
		return nil, err
	}
	if h.BackingFileOffset != 0 {
		if h.BackingFileOffset > clusterSize {
			return nil, formatErr(path, "backing_file_offset", 8, "%#x lies outside the first cluster", h.BackingFileOffset)
		}
		if h.BackingFileSize > maxBackingNameLen || uint64(h.BackingFileSize) > clusterSize-h.BackingFileOffset {
			return nil, formatErr(path, "backing_file_size", 16, "%d is too long (at most %d, inside the first cluster)", h.BackingFileSize, maxBackingNameLen)
		}
	}
	if h.CryptMethod > CryptLUKS {
		return nil, formatErr(path, "crypt_method", 32, "%d is not an encryption method (0, 1 or 2)", h.CryptMethod)
	}
	if h.IncompatibleFeatures&IncompatExtendedL2 != 0 && h.ClusterBits < 14 {
		return nil, formatErr(path, "cluster_bits", 20, "extended L2 entries need clusters of at least 16 KiB, not %d bytes", clusterSize)
	}
	if err := h.checkTables(path, fileSize); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *Header) checkCompression(path string) error {
	bit := h.IncompatibleFeatures&IncompatCompressionType != 0
	switch h.CompressionType {
	case CompressionDeflate:
		if bit {
			return formatErr(path, "incompatible_features", 72, "compression type bit is set but compression_type is zlib")
		}
	case CompressionZstd:
		if !bit {
			return formatErr(path, "incompatible_features", 72, "compression_type is zstd but the compression type bit is clear")
		}
	default:
		return formatErr(path, "compression_type", 104, "%d is not a compression type (0 zlib, 1 zstd)", h.CompressionType)
	}
	return nil
}

// l2Entries is the number of entries in one L2 table.
func (h *Header) l2Entries() uint64 {
	if h.IncompatibleFeatures&IncompatExtendedL2 != 0 {
		return uint64(1) << (h.ClusterBits - 4)
	}
	return uint64(1) << (h.ClusterBits - 3)
}

// l1EntriesFor returns how many L1 entries a disk of size bytes needs.
func (h *Header) l1EntriesFor(size uint64) uint64 {
	shift := h.ClusterBits + uint32(bitsOf(h.l2Entries()))
	return (size >> shift) + boolToU64(size&(1<<shift-1) != 0)
}

func (h *Header) checkTables(path string, fileSize int64) error {
	if h.Size > math.MaxInt64 {
		return formatErr(path, "size", 24, "virtual size %d exceeds 2^63-1", h.Size)
	}
	if need := h.l1EntriesFor(h.Size); need > math.MaxInt32 {
		return formatErr(path, "size", 24, "virtual size %d is too big (L1 would need %d entries)", h.Size, need)
	} else if uint64(h.L1Size) < need {
		return formatErr(path, "l1_size", 36, "%d entries is too small for the virtual size %d (needs %d)", h.L1Size, h.Size, need)
	}
	if err := checkTable(path, "l1_table_offset", 40, h.L1TableOffset, uint64(h.L1Size), 8, maxL1Bytes, h.ClusterBits, fileSize); err != nil {
		return err
	}
	if h.RefcountTableClusters == 0 {
		return formatErr(path, "refcount_table_clusters", 56, "0: the image has no refcount table")
	}
	if err := checkTable(path, "refcount_table_offset", 48, h.RefcountTableOffset, uint64(h.RefcountTableClusters), 1<<h.ClusterBits, maxRefcountBytes, h.ClusterBits, -1); err != nil {
		return err
	}
	if h.NbSnapshots > maxSnapshots {
		return formatErr(path, "nb_snapshots", 60, "%d exceeds %d", h.NbSnapshots, maxSnapshots)
	}
	return checkTable(path, "snapshots_offset", 64, h.SnapshotsOffset, uint64(h.NbSnapshots), snapshotHeaderBytes, maxSnapshotTable, h.ClusterBits, fileSize)
}

func bitsOf(n uint64) int {
	b := 0
	for n > 1 {
		n >>= 1
		b++
	}
	return b
}

func boolToU64(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
