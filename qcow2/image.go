package qcow2

import (
	"errors"
	"io"
	"iter"
	"math"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/encryption"
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
// MinClusterCacheSize and MaxClusterCacheSize: more bought no speed for
// small reads, of any kind, and was most of a mount's memory
// (docs/speed.md has the figures).
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

	format       format // qcow2's or the old qcow's entries
	hdr          Header
	ext          extensions
	size         int64 // of the view: the active state or the snapshot
	clusterBits  uint32
	l2Bits       uint32 // log2 of the entries in one L2 table
	sliceEntries int64  // L2 entries in one cached slice of a table
	extendedL2   bool
	l1Entries    int64 // of the L1 table, those that cover the view
	lastL1       atomic.Pointer[l1Slice]
	l1Offset     uint64
	decompress   func(dst, src []byte) error // fills one cluster
	fileSize     int64                       // when opened

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

// LargestCluster is the size of the largest clusters of the chain's
// images: what one read may decompress or decrypt at once.
func (img *Image) LargestCluster() int64 {
	var bits uint32
	for i := range img.images() {
		bits = max(bits, i.clusterBits)
	}
	return 1 << bits
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
