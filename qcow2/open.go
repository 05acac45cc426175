package qcow2

// Opening an image reads as one line down: openImage sniffs its format
// (formats.go), reads its header (header.go, extensions.go), checks its
// features and turns to a snapshot (snapshot.go), unlocks its encryption
// (crypt.go), and opens the chain below (chain.go), whose images open the
// same way.

import (
	"errors"
	"fmt"
	"io"
)

// openChain opens the top image, and through it the chain, then sizes the
// decompressed-cluster cache to the chain's largest clusters unless the
// caller chose a budget.
func openChain(opts Options, resolver Resolver, f File, size int64, path, name string) (*Image, error) {
	img, err := newChain(opts, resolver).openImage(f, size, path, name, 0, opts.Snapshot)
	if err != nil || opts.ClusterCacheSize > 0 {
		return img, err
	}
	c := img.chain
	c.opts.ClusterCacheSize = min(max(defaultCachedClusters*img.LargestCluster(), MinClusterCacheSize), MaxClusterCacheSize)
	c.clusters.SetBudget(c.opts.ClusterCacheSize)
	return img, nil
}

// defaultClusterSize is QEMU's default cluster size: most images' first
// cluster, which holds the header.
const defaultClusterSize = 64 << 10

// openImage opens the image in f, fileSize bytes, and what it refers to,
// one step after the other: sniff the first cluster for the format, read
// the header (and for qcow2 its extensions, features and chosen snapshot),
// unlock its encryption, then open the chain below it, whose images open
// the same way. On error the caller closes f; what openImage opened itself
// is closed already. path names the image in messages, name as the chain
// names it (passphrase requests).
func (c *chain) openImage(f File, fileSize int64, path, name string, depth int, snapshot string) (*Image, error) {
	// The header and its extensions lie in the first cluster: read QEMU's
	// default cluster's worth, and the rest of a larger one once the
	// header has said so (readHeader). Reading 2 MiB up front cost most
	// of a local image's opening.
	first, err := readPrefix(f, nil, min(fileSize, defaultClusterSize))
	if err != nil {
		return nil, fmt.Errorf("%s: reading the header: %w", path, err)
	}
	var img *Image
	switch sniff(first) {
	case sniffedQcow:
		img, err = c.readQcowHeader(f, fileSize, path, first, snapshot)
	case sniffedQcow2:
		img, err = c.readHeader(f, fileSize, path, first, snapshot)
	default:
		err = notQcow(path, first, f, fileSize)
	}
	if err != nil {
		return nil, inFile(path, err)
	}
	if err := c.openEncryption(img, name); err != nil {
		var pe *PassphraseError
		if errors.As(err, &pe) {
			return nil, err // names the image already
		}
		return nil, inFile(path, err)
	}
	if err := c.openDependencies(img, depth); err != nil {
		return nil, err
	}
	return img, nil
}

// readHeader reads a qcow2 image's header and header extensions from its
// first cluster, checks its features, and turns to the snapshot asked for.
func (c *chain) readHeader(f File, fileSize int64, path string, first []byte, snapshot string) (*Image, error) {
	h, err := parseHeader(path, first, fileSize)
	if err != nil {
		return nil, err
	}
	clusterSize := uint64(1) << h.ClusterBits
	if first, err = readPrefix(f, first, min(fileSize, int64(clusterSize))); err != nil {
		return nil, fmt.Errorf("reading the first cluster: %w", err)
	}
	extEnd := clusterSize
	if h.BackingFileOffset != 0 {
		extEnd = h.BackingFileOffset
	}
	ext, err := parseExtensions(path, first, uint64(h.HeaderLength), extEnd)
	if err != nil {
		return nil, err
	}
	img := c.newImage(f, path, h, uint32(bitsOf(h.l2Entries())), qcow2Format{})
	img.ext, img.fileSize = *ext, fileSize
	if err := img.checkFeatures(); err != nil {
		return nil, err
	}
	if h.BackingFileOffset != 0 {
		end := h.BackingFileOffset + uint64(h.BackingFileSize)
		if end > uint64(len(first)) {
			return nil, formatErr(path, "backing file name", int64(h.BackingFileOffset), "runs past the end of the file")
		}
		img.backingName = string(first[h.BackingFileOffset:end])
		img.backingFmt = ext.backingFormat
	}
	return img, img.useSnapshot(snapshot)
}

// newImage makes the Image for file f with header h, whose L2 tables hold
// 2^l2Bits entries, and whose entries decode as fm says.
func (c *chain) newImage(f File, path string, h *Header, l2Bits uint32, fm format) *Image {
	img := &Image{
		path:        path,
		file:        f,
		data:        f,
		id:          c.nextID.Add(1),
		chain:       c,
		hdr:         *h,
		clusterBits: h.ClusterBits,
		l2Bits:      l2Bits,
		extendedL2:  h.IncompatibleFeatures&IncompatExtendedL2 != 0,
		decompress:  decompressorFor(h.CompressionType),
		// QEMU exposes whole 512-byte sectors only.
		size:     int64(h.Size &^ 511),
		l1Offset: h.L1TableOffset,
		format:   fm,
	}
	img.sliceEntries = min(tableSliceBytes, img.l2TableBytes()) / (8 * img.l2EntryWords())
	return img
}

// readPrefix returns the first n bytes of f, given have, the first
// len(have) of them: it reads only what have lacks.
func readPrefix(f File, have []byte, n int64) ([]byte, error) {
	if int64(len(have)) >= n {
		return have[:n], nil
	}
	b := make([]byte, n)
	copy(b, have)
	if _, err := io.ReadFull(io.NewSectionReader(f, int64(len(have)), n-int64(len(have))), b[len(have):]); err != nil {
		return nil, err
	}
	return b, nil
}
