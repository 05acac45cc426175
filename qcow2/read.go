package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"github.com/qcowmount/qcowmount/qcow2/internal/lru"
)

// extentKind says where the bytes of a guest range come from.
type extentKind uint8

const (
	extentZero       extentKind = iota // reads as zeros
	extentBacking                      // unallocated: the backing image, or zeros
	extentData                         // a run of host bytes in the data file
	extentCompressed                   // one compressed cluster
)

// extent is a run of guest bytes of one kind, starting at a guest offset.
type extent struct {
	kind extentKind
	n    int64  // length in bytes
	host uint64 // extentData: host offset of the first byte; extentCompressed: the descriptor
}

// ReadAt reads the guest disk. It follows io.ReaderAt: reads that reach past
// the end of the disk return what there is and io.EOF.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= img.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > img.size-off {
		p, eof = p[:img.size-off], io.EOF
	}
	if err := img.read(p, off); err != nil {
		return 0, fmt.Errorf("%s: guest offset %#x: %w", img.path, off, err)
	}
	return len(p), eof
}

// HostRange reports where the guest range [off, off+n) lies when all of it
// is one run of data in one host file, as it is for most reads of an
// uncompressed image: the file and the offset in it. A caller can then
// move the bytes without copying them through user space (splice). It
// answers false for anything else (encrypted data above all), and for a
// range that reaches past the end of the file as it is now, which ReadAt
// reports as an error.
func (img *Image) HostRange(off int64, n int) (*os.File, int64, bool) {
	data, local := osFile(img.data)
	if !local {
		return nil, 0, false
	}
	host, ok := img.dataRun(off, n)
	if !ok {
		return nil, 0, false
	}
	st, err := data.Stat()
	if err != nil || int64(host)+int64(n) > st.Size() {
		return nil, 0, false
	}
	return data, int64(host), true
}

// lender is a File that can lend bytes from its cache without copying
// them (remote.File): the slices stay valid until release is called.
type lender interface {
	Size() int64
	Pin(off int64, n int) (bufs [][]byte, release func(), err error)
}

// PinRange is HostRange for files that lend their bytes (remote images):
// when all of the guest range [off, off+n) is one run of data in such a
// file, it returns the bytes, held until release is called. It returns no
// bytes and no error for anything else, which ReadAt then reads.
func (img *Image) PinRange(off int64, n int) (bufs [][]byte, release func(), err error) {
	var l lender
	switch f := img.data.(type) {
	case lender:
		l = f
	case namedReader: // New's reader
		l, _ = f.ReaderAt.(lender)
	}
	if l == nil {
		return nil, nil, nil
	}
	host, ok := img.dataRun(off, n)
	if !ok || int64(host)+int64(n) > l.Size() {
		return nil, nil, nil
	}
	bufs, release, err = l.Pin(int64(host), n)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: guest offset %#x: reading %s at host offset %#x: %w", img.path, off, img.data.Name(), host, err)
	}
	return bufs, release, nil
}

// dataRun returns the host offset of the guest range [off, off+n) when
// all of it is one run of unencrypted data.
func (img *Image) dataRun(off int64, n int) (uint64, bool) {
	if img.hdr.CryptMethod != CryptNone || off < 0 || n <= 0 || off+int64(n) > img.size {
		return 0, false
	}
	e, err := img.lookup(off, int64(n))
	if err != nil || e.kind != extentData || e.n < int64(n) {
		return 0, false
	}
	return e.host, true
}

// read fills p, which lies inside the disk, from guest offset off.
func (img *Image) read(p []byte, off int64) error {
	var jobs []compressedJob
	for len(p) > 0 {
		e, err := img.lookup(off, int64(len(p)))
		if err != nil {
			return err
		}
		dst := p[:e.n]
		switch e.kind {
		case extentZero:
			clear(dst)
		case extentBacking:
			err = img.readBacking(dst, off)
		case extentData:
			if img.hdr.CryptMethod != CryptNone {
				err = img.readEncrypted(dst, e.host, off)
			} else {
				err = img.readData(dst, e.host)
			}
		case extentCompressed:
			if e.n == img.clusterSize() {
				// A whole cluster: decompress straight into p, later and
				// in parallel with the other whole clusters of this read.
				jobs = append(jobs, compressedJob{dst, e.host})
			} else {
				err = img.readCompressedPart(dst, e.host, off&(img.clusterSize()-1))
			}
		}
		if err != nil {
			return err
		}
		p, off = p[e.n:], off+e.n
	}
	return img.runCompressed(jobs)
}

func (img *Image) clusterSize() int64 { return 1 << img.clusterBits }

// l2EntryWords is the size of an L2 entry in 64-bit words.
func (img *Image) l2EntryWords() int64 {
	if img.extendedL2 {
		return 2
	}
	return 1
}

func (img *Image) l2TableBytes() int64 { return img.l2EntryWords() * 8 << img.l2Bits }

// readBacking reads an unallocated range: from the backing image as far as
// it reaches, zeros after that.
func (img *Image) readBacking(p []byte, off int64) error {
	if img.backing == nil || off >= img.backing.Size() {
		clear(p)
		return nil
	}
	n := int(min(int64(len(p)), img.backing.Size()-off))
	if m, err := img.backing.ReadAt(p[:n], off); m < n {
		return fmt.Errorf("backing file: %w", err)
	}
	clear(p[n:])
	return nil
}

// readData reads host bytes of allocated clusters; a read that ends early
// means the metadata points past the end of the file.
func (img *Image) readData(p []byte, host uint64) error {
	n, err := img.data.ReadAt(p, int64(host))
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("data at host offset %#x (%d bytes) lies past the end of %s", host, len(p), img.data.Name())
	}
	return fmt.Errorf("reading %s at host offset %#x: %w", img.data.Name(), host, err)
}

// Tables are read and cached in slices of at most tableSliceBytes, as QEMU
// caches L2 slices: a lookup costs one small read however large the table,
// a deep chain of 2 MiB tables cannot thrash the cache, and an L1 table
// that a sparse file declares at 32 MiB costs only the slices read.
const tableSliceBytes = 4096

// Kinds of cached table slices.
const (
	kindCluster uint8 = iota // the decompressed-cluster cache's keys
	kindL1
	kindL2
)

// l1Entry returns entry i of the L1 table and where it lies in the file;
// 0 for an index past the entries that cover the disk.
func (img *Image) l1Entry(i int64) (uint64, int64, error) {
	if i >= img.l1Entries {
		return 0, 0, nil
	}
	const perSlice = tableSliceBytes / 8
	first := i / perSlice * perSlice
	sliceOff := img.l1Offset + uint64(first)*8
	// Most images have one L1 slice, and most reads stay in one: keep the
	// last one at hand, past the cache's lock.
	if last := img.lastL1.Load(); last != nil && last.first == first {
		return last.entries[i-first], int64(sliceOff) + (i-first)*8, nil
	}
	t, err := img.tableSlice(kindL1, sliceOff, min(perSlice, img.l1Entries-first), "L1 table", int64(sliceOff))
	if err != nil {
		return 0, 0, err
	}
	img.lastL1.Store(&l1Slice{first, t})
	return t[i-first], int64(sliceOff) + (i-first)*8, nil
}

// l1Slice is a slice of the L1 table from entry first on.
type l1Slice struct {
	first   int64
	entries []uint64
}

// l2Slice returns the slice of an L2 table that holds the entry of guest
// cluster number cluster, with the slice's host offset; nil when the L1
// entry is unallocated.
func (img *Image) l2Slice(cluster int64) ([]uint64, uint64, error) {
	entry, at, err := img.l1Entry(cluster >> img.l2Bits)
	if err != nil || entry == 0 {
		return nil, 0, err
	}
	tableOff, err := img.format.l2Offset(img, entry, at)
	if err != nil || tableOff == 0 {
		return nil, 0, err
	}
	perSlice := img.sliceEntries
	words := perSlice * img.l2EntryWords()
	first := cluster & (1<<img.l2Bits - 1) / perSlice * perSlice
	sliceOff := tableOff + uint64(first*img.l2EntryWords()*8)
	t, err := img.tableSlice(kindL2, sliceOff, words, "L1 entry", at)
	return t, sliceOff, err
}

// tableSlice returns n big-endian 64-bit entries at host offset off, from
// the cache or the file. field and at name the metadata that pointed
// there, for a table that lies past the end of the file.
func (img *Image) tableSlice(kind uint8, off uint64, n int64, field string, at int64) ([]uint64, error) {
	key := cacheKey{img.id, kind, off}
	if t, ok := img.chain.tables.Get(key); ok {
		return t, nil
	}
	// Read the entries straight into place and decode them there: one
	// allocation per slice, no garbage.
	t := make([]uint64, n)
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&t[0])), len(t)*8)
	if got, err := img.file.ReadAt(buf, int64(off)); got < len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, img.formatErr(field, at, "table at %#x lies past the end of the file (%d of %d bytes there)", off, got, len(buf))
		}
		return nil, fmt.Errorf("reading %s at host offset %#x: %w", img.file.Name(), off, err)
	}
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	// With 512-byte clusters a slice is 512 bytes: the cache's own
	// bookkeeping is a quarter of what it holds, and counts.
	img.chain.tables.Add(key, t, int64(len(buf))+lru.EntryOverhead)
	return t, nil
}

// lookup returns the longest run of one kind that starts at guest offset
// off, up to limit bytes, within one L2 slice. Runs of data clusters that
// are contiguous on the host come back as one extent, so they take one read.
func (img *Image) lookup(off, limit int64) (extent, error) {
	cs := img.clusterSize()
	table, tableOff, err := img.l2Slice(off >> img.clusterBits)
	if err != nil {
		return extent{}, err
	}
	if table == nil {
		// No L2 table: all the range it would cover is unallocated.
		span := cs << img.l2Bits
		return extent{kind: extentBacking, n: min(limit, (off/span+1)*span-off)}, nil
	}
	span := cs * img.sliceEntries // guest bytes one slice covers
	limit = min(limit, (off/span+1)*span-off)
	var run extent
	for first := true; ; first = false {
		e, err := img.format.clusterExtent(img, table, tableOff, off)
		if err != nil {
			if first {
				return extent{}, err
			}
			break // the caller will see the error on its next lookup
		}
		if first {
			run = e
		} else if e.kind != run.kind || e.kind == extentCompressed ||
			(e.kind == extentData && e.host != run.host+uint64(run.n)) {
			break
		} else {
			run.n += e.n
		}
		off += e.n
		if run.n >= limit || off&(cs-1) != 0 {
			break // the run ended inside a cluster
		}
	}
	run.n = min(run.n, limit)
	return run, nil
}

// l2Offset checks an L1 entry and returns the offset of the L2 table it
// points to; 0 for none.
func (qcow2Format) l2Offset(img *Image, entry uint64, at int64) (uint64, error) {
	if entry&l1ReservedMask != 0 {
		return 0, img.formatErr("L1 entry", at, "%#016x has reserved bits %#x set", entry, entry&l1ReservedMask)
	}
	tableOff := entry & entryOffsetMask
	if tableOff&uint64(img.clusterSize()-1) != 0 {
		return 0, img.formatErr("L1 entry", at, "L2 table offset %#x is not cluster aligned", tableOff)
	}
	return tableOff, nil
}

// clusterExtent classifies the bytes from guest offset off to the end of
// their run inside off's cluster, from the L2 slice at host offset tableOff.
func (qcow2Format) clusterExtent(img *Image, table []uint64, tableOff uint64, off int64) (extent, error) {
	cs := img.clusterSize()
	in := off & (cs - 1)
	index := (off >> img.clusterBits) & (img.sliceEntries - 1)
	stride := img.l2EntryWords()
	entry := table[index*stride]
	at := int64(tableOff) + index*stride*8
	typ := classify(entry, img.extendedL2, img.hasDataFile())
	if typ == clusterCompressed {
		if img.hasDataFile() {
			return extent{}, img.formatErr("L2 entry", at, "compressed cluster in an image with an external data file")
		}
		return extent{kind: extentCompressed, n: cs - in, host: entry &^ (l2Copied | l2Compressed)}, nil
	}
	if entry&l2ReservedMask != 0 {
		return extent{}, img.formatErr("L2 entry", at, "%#016x has reserved bits %#x set", entry, entry&l2ReservedMask)
	}
	host := entry & entryOffsetMask
	allocated := typ == clusterNormal || typ == clusterZeroAlloc
	if allocated {
		if host&uint64(cs-1) != 0 {
			return extent{}, img.formatErr("L2 entry", at, "data cluster offset %#x is not cluster aligned", host)
		}
		if img.hasDataFile() && host != uint64(off-in) {
			return extent{}, img.formatErr("L2 entry", at, "external data file offset %#x differs from the guest offset %#x", host, off-in)
		}
	}
	if img.extendedL2 {
		return img.subclusterExtent(table[index*2+1], at, typ == clusterNormal, host, in)
	}
	switch typ {
	case clusterZeroPlain, clusterZeroAlloc:
		if img.hdr.Version < 3 {
			return extent{}, img.formatErr("L2 entry", at, "zero flag set in a version 2 image")
		}
		return extent{kind: extentZero, n: cs - in}, nil
	case clusterNormal:
		return extent{kind: extentData, n: cs - in, host: host + uint64(in)}, nil
	}
	return extent{kind: extentBacking, n: cs - in}, nil
}

// subclusterExtent classifies the run of subclusters that holds in-cluster
// offset in, from an extended L2 entry's bitmap.
func (img *Image) subclusterExtent(bitmap uint64, at int64, allocated bool, host uint64, in int64) (extent, error) {
	allocBits, zeroBits := bitmap&subclusterAllMask, bitmap>>32
	if allocated && allocBits&zeroBits != 0 {
		return extent{}, img.formatErr("L2 bitmap", at+8, "%#016x marks subclusters both allocated and zero", bitmap)
	}
	if !allocated && allocBits != 0 {
		return extent{}, img.formatErr("L2 bitmap", at+8, "%#016x marks subclusters allocated in an unallocated cluster", bitmap)
	}
	kindOf := func(sc int64) extentKind {
		switch {
		case zeroBits&(1<<sc) != 0:
			return extentZero
		case allocBits&(1<<sc) != 0:
			return extentData
		default:
			return extentBacking
		}
	}
	scSize := img.clusterSize() / subclustersPerCl
	sc := in / scSize
	kind := kindOf(sc)
	end := sc + 1
	for end < subclustersPerCl && kindOf(end) == kind {
		end++
	}
	e := extent{kind: kind, n: end*scSize - in}
	if kind == extentData {
		e.host = host + uint64(in)
	}
	return e, nil
}
