package qcow2

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/qcowmount/qcowmount/qcow2/internal/bufpool"
	"github.com/qcowmount/qcowmount/qcow2/internal/lru"
)

// maxChainDepth bounds backing chains; QEMU images rarely have more than a
// handful of layers, and a hostile image must not make us open thousands.
const maxChainDepth = 64

// chain is what the images of one chain share: the caches, the spare
// buffers, the compressed clusters being decompressed, the helpers that
// decompress, and how to open the files the images name.
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

	// helpers bounds the goroutines that decompress whole clusters for
	// reads, beside the reads' own, for all reads of the chain together.
	helpers chan struct{}
}

// cacheKey names a table slice or a cluster: which image of the chain,
// what kind of thing, which offset (or compressed cluster descriptor).
type cacheKey struct {
	image uint32
	kind  uint8
	off   uint64
}

// spareBuffers is how many spare buffers of each kind and size a chain
// keeps: about as many reads as a FUSE mount has in flight (12 in the
// background and the readers), so that a busy mount allocates none.
const spareBuffers = 16

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
		helpers:    make(chan struct{}, max(runtime.GOMAXPROCS(0)-1, 1)),
	}
	c.clusters = lru.NewRecycling[cacheKey, []byte](opts.ClusterCacheSize, c.spare.Put)
	return c
}

// resolveReference turns a backing or data file name found in the image at
// from into a path, refusing what QEMU would open as a protocol (json:,
// nbd:, URLs). Where the path may lead is the path policy's to check, when
// the file is opened.
func resolveReference(from, name, what string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%s: empty %s name", from, what)
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%s: %s name %q contains a NUL byte: %w", from, what, name, ErrUnsafePath)
	}
	if colon := strings.IndexByte(name, ':'); colon >= 0 && !strings.Contains(name[:colon], "/") {
		if !strings.HasPrefix(name, "file:") {
			return "", fmt.Errorf("%s: %s name %q is not a plain path (protocol %q): %w", from, what, name, name[:colon], ErrUnsafePath)
		}
		name = strings.TrimPrefix(name, "file:")
	}
	p := name
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(from), p)
	}
	return p, nil
}

// openDependencies opens the external data file and the backing chain of
// img. On error it closes what it opened.
func (c *chain) openDependencies(img *Image, depth int) (err error) {
	defer func() {
		if err != nil {
			if img.backing != nil {
				img.backing.Close()
				img.backing = nil
			}
			if img.external {
				closeFile(img.data)
				img.data, img.external = img.file, false
			}
		}
	}()
	if img.hasDataFile() {
		f, _, _, err := c.resolve(img.path, img.ext.dataFile, "data file")
		if err != nil {
			err = fmt.Errorf("%s: external data file %q: %w", img.path, img.ext.dataFile, err)
			if !c.opts.AllowMissing {
				return err
			}
			f, img.dataErr = missingFile{img.ext.dataFile, err}, err
		}
		// With data_file_raw the data file is a raw image of the disk, but
		// QEMU still reads through the L2 table, which stays valid: a zero
		// or unallocated entry reads as such, whatever the data file holds.
		img.data, img.external = f, true
	}
	if img.backingName == "" || c.opts.NoBacking {
		return nil
	}
	if depth+1 >= maxChainDepth {
		return fmt.Errorf("%s: backing chain is deeper than %d images", img.path, maxChainDepth)
	}
	f, size, path, err := c.resolve(img.path, img.backingName, "backing file")
	if err == nil {
		img.backingPath = path
		img.backing, err = c.openBacking(f, size, path, img.backingName, img.backingFmt, depth+1)
	}
	if err != nil {
		err = fmt.Errorf("%s: backing file %q: %w", img.path, img.backingName, err)
		if !c.opts.AllowMissing {
			return err
		}
		img.backing, img.backingErr = missingDisk{img.size, err}, err
	}
	return nil
}

// resolve opens a file an image names, through the chain's Resolver.
func (c *chain) resolve(from, name, what string) (File, int64, string, error) {
	if c.resolver == nil {
		return nil, 0, "", fmt.Errorf("the image names a %s, and nothing was given to open it with (Options.Resolver)", what)
	}
	return c.resolver.Resolve(from, name, what)
}

// openBacking reads a backing image in the named format, or the format its
// contents show when the referring image names none (qcow2 magic: qcow2;
// anything else: raw). On error it closes f.
func (c *chain) openBacking(f File, size int64, path, name, format string, depth int) (guestDisk, error) {
	if format == "" {
		format = probeFormat(f)
	}
	var d guestDisk
	var err error
	switch format {
	case "qcow2", "qcow":
		var img *Image
		if img, err = c.openImage(f, size, path, name, depth, ""); err == nil {
			img.ownsFile = true
			d = img
		}
	case "raw":
		d = &rawDisk{f: f, size: size}
	default:
		err = &UnsupportedError{Feature: fmt.Sprintf("backing file format %q", format)}
	}
	if err != nil {
		closeFile(f)
		return nil, err
	}
	return d, nil
}

func probeFormat(f File) string {
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err == nil && binary.BigEndian.Uint32(magic[:]) == Magic {
		return "qcow2"
	}
	return "raw"
}

// missingDisk stands for a backing file that did not open: every read of
// it fails with the reason, and it holds data as far as anyone knows.
type missingDisk struct {
	size int64
	err  error
}

func (m missingDisk) ReadAt([]byte, int64) (int, error) { return 0, m.err }
func (m missingDisk) Size() int64                       { return m.size }
func (m missingDisk) Close() error                      { return nil }

// missingFile stands for a data file that did not open: every read of it
// fails with the reason.
type missingFile struct {
	name string
	err  error
}

func (m missingFile) ReadAt([]byte, int64) (int, error) { return 0, m.err }
func (m missingFile) Name() string                      { return m.name }
