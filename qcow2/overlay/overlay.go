// Package overlay takes writes to a guest disk without touching the image
// it was read from: they go to a new qcow2 image whose backing file is
// that image, the copy-on-write overlay QEMU makes with `qemu-img create
// -b`. QEMU boots it, `qemu-img commit` merges it into the image, and
// deleting it undoes every write.
//
//	img, _ := qcow2.Open("vm.qcow2", qcow2.Options{})
//	o, err := overlay.Open("changes.qcow2", img, overlay.Backing{Name: img.Path(), Format: "qcow2"}, overlay.Options{})
//	...
//	o.WriteAt(p, off) // and ReadAt: the disk with the changes
//	o.Close()         // everything durable
//
// The writer allocates clusters at the end of the file and writes in
// QEMU's order (data and refcounts, then L2 tables, then L1), each step
// synced before the next, so that the file stays consistent, at worst
// with leaked clusters, wherever a crash stops it.
package overlay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/internal/hostfile"
)

// Base is the disk beneath the overlay: what it reads where it has no
// data of its own.
type Base interface {
	io.ReaderAt
	Size() int64
}

// Backing names the image beneath, as the overlay's header records it.
type Backing struct {
	// Name is the image's absolute path or URL.
	Name string
	// Format is its format: qcow2, qcow or raw.
	Format string
}

// Options tune the writer; the zero value is QEMU's layout and our caches.
type Options struct {
	// ClusterBits is log2 of a new overlay's cluster size, 9 to 21; 0
	// means DefaultClusterBits. A continued overlay keeps its own.
	ClusterBits uint32
	// TableCacheSize bounds the L2 tables kept in memory, in bytes; 0
	// means qcow2.DefaultL2CacheSize.
	TableCacheSize int64
	// CommitInterval is how often changes are made durable without being
	// asked (as ext4's commit=5); 0 means DefaultCommitInterval, negative
	// never.
	CommitInterval time.Duration
}

// DefaultCommitInterval is how often, at most, written data waits to be
// made durable when nobody asks for it.
const DefaultCommitInterval = 5 * time.Second

// RefusedError says why an existing file cannot be continued as the
// overlay: it is left as it was.
type RefusedError struct {
	Path   string
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("%s: not continued as the overlay: %s", e.Path, e.Reason)
}

// Overlay is the guest disk with the writes made to it. It is safe for
// concurrent use.
type Overlay struct {
	base        Base
	f           trackedFile
	file        *os.File // closed by Close; nil where a test gave the file
	path        string
	size        int64
	version     uint32
	clusterBits uint32
	l2Entries   int64

	mu        sync.Mutex
	l1        []uint64
	l1Offset  int64
	l1Dirty   map[int64]bool
	tables    map[int64]*l2Table
	maxTables int
	copying   map[int64]chan struct{} // guest clusters being written to new host clusters
	tableBuf  []byte                  // one L2 table, encoded, under mu
	tick      uint64
	refs      refcounts
	end       int64 // where the next cluster is allocated
	unsynced  *atomic.Bool
	failed    error // set once a flush failed: nothing more is written
	closed    bool
	interval  time.Duration

	stop chan struct{}
	done chan struct{}
}

// file is what the overlay's file must do: an *os.File, or a test's.
type file interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// trackedFile notes each write, so that a flush with nothing written
// since the last one costs no fsync.
type trackedFile struct {
	file
	unsynced *atomic.Bool
}

func (t trackedFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := t.file.WriteAt(p, off)
	t.unsynced.Store(true) // after the write: a sync that began before it may miss it
	return n, err
}

// Open continues the overlay at path, or creates it (mode 0600) where no
// file is. An existing file is continued only if it is a qcow2 overlay
// whose backing file is b, which the writer can write safely; otherwise a
// *RefusedError says why and the file is left as it was. The file takes
// QEMU's writer locks.
func Open(path string, base Base, b Backing, opts Options) (*Overlay, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return create(path, base, b, opts)
	}
	if err != nil {
		return nil, err
	}
	o, err := resume(f, path, base, b, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return o, nil
}

// Temp makes an overlay in a file in dir that is unlinked at once: the
// writes are gone when it closes, or when the process ends.
func Temp(dir string, base Base, b Backing, opts Options) (*Overlay, error) {
	f, err := os.CreateTemp(dir, ".qcowmount-overlay-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	o, err := build(f, base, b, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	o.file, o.path = f, "(temporary, in "+dir+")"
	return o, nil
}

// create writes a new overlay under a temporary name beside path, then
// links it into place only if path is still free.
func create(path string, base Base, b Backing, opts Options) (*Overlay, error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".new-*")
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) { // names the temporary file, not the user's
			err = pe.Err
		}
		return nil, fmt.Errorf("creating %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	o, err := build(f, base, b, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	o.file = f
	if err := os.Link(tmp, path); err != nil {
		o.Close()
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		o.Close()
		return nil, err
	}
	o.path = path
	return o, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// build writes a new, empty overlay over base into the empty file f,
// after taking QEMU's writer locks on it where it is a file, and returns
// it open.
func build(f file, base Base, b Backing, opts Options) (*Overlay, error) {
	bits := opts.ClusterBits
	if bits == 0 {
		bits = DefaultClusterBits
	}
	if bits < minClusterBits || bits > maxClusterBits {
		return nil, fmt.Errorf("cluster bits %d: QEMU takes %d to %d", bits, minClusterBits, maxClusterBits)
	}
	if osf, ok := f.(*os.File); ok {
		if err := hostfile.LockWriter(osf); err != nil {
			return nil, err
		}
	}
	o := newOverlay(f, base, base.Size(), 3, bits, opts)
	l1Entries := (o.size + o.l2Entries<<bits - 1) / (o.l2Entries << bits)
	o.l1 = make([]uint64, l1Entries)
	if _, err := o.alloc(1); err != nil { // the header
		return nil, err
	}
	l1Bytes := max(8*l1Entries, 1)
	l1Off, err := o.alloc((l1Bytes + 1<<bits - 1) >> bits)
	if err != nil {
		return nil, err
	}
	o.l1Offset = l1Off
	h, err := newHeader(bits, o.size, l1Entries, l1Off, o.refs.tableOffset, o.refs.tableClusters, b)
	if err != nil {
		return nil, err
	}
	o.refs.moved = false // the header names the table from the start
	for _, w := range []struct {
		p   []byte
		off int64
	}{{h, 0}, {make([]byte, o.end-l1Off), l1Off}} {
		if _, err := o.f.WriteAt(w.p, w.off); err != nil {
			return nil, fmt.Errorf("writing the new overlay: %w", err)
		}
	}
	if err := o.writeRefcounts(); err != nil {
		return nil, err
	}
	if err := o.sync(); err != nil {
		return nil, err
	}
	o.start()
	return o, nil
}

// newOverlay is an overlay of f with nothing read or allocated yet.
func newOverlay(f file, base Base, size int64, version, clusterBits uint32, opts Options) *Overlay {
	cache := opts.TableCacheSize
	if cache <= 0 {
		cache = qcow2.DefaultL2CacheSize
	}
	unsynced := new(atomic.Bool)
	o := &Overlay{
		base:        base,
		f:           trackedFile{f, unsynced},
		unsynced:    unsynced,
		size:        size,
		version:     version,
		clusterBits: clusterBits,
		l2Entries:   int64(1) << (clusterBits - 3),
		l1Dirty:     map[int64]bool{},
		tables:      map[int64]*l2Table{},
		copying:     map[int64]chan struct{}{},
		refs:        refcounts{tableDirty: map[int64]bool{}, blocks: map[int64]*refBlock{}},
		interval:    opts.CommitInterval,
	}
	o.maxTables = int(max(4, cache>>clusterBits))
	if o.interval == 0 {
		o.interval = DefaultCommitInterval
	}
	return o
}

// resume continues the overlay in f after checking that it is one this
// writer may write: a qcow2 image over b, consistent, with nothing the
// writer does not keep right (snapshots, compressed clusters, encryption,
// an external data file, extended L2 entries, other refcount widths).
func resume(f *os.File, path string, base Base, b Backing, opts Options) (*Overlay, error) {
	refuse := func(format string, args ...any) error {
		return &RefusedError{Path: path, Reason: fmt.Sprintf(format, args...)}
	}
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, refuse("it is not a regular file")
	}
	if err := hostfile.LockWriter(f); err != nil {
		return nil, err
	}
	img, err := qcow2.Open(path, qcow2.Options{NoBacking: true, ForceShare: true, AllowLocked: true})
	if err != nil {
		var fe *qcow2.FormatError
		var ue *qcow2.UnsupportedError
		if errors.As(err, &fe) || errors.As(err, &ue) {
			return nil, refuse("%s", strings.TrimPrefix(err.Error(), path+": "))
		}
		return nil, err
	}
	defer img.Close()
	h := img.Header()
	info, err := img.Info()
	if err != nil {
		return nil, err
	}
	switch {
	case info.Format != "qcow2" || h.Version < 2:
		return nil, refuse("it is a %s image, not qcow2", info.Format)
	case info.BackingFilename == "":
		return nil, refuse("it has no backing file: it is an image of its own, not an overlay")
	case !sameBacking(path, info.BackingFilename, b.Name):
		return nil, refuse("its backing file is %q, not this image", info.BackingFilename)
	case info.BackingFilenameFormat != "" && info.BackingFilenameFormat != b.Format:
		return nil, refuse("its backing format is %s, not %s", info.BackingFilenameFormat, b.Format)
	case h.CryptMethod != 0:
		return nil, refuse("it is encrypted")
	case h.IncompatibleFeatures&^(1<<3) != 0: // all but the compression type
		return nil, refuse("it has incompatible features %v (a dirty or corrupt image, an external data file, extended L2 entries): qemu-img check -r all, or qemu-img convert, makes one this writer can continue", info.FormatSpecific.Data.IncompatibleFeatures)
	case h.NbSnapshots != 0:
		return nil, refuse("it has %d internal snapshots", h.NbSnapshots)
	case h.Version >= 3 && h.RefcountOrder != refcountOrder:
		return nil, refuse("its refcounts are %d bits wide; this writer keeps 16-bit ones", 1<<h.RefcountOrder)
	case int64(h.Size) < base.Size():
		return nil, refuse("its disk is %d bytes, smaller than the image's %d", h.Size, base.Size())
	}
	res, err := img.Check()
	if err != nil {
		return nil, err
	}
	if res.Corruptions > 0 || res.CheckErrors > 0 {
		return nil, refuse("qemu-img check would find %d corruptions and %d other errors in it", res.Corruptions, res.CheckErrors)
	}
	if res.CompressedClusters > 0 {
		return nil, refuse("it has %d compressed clusters, which this writer does not rewrite", res.CompressedClusters)
	}

	o := newOverlay(f, base, int64(h.Size)&^511, h.Version, h.ClusterBits, opts)
	o.file, o.path = f, path
	o.l1Offset = int64(h.L1TableOffset)
	if o.l1, err = readEntries(f, o.l1Offset, int64(h.L1Size)); err != nil {
		return nil, fmt.Errorf("%s: reading the L1 table: %w", path, err)
	}
	o.refs.tableOffset, o.refs.tableClusters = int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)
	if o.refs.table, err = readEntries(f, o.refs.tableOffset, o.refs.tableClusters<<(h.ClusterBits-3)); err != nil {
		return nil, fmt.Errorf("%s: reading the refcount table: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	cluster := int64(1) << h.ClusterBits
	o.end = (max(st.Size(), res.ImageEndOffset) + cluster - 1) &^ (cluster - 1)
	if h.Version >= 3 && h.AutoclearFeatures != 0 {
		// A writer that does not keep what autoclear features describe
		// (bitmaps) clears them, so that QEMU knows they are stale.
		if _, err := o.f.WriteAt(make([]byte, 8), offAutoclearFeatures); err != nil {
			return nil, err
		}
		if err := o.sync(); err != nil {
			return nil, err
		}
	}
	o.start()
	return o, nil
}

// sameBacking reports whether the backing file name recorded in the
// overlay at path names the image named want (a path or a URL).
func sameBacking(path, recorded, want string) bool {
	if recorded == want {
		return true
	}
	if !filepath.IsAbs(recorded) {
		recorded = filepath.Join(filepath.Dir(path), recorded)
	}
	a, err1 := os.Stat(recorded)
	b, err2 := os.Stat(want)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

func readEntries(f io.ReaderAt, off, n int64) ([]uint64, error) {
	buf := make([]byte, 8*n)
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil, err
	}
	e := make([]uint64, n)
	for i := range e {
		e[i] = binary.BigEndian.Uint64(buf[8*i:])
	}
	return e, nil
}

// start begins committing changes every interval, until Close.
func (o *Overlay) start() {
	o.stop, o.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(o.done)
		if o.interval < 0 {
			<-o.stop
			return
		}
		t := time.NewTicker(o.interval)
		defer t.Stop()
		for {
			select {
			case <-o.stop:
				return
			case <-t.C:
				o.Sync() // a failure is kept in o.failed and returned to the next writer
			}
		}
	}()
}

// Size is the size of the guest disk in bytes.
func (o *Overlay) Size() int64 { return o.size }

// Path is the overlay's file, as it was named.
func (o *Overlay) Path() string { return o.path }

// Sync makes every write so far durable.
func (o *Overlay) Sync() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return os.ErrClosed
	}
	return o.flush()
}

// Close makes every write durable, lets go of the file and its locks.
func (o *Overlay) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	err := o.flush()
	o.closed = true
	o.mu.Unlock()
	close(o.stop)
	<-o.done
	if o.file != nil {
		err = errors.Join(err, o.file.Close())
	}
	return err
}
