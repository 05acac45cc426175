package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/encryption"
	"github.com/qcowmount/qcowmount/qcow2/internal/bufpool"
	"github.com/qcowmount/qcowmount/qcow2/internal/decompress"
	"github.com/qcowmount/qcowmount/qcow2/internal/lru"
)

// guestDisk is a guest disk: its bytes, its size, and the files behind it.
type guestDisk interface {
	io.ReaderAt
	Size() int64
	Close() error
}

// DefaultL2CacheSize is the table cache's budget: QEMU caches up to
// 32 MiB of L2 tables; we do the same for the whole chain.
const DefaultL2CacheSize = 32 << 20

// The decompressed-cluster cache serves reads that cover only part of a
// cluster (QEMU keeps one cluster). Unless Options say otherwise it holds
// defaultCachedClusters of the chain's largest clusters, within
// MinClusterCacheSize and MaxClusterCacheSize: on 64 KiB clusters 16 MiB
// was no faster than 4 MiB for 4 KiB reads, sequential or random, buffered
// or direct, by 1 to 8 readers, and was most of the mount's memory.
const (
	defaultCachedClusters = 8
	MinClusterCacheSize   = 4 << 20
	MaxClusterCacheSize   = 16 << 20
)

// maxFailedClusters bounds how many failed compressed clusters a chain
// remembers (each costs a key and an error).
const maxFailedClusters = 4096

// Options control how an image and its chain are opened. The zero value
// opens the active state with its backing chain and default caches.
type Options struct {
	// Snapshot selects an internal snapshot by ID or name instead of the
	// current state of the top image.
	Snapshot string
	// NoBacking reads the top image alone: unallocated clusters read as zeros.
	NoBacking bool
	// Backing and external data files must lie beneath the directory of
	// the image opened, or beneath BackingDir where it is set, symlinks
	// resolved; AllowAnyPath lifts that rule. Files on pseudo file systems
	// (proc, sysfs, ...) are refused whatever the options.
	BackingDir   string
	AllowAnyPath bool
	// AllowDevices lets backing and data files be block devices.
	AllowDevices bool
	// AllowMissing opens an image whose backing file or external data
	// file does not open, to describe or check it: why is in Missing,
	// Info's BackingError and Check's findings, and reads that need the
	// missing file fail with it.
	AllowMissing bool
	// ForceShare reads images that another process may be writing (QEMU's
	// --force-share): only the "consistent read" lock is taken and checked.
	ForceShare bool
	// L2CacheSize and ClusterCacheSize are budgets in bytes for the whole
	// chain; 0 means DefaultL2CacheSize, and 8 of the chain's largest
	// clusters within MinClusterCacheSize and MaxClusterCacheSize.
	L2CacheSize      int64
	ClusterCacheSize int64
	// Passphrase is asked for the passphrase of each encrypted image of
	// the chain, again after one that opened no key slot; it answers nil
	// when it has none (more). Nil asks nothing.
	Passphrase func(KeyRequest) ([]byte, error)
	// AllowLocked opens encrypted images that have no passphrase, to
	// describe them: reading their encrypted data fails with ErrNoKey.
	AllowLocked bool
	// MaxKDFTime bounds the time trying a passphrase on all LUKS key
	// slots together may take, as estimated on this machine; 0 means
	// encryption.DefaultMaxKDFTime.
	MaxKDFTime time.Duration
	// Name names the image in messages and passphrase requests, and
	// Resolver opens the backing and data files it names: for New only
	// (Open names images by path and opens local files its own way).
	Name     string
	Resolver Resolver
}

// cacheKey names a table slice or a cluster: which image of the chain,
// what kind of thing, which offset (or compressed cluster descriptor).
type cacheKey struct {
	image uint32
	kind  uint8
	off   uint64
}

// chain is what the images of one chain share.
type chain struct {
	opts      Options
	tables    *lru.Cache[cacheKey, []uint64] // L1 and L2 table slices
	clusters  *lru.Cache[cacheKey, []byte]   // decompressed; read with Read only
	failed    *lru.Cache[cacheKey, error]    // compressed clusters that did not decompress
	anyFailed atomic.Bool                    // failed holds anything
	nextID    atomic.Uint32
	resolver  Resolver // opens backing and data files; nil: there are none

	// Spare buffers for decompressed clusters (those the cache let go)
	// and for the compressed bytes read from the file.
	spare, compressed *bufpool.Classes

	decodingMu sync.Mutex
	decoding   map[cacheKey]*decoding // compressed clusters being decompressed
}

// spareBuffers is how many spare buffers of each kind and size a chain
// keeps: about as many reads as a FUSE mount has in flight (12 in the
// background and the readers), so that a busy mount allocates none.
const spareBuffers = 16

// compressedSlack is what a compressed cluster's bytes may take beyond a
// cluster in the images QEMU writes: it stores a cluster compressed only
// when that is smaller, and the bytes begin anywhere in a 512-byte sector.
// A descriptor may claim up to two clusters; those reads allocate.
const compressedSlack = 512

// decoding is a compressed cluster that one read is decompressing, for
// others that want it to wait on.
type decoding struct {
	done chan struct{}
	err  error // set before done is closed
}

// startDecoding registers a read that is about to decompress the cluster
// of key; if another read is at it already, it returns that one instead,
// and first is false.
func (c *chain) startDecoding(key cacheKey) (d *decoding, first bool) {
	c.decodingMu.Lock()
	defer c.decodingMu.Unlock()
	if d, ok := c.decoding[key]; ok {
		return d, false
	}
	d = &decoding{done: make(chan struct{})}
	c.decoding[key] = d
	return d, true
}

// endDecoding ends what startDecoding began and wakes the waiting reads.
func (c *chain) endDecoding(key cacheKey, d *decoding, err error) {
	c.decodingMu.Lock()
	delete(c.decoding, key)
	c.decodingMu.Unlock()
	d.err = err
	close(d.done)
}

// Image is an opened qcow2 (or qcow) image, read as its guest disk. It is
// safe for concurrent use.
type Image struct {
	path     string
	file     File  // the image file: metadata, and data unless external
	data     File  // where guest data clusters live
	external bool  // data is an external data file
	dataErr  error // why the data file did not open (Options.AllowMissing)
	ownsFile bool  // Close closes file (not for New's caller's reader)
	id       uint32
	chain    *chain

	// How entries decode, chosen at open: qcow2's (flags and checks in
	// L1 and L2 entries, sector counts in compressed descriptors) or the
	// old qcow's (plain offsets, a compressed flag and an exact length).
	l2Offset        func(entry uint64, at int64) (uint64, error)
	clusterExtent   func(table []uint64, tableOff uint64, off int64) (extent, error)
	compressedRange func(desc uint64) (host uint64, length int64)
	hdr             Header
	ext             extensions
	size            int64 // of the view: the active state or the snapshot
	clusterBits     uint32
	l2Bits          uint32 // log2 of the entries in one L2 table
	sliceEntries    int64  // L2 entries in one cached slice of a table
	extendedL2      bool
	l1Entries       int64 // of the L1 table, those that cover the view
	lastL1          atomic.Pointer[l1Slice]
	l1Offset        uint64
	decompress      func(dst, src []byte) error // fills one cluster
	fileSize        int64                       // when opened

	crypt     *encryption.SectorCipher // nil unless encrypted and unlocked
	cryptHost bool                     // IVs from host offsets (LUKS), not guest ones
	luks      *encryption.LUKS

	backing     guestDisk // nil without a backing file or with NoBacking
	backingName string
	backingPath string // as the resolver named the file it opened
	backingErr  error  // why it did not open (Options.AllowMissing)
	backingFmt  string
	warnings    []string
}

// Open opens the image at path, and its backing chain, for reading: the
// local files of a chain, as the path rules allow, with QEMU's locks.
func Open(path string, opts Options) (*Image, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	local, err := newLocalFiles(abs, opts)
	if err != nil {
		return nil, err
	}
	defer local.files.Close()
	f, size, err := local.files.OpenTop(abs)
	if err != nil {
		return nil, err
	}
	img, err := openChain(opts, local, f, size, abs, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	img.ownsFile = true
	if opts.ForceShare {
		img.warnings = append(img.warnings, "opened sharing it with writers (force share): another process may change the image while it is read, and reads may then be inconsistent")
	}
	return img, nil
}

// New reads the image in r, size bytes from any source (a remote object,
// memory), named opts.Name in messages; opts.Resolver opens the files it
// names. Close does not close r.
func New(r io.ReaderAt, size int64, opts Options) (*Image, error) {
	name := opts.Name
	if name == "" {
		name = "image"
	}
	return openChain(opts, opts.Resolver, namedReader{r, name}, size, name, name)
}

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

// LargestCluster is the size of the largest clusters of the chain's
// images: what one read may decompress or decrypt at once.
func (img *Image) LargestCluster() int64 {
	var bits uint32
	for i := range img.images() {
		bits = max(bits, i.clusterBits)
	}
	return 1 << bits
}

func newChain(opts Options, resolver Resolver) *chain {
	if opts.L2CacheSize <= 0 {
		opts.L2CacheSize = DefaultL2CacheSize
	}
	if opts.ClusterCacheSize <= 0 {
		opts.ClusterCacheSize = MaxClusterCacheSize // until openChain knows the clusters
	}
	c := &chain{
		opts:       opts,
		tables:     lru.New[cacheKey, []uint64](opts.L2CacheSize),
		failed:     lru.New[cacheKey, error](maxFailedClusters),
		decoding:   map[cacheKey]*decoding{},
		resolver:   resolver,
		spare:      bufpool.NewClasses(maxClusterBits, 0, spareBuffers),
		compressed: bufpool.NewClasses(maxClusterBits, compressedSlack, spareBuffers),
	}
	c.clusters = lru.NewRecycling[cacheKey, []byte](opts.ClusterCacheSize, c.spare.Put)
	return c
}

// openImage reads the header and tables of the image in f, fileSize
// bytes (qcow2, or qcow version 1), and opens what it refers to. On error
// the caller closes f; what openImage opened itself is closed already.
// path names it in messages, name as the chain names it (passphrase
// requests).
func (c *chain) openImage(f File, fileSize int64, path, name string, depth int, snapshot string) (*Image, error) {
	// The header and its extensions lie in the first cluster, at most 2 MiB.
	first := make([]byte, min(fileSize, 1<<maxClusterBits))
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, int64(len(first))), first); err != nil {
		return nil, fmt.Errorf("%s: reading the header: %w", path, err)
	}
	if len(first) >= 8 && binary.BigEndian.Uint32(first) == Magic && binary.BigEndian.Uint32(first[4:]) == 1 {
		return c.openQcow1(f, fileSize, path, name, first, depth, snapshot)
	}
	if len(first) >= 4 && binary.BigEndian.Uint32(first) != Magic {
		return nil, inFile(path, notQcow(path, first, f, fileSize))
	}
	h, err := parseHeader(path, first, fileSize)
	if err != nil {
		return nil, inFile(path, err)
	}
	clusterSize := uint64(1) << h.ClusterBits
	if uint64(len(first)) > clusterSize {
		first = first[:clusterSize]
	}
	extEnd := clusterSize
	if h.BackingFileOffset != 0 {
		extEnd = h.BackingFileOffset
	}
	ext, err := parseExtensions(path, first, uint64(h.HeaderLength), extEnd)
	if err != nil {
		return nil, inFile(path, err)
	}
	img := c.newImage(f, path, h, uint32(bitsOf(h.l2Entries())))
	img.ext = *ext
	if err := img.checkFeatures(); err != nil {
		return nil, inFile(path, err)
	}
	if h.BackingFileOffset != 0 {
		end := h.BackingFileOffset + uint64(h.BackingFileSize)
		if end > uint64(len(first)) {
			return nil, inFile(path, formatErr(path, "backing file name", int64(h.BackingFileOffset), "runs past the end of the file"))
		}
		img.backingName = string(first[h.BackingFileOffset:end])
		img.backingFmt = ext.backingFormat
	}
	img.fileSize = fileSize
	sn, err := img.checkSnapshots(snapshot)
	if err != nil {
		return nil, inFile(path, err)
	}
	l1Size := uint64(h.L1Size)
	if sn != nil {
		if err := checkTable(path, "snapshot L1 table", sn.entryOffset, sn.L1Offset, uint64(sn.L1Size), 8, maxL1Bytes, h.ClusterBits, fileSize); err != nil {
			return nil, inFile(path, fmt.Errorf("snapshot %s: %w", sn.ID, err))
		}
		if sn.DiskSize > math.MaxInt64 {
			return nil, inFile(path, formatErr(path, "snapshot disk_size", sn.entryOffset+48, "%d exceeds 2^63-1", sn.DiskSize))
		}
		img.l1Offset, l1Size = sn.L1Offset, uint64(sn.L1Size)
		img.size = int64(sn.DiskSize &^ 511)
	}
	img.l1Entries = int64(min(l1Size, h.l1EntriesFor(uint64(img.size))))
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

// newImage makes the Image for file f with header h, whose L2 tables hold
// 2^l2Bits entries.
func (c *chain) newImage(f File, path string, h *Header, l2Bits uint32) *Image {
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
	}
	img.sliceEntries = min(tableSliceBytes, img.l2TableBytes()) / (8 * img.l2EntryWords())
	img.l2Offset, img.clusterExtent, img.compressedRange = img.qcow2L2Offset, img.qcow2Extent, img.qcow2CompressedRange
	return img
}

// checkFeatures refuses what this reader cannot read correctly and notes
// what it reads with a caveat.
func (img *Image) checkFeatures() error {
	h := &img.hdr
	if unknown := h.IncompatibleFeatures &^ knownIncompat; unknown != 0 {
		return &UnsupportedError{Feature: describeIncompat(unknown, img.ext.featureNames)}
	}
	if h.IncompatibleFeatures&IncompatExternalData != 0 && !img.ext.hasDataFile {
		return img.formatErr("incompatible_features", 72, "external data file bit is set but the image names no data file")
	}
	if h.AutoclearFeatures&AutoclearDataFileIsRaw != 0 && h.IncompatibleFeatures&IncompatExternalData == 0 {
		return img.formatErr("autoclear_features", 88, "raw external data bit is set without an external data file")
	}
	if h.IncompatibleFeatures&IncompatCorrupt != 0 {
		img.warnings = append(img.warnings, "image is marked corrupt: QEMU allows reading it, but data may be wrong")
	}

	return nil
}

// Size returns the size of the guest disk in bytes.
func (img *Image) Size() int64 { return img.size }

// Header returns the image's header as the file holds it (for qcow
// version 1, the fields that format has, Version 1).
func (img *Image) Header() Header { return img.hdr }

// CacheBudget is the most the chain's caches can hold, in bytes: their
// budgets, or less where all of the chain's tables take less than the
// table cache's budget (a 2 GiB disk of 64 KiB clusters has 256 KiB of
// L2 tables).
func (img *Image) CacheBudget() int64 {
	budget := img.chain.opts.L2CacheSize
	var tables int64
	for i := range img.images() {
		tables = min(tables+min(i.tableBytes(), budget), budget)
	}
	return tables + img.chain.opts.ClusterCacheSize
}

// images yields the qcow2 and qcow images of the chain, top first (a raw
// backing file ends it).
func (img *Image) images() iter.Seq[*Image] {
	return func(yield func(*Image) bool) {
		for i := img; i != nil && yield(i); {
			i, _ = i.backing.(*Image)
		}
	}
}

// tableBytes is the most the table cache can hold of this image: every
// slice of its L1 table and of the L2 tables that cover the view, each
// with the cache's own cost per entry, as the cache counts them.
func (img *Image) tableBytes() int64 {
	const l1PerSlice = tableSliceBytes / 8
	clusters := img.size>>img.clusterBits + 1
	l2Slices := clusters/img.sliceEntries + 1
	l1Slices := img.l1Entries/l1PerSlice + 1
	if l2Slices > 1<<40 { // far beyond any budget; no overflow below
		return math.MaxInt64
	}
	l2SliceBytes := img.sliceEntries * 8 * img.l2EntryWords()
	return l2Slices*(l2SliceBytes+lru.EntryOverhead) + l1Slices*(tableSliceBytes+lru.EntryOverhead)
}

// Path returns the absolute path of the image file.
func (img *Image) Path() string { return img.path }

// Missing says why backing and data files of the chain did not open
// (with Options.AllowMissing), top first.
func (img *Image) Missing() []error {
	var errs []error
	for i := range img.images() {
		for _, err := range []error{i.dataErr, i.backingErr} {
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// Warnings lists things the caller should tell the user about, such as an
// image marked corrupt, for every image of the chain.
func (img *Image) Warnings() []string {
	w := append([]string(nil), img.warnings...)
	if b, ok := img.backing.(*Image); ok {
		for _, s := range b.Warnings() {
			w = append(w, b.path+": "+s)
		}
	}
	return w
}

// Close closes the image and every file of its chain.
func (img *Image) Close() error {
	return img.closeFiles()
}

func (img *Image) closeFiles() error {
	var errs []error
	if img.backing != nil {
		errs = append(errs, img.backing.Close())
	}
	if img.external {
		errs = append(errs, closeFile(img.data))
	}
	if img.ownsFile {
		errs = append(errs, closeFile(img.file))
	}
	return errors.Join(errs...)
}

// decompressorFor is the decoder of compressed clusters of an image of
// this compression type; the header check has refused any other.
func decompressorFor(compressionType uint8) func(dst, src []byte) error {
	if compressionType == CompressionZstd {
		return decompress.Zstd
	}
	return decompress.Deflate
}
