package qcow2

// What an L2 entry says of its cluster, as QEMU's qcow2_get_cluster_type
// says it: the one rule the read path, check and a writer follow.

// Bits of L1 and L2 entries.
const (
	entryOffsetMask   = 0x00fffffffffffe00
	l1ReservedMask    = 0x7f000000000001ff
	l2ReservedMask    = 0x3f000000000001fe
	l2Copied          = 1 << 63
	l2Compressed      = 1 << 62
	l2Zero            = 1 << 0
	subclustersPerCl  = 32
	subclusterAllMask = 0xffffffff
)

// clusterType is the kind of cluster an L2 entry describes.
type clusterType uint8

const (
	clusterUnallocated clusterType = iota // the backing file's, or zeros
	clusterZeroPlain                      // reads as zeros, no host cluster
	clusterZeroAlloc                      // reads as zeros, a host cluster kept for it
	clusterNormal                         // data at the entry's host offset
	clusterCompressed                     // a compressed cluster's descriptor
)

// classify is the type of the cluster that the L2 entry describes, in an
// image with extended L2 entries or not (the zero flag is then in the
// subcluster bitmap) and with an external data file or not (where offset
// 0 is a real cluster, which the copied flag tells from an unallocated
// one). It looks at no other bit: reserved bits and alignment are the
// callers' to check, each as it must (a read refuses, check counts).
func classify(entry uint64, extendedL2, dataFile bool) clusterType {
	switch {
	case entry&l2Compressed != 0:
		return clusterCompressed
	case entry&l2Zero != 0 && !extendedL2:
		if entry&entryOffsetMask != 0 {
			return clusterZeroAlloc
		}
		return clusterZeroPlain
	case entry&entryOffsetMask == 0 && !(dataFile && entry&l2Copied != 0):
		return clusterUnallocated
	}
	return clusterNormal
}

// hasDataFile reports whether the image keeps its guest data in an
// external data file: the incompatible feature bit says so, whatever
// header extensions it carries (as QEMU's has_data_file).
func (img *Image) hasDataFile() bool {
	return img.hdr.IncompatibleFeatures&IncompatExternalData != 0
}
