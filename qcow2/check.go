package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/qcowmount/qcowmount/qcow2/internal/lru"
)

// CheckResult is what Check found in an image file. The counts are
// qemu-img check's, under the keys of its --output=json, omitted when
// zero as it omits them.
type CheckResult struct {
	ImageEndOffset     int64  `json:"image-end-offset,omitempty"`
	TotalClusters      int64  `json:"total-clusters,omitempty"`
	CheckErrors        int64  `json:"check-errors"`
	Leaks              int64  `json:"leaks,omitempty"`
	Corruptions        int64  `json:"corruptions,omitempty"`
	AllocatedClusters  int64  `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64  `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64  `json:"compressed-clusters,omitempty"`
	Filename           string `json:"filename"`
	Format             string `json:"format"`
	// Problems are the messages behind the counts, worded as qemu-img
	// check words them (the first maxCheckProblems of them).
	Problems []string `json:"problems,omitempty"`
	// Findings are what an analyst should know before trusting the
	// image, beyond consistency: flags, files it needs, odd fields.
	Findings []Finding `json:"findings,omitempty"`
}

// Finding is one thing worth knowing about an image. Warning marks what
// is odd or risky, rather than a plain fact (a backing file, snapshots).
type Finding struct {
	Kind    string `json:"kind"`
	Warning bool   `json:"warning"`
	Message string `json:"message"`
}

// maxCheckProblems bounds the messages kept: a hostile image can make
// millions; the counts stay exact.
const maxCheckProblems = 1000

// Bits of refcount table and bitmap table entries, as QEMU masks them.
const (
	reftableReservedMask = 0x1ff
	bitmapReservedMask   = 0xff000000000001fe
	bitmapAllOnes        = 1
	// QEMU's bounds on bitmaps (QCOW2_MAX_BITMAPS and its directory, and
	// BME_MAX_TABLE_SIZE).
	maxBitmaps         = 65535
	maxBitmapDirectory = 1024 * maxBitmaps
	maxBitmapTable     = 0x8000000
)

// Check audits the image file (not its backing files) without changing
// it: the refcounts against what the tables reference, as qemu-img check
// does, and findings an analyst wants. Only an I/O error fails it.
func (img *Image) Check() (*CheckResult, error) {
	return img.check(checkWork(img.fileSize))
}

// check is Check within work units of work (checkWork).
func (img *Image) check(work int64) (*CheckResult, error) {
	k := &checker{
		img:    img,
		res:    &CheckResult{Filename: img.path, Format: "qcow2"},
		cs:     img.clusterSize(),
		refs:   map[int64]*refPage{},
		blocks: lru.New[uint64, []byte](refblockCacheSize),
	}
	k.nbClusters = (img.fileSize + k.cs - 1) / k.cs
	k.highestRef = -1
	k.work = work
	var err error
	if img.hdr.Version == 1 {
		k.res.Format = "qcow"
		err = k.checkQcow1()
	} else {
		err = k.checkQcow2()
	}
	if err == nil {
		err = k.findings()
	}
	if errors.Is(err, errCheckBudget) {
		// What was counted is not the whole picture: not checked, and
		// that comes first, before the problems it may have cut short.
		k.res.CheckErrors++
		k.res.Problems = append([]string{err.Error()}, k.res.Problems...)
		return k.res, nil
	}
	if err != nil {
		return nil, err
	}
	return k.res, nil
}

// Kinds of use of a cluster, to name what overlaps.
type useKind uint8

const (
	useNone useKind = iota
	useHeader
	useL1
	useL2
	useData
	useCompressed
	useSnapshotTable
	useSnapshotL1
	useRefcountTable
	useRefcountBlock
	useCryptoHeader
	useBitmapDirectory
	useBitmapTable
	useBitmapData
)

var useNames = [...]string{"nothing", "the header", "an L1 table", "an L2 table", "a data cluster", "compressed data",
	"the snapshot table", "a snapshot's L1 table", "the refcount table", "a refcount block", "the LUKS header",
	"the bitmap directory", "a bitmap table", "bitmap data"}

// sharable says whether two uses of one cluster can both be right: data
// and L2 tables shared with snapshots, compressed clusters side by side.
func sharable(a, b useKind) bool {
	return a == b && (a == useData || a == useL2 || a == useCompressed)
}

// refPage counts references to a run of clusters; pages are made only
// where references fall, so memory follows the metadata, not the file size.
type refPage struct {
	count [refPageLen]uint32
	use   [refPageLen]useKind
}

// refPageLen is the clusters a page counts: small enough that a small
// image's check zeroes little (a fuzzer checks thousands a second), large
// enough that a large image's pages stay few.
const refPageLen = 1 << 12

type checker struct {
	img        *Image
	res        *CheckResult
	cs         int64
	nbClusters int64 // clusters the file holds
	refs       map[int64]*refPage
	work       int64 // table entries (8-byte words read) left to visit
	highestRef int64 // highest cluster referenced, -1 none
	overlaps   int   // overlap findings made
	qcow1      bool  // no refcounts: a cluster put to two uses is a corruption

	reftable []uint64 // the refcount table, for stored refcounts
	// Refcount blocks read, by offset: the copied-flag pass asks for them
	// in the order data lies, not the order they do.
	blocks *lru.Cache[uint64, []byte]
}

// refblockCacheSize bounds the refcount blocks a check keeps: those of
// a 2 TiB image with 64 KiB clusters and 16-bit refcounts.
const refblockCacheSize = 64 << 20

func (k *checker) problem(corruption bool, format string, args ...any) {
	if corruption {
		k.res.Corruptions++
	}
	if len(k.res.Problems) < maxCheckProblems {
		k.res.Problems = append(k.res.Problems, fmt.Sprintf(format, args...))
	} else if len(k.res.Problems) == maxCheckProblems {
		k.res.Problems = append(k.res.Problems, "... further problems are counted, not listed")
	}
}

func (k *checker) find(kind string, warning bool, format string, args ...any) {
	k.res.Findings = append(k.res.Findings, Finding{kind, warning, fmt.Sprintf(format, args...)})
}

// errCheckBudget stops a check whose tables, read as they point at each
// other (65536 snapshots of 32 MiB L1 tables, every L1 entry naming the
// same L2 table), add up to far more work than the file's size explains.
var errCheckBudget = errors.New("the image's tables, as they reference each other, add up to far more than the file holds: stopped counting")

// checkWork is how many table entries (8-byte words) a check may visit:
// 2^25 (about a second here), plus a quarter of the file's size in bytes
// (two passes over a file made of nothing but L2 tables; an image of
// data has one entry per 64 KiB cluster, and dozens of snapshots sharing
// its tables stay far below). Counted in work, not bytes read: reading
// one L2 table thousands of times is cheap in bytes and costly in entries.
func checkWork(fileSize int64) int64 { return 1<<25 + fileSize/4 }

// spend takes n units of work from the budget.
func (k *checker) spend(n int64) error {
	if k.work -= n; k.work < 0 {
		return errCheckBudget
	}
	return nil
}

// readAt reads the image file; what lies past its end reads as zeros, as
// QEMU reads it.
func (k *checker) readAt(p []byte, off uint64) error {
	// What is read is visited: an entry a word.
	if err := k.spend(int64(len(p)) / 8); err != nil {
		return err
	}
	clear(p)
	if off >= uint64(k.img.fileSize) {
		return nil
	}
	n := min(int64(len(p)), k.img.fileSize-int64(off))
	if _, err := k.img.file.ReadAt(p[:n], int64(off)); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: reading at %#x: %w", k.img.path, off, err)
	}
	return nil
}

// entries calls fn with the n big-endian 64-bit words from off, read a
// slice at a time.
func (k *checker) entries(off, n uint64, fn func(i, e uint64) error) error {
	buf := make([]byte, min(n*8, 64<<10))
	for i := uint64(0); i < n; {
		m := min(n-i, uint64(len(buf)/8))
		if err := k.readAt(buf[:m*8], off+i*8); err != nil {
			return err
		}
		for j := uint64(0); j < m; j++ {
			if err := fn(i+j, binary.BigEndian.Uint64(buf[j*8:])); err != nil {
				return err
			}
		}
		i += m
	}
	return nil
}

// inc counts a reference to each cluster of [off, off+size), as QEMU's
// qcow2_inc_refcounts_imrt does, and notes clusters put to two uses.
func (k *checker) inc(off, size uint64, use useKind) {
	if size == 0 {
		return
	}
	fileSize, cs := uint64(k.img.fileSize), uint64(k.cs)
	if off > math.MaxInt64-size || off+size >= fileSize+cs {
		k.problem(true, "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x%x size 0x%x", off, size)
		return
	}
	for c := int64(off / cs); c <= int64((off+size-1)/cs); c++ {
		page := k.refs[c/refPageLen]
		if page == nil {
			page = &refPage{}
			k.refs[c/refPageLen] = page
		}
		i := c % refPageLen
		if page.count[i] == math.MaxUint32 {
			k.problem(true, "ERROR: overflow cluster offset=0x%x", c*k.cs)
			continue
		}
		page.count[i]++
		k.highestRef = max(k.highestRef, c)
		if prev := page.use[i]; prev == useNone {
			page.use[i] = use
		} else if !sharable(prev, use) {
			if k.qcow1 {
				k.res.Corruptions++
			}
			if k.overlaps < maxCheckProblems {
				k.overlaps++
				k.find("overlap", true, "cluster %d (offset %#x) is used as %s and as %s", c, c*k.cs, useNames[prev], useNames[use])
			}
		}
	}
}

func (k *checker) computed(c int64) uint64 {
	if page := k.refs[c/refPageLen]; page != nil {
		return uint64(page.count[c%refPageLen])
	}
	return 0
}

func (k *checker) checkQcow2() error {
	img, h := k.img, &k.img.hdr
	dataFile := img.hasDataFile()
	if h.Size&^511 != 0 {
		k.res.TotalClusters = (int64(h.Size&^511) + k.cs - 1) / k.cs
	}
	k.inc(0, uint64(k.cs), useHeader)
	if err := k.walkL1(h.L1TableOffset, uint64(h.L1Size), useL1, true); err != nil {
		return err
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return err
	}
	if dataFile && len(snaps) > 0 {
		k.problem(true, "ERROR %d snapshots in image with data file", len(snaps))
	}
	for _, sn := range snaps {
		if sn.L1Offset&uint64(k.cs-1) != 0 {
			k.problem(true, "ERROR snapshot %s (%s) l1_offset=%#x: L1 table is not cluster aligned; snapshot table entry corrupted", sn.ID, sn.Name, sn.L1Offset)
			continue
		}
		if sn.L1Size > maxL1Bytes/8 {
			k.problem(true, "ERROR snapshot %s (%s) l1_size=%#x: L1 table is too large; snapshot table entry corrupted", sn.ID, sn.Name, sn.L1Size)
			continue
		}
		if err := k.walkL1(sn.L1Offset, uint64(sn.L1Size), useSnapshotL1, false); err != nil {
			return err
		}
	}
	if len(snaps) > 0 {
		last := snaps[len(snaps)-1]
		k.inc(h.SnapshotsOffset, uint64(last.entryOffset+last.entryLen)-h.SnapshotsOffset, useSnapshotTable)
	}
	reftableBytes := uint64(h.RefcountTableClusters) << h.ClusterBits
	k.inc(h.RefcountTableOffset, reftableBytes, useRefcountTable)
	if img.ext.hasFDE {
		k.inc(img.ext.fdeOffset, img.ext.fdeLength, useCryptoHeader)
	}
	if err := k.walkBitmaps(); err != nil {
		return err
	}
	k.reftable = make([]uint64, 0, reftableBytes/8)
	if err := k.entries(h.RefcountTableOffset, reftableBytes/8, func(_, e uint64) error {
		k.reftable = append(k.reftable, e)
		return nil
	}); err != nil {
		return err
	}
	k.checkRefblocks()
	if err := k.compareRefcounts(); err != nil {
		return err
	}
	return k.checkCopiedFlags()
}

// walkL1 counts an L1 table and everything its L2 tables reference;
// active is for the current state, whose clusters the totals count.
func (k *checker) walkL1(off, n uint64, use useKind, active bool) error {
	if n == 0 {
		return nil
	}
	k.inc(off, n*8, use)
	l2 := make([]byte, k.cs)
	return k.entries(off, n, func(_, e uint64) error {
		if e == 0 {
			return nil
		}
		if e&l1ReservedMask != 0 {
			k.problem(true, "ERROR found L1 entry with reserved bits set: %x", e)
		}
		l2Off := e & entryOffsetMask
		k.inc(l2Off, uint64(k.cs), useL2)
		if l2Off&uint64(k.cs-1) != 0 {
			k.problem(true, "ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2Off)
		}
		if err := k.readAt(l2, l2Off); err != nil {
			return err
		}
		k.walkL2(l2, active)
		return nil
	})
}

func (k *checker) clusterType(e uint64) clusterType {
	return classify(e, k.img.extendedL2, k.img.hasDataFile())
}

func (k *checker) l2Entry(table []byte, i int) (entry, bitmap uint64) {
	if k.img.extendedL2 {
		return binary.BigEndian.Uint64(table[16*i:]), binary.BigEndian.Uint64(table[16*i+8:])
	}
	return binary.BigEndian.Uint64(table[8*i:]), 0
}

// walkL2 counts what one L2 table references, as check_refcounts_l2.
func (k *checker) walkL2(table []byte, active bool) {
	dataFile := k.img.hasDataFile()
	next := uint64(0) // where the next cluster would be were the data contiguous
	for i := range int(1 << k.img.l2Bits) {
		e, bitmap := k.l2Entry(table, i)
		typ := k.clusterType(e)
		if typ != clusterCompressed && e&l2ReservedMask != 0 {
			k.problem(true, "ERROR found l2 entry with reserved bits set: %x", e)
		}
		switch typ {
		case clusterCompressed:
			if e&l2Copied != 0 {
				host, _ := qcow2Format{}.compressedRange(k.img, e)
				k.problem(true, "ERROR: coffset=0x%x: copied flag must never be set for compressed clusters", host)
				e &^= l2Copied
			}
			if dataFile {
				k.problem(true, "ERROR compressed cluster %d with data file, entry=0x%x", i, e)
				continue
			}
			if bitmap != 0 {
				k.problem(true, "ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=0x%x", i, e)
				continue
			}
			host, n := qcow2Format{}.compressedRange(k.img, e)
			k.inc(host, uint64(n), useCompressed)
			if active {
				k.res.AllocatedClusters++
				k.res.CompressedClusters++
				k.res.FragmentedClusters++
			}
		case clusterZeroAlloc, clusterNormal:
			off := e & entryOffsetMask
			if (bitmap>>32)&bitmap != 0 {
				k.problem(true, "ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", off)
			}
			if off&uint64(k.cs-1) != 0 {
				hasData := e&l2Zero == 0
				if k.img.extendedL2 {
					hasData = bitmap&subclusterAllMask != 0
				}
				if hasData {
					k.problem(true, "ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", off)
				} else {
					k.problem(true, "ERROR offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.", off)
				}
			}
			if active {
				k.res.AllocatedClusters++
				if next != 0 && off != next {
					k.res.FragmentedClusters++
				}
				next = off + uint64(k.cs)
			}
			if !dataFile {
				k.inc(off, uint64(k.cs), useData)
			}
		case clusterUnallocated:
			if bitmap&subclusterAllMask != 0 {
				k.problem(true, "ERROR: Unallocated cluster has non-zero subcluster allocation map")
			}
		}
	}
}

// walkBitmaps counts the persistent bitmaps' directory, tables and data,
// as qcow2_check_bitmaps_refcounts.
func (k *checker) walkBitmaps() error {
	ext := &k.img.ext
	if !ext.hasBitmaps || k.img.hdr.AutoclearFeatures&AutoclearBitmaps == 0 || ext.nbBitmaps == 0 {
		return nil
	}
	if ext.nbBitmaps > maxBitmaps || ext.bitmapDirSize > maxBitmapDirectory || ext.bitmapDirOff&uint64(k.cs-1) != 0 {
		k.problem(true, "ERROR bitmaps extension: %d bitmaps, directory of %d bytes at %#x: out of bounds", ext.nbBitmaps, ext.bitmapDirSize, ext.bitmapDirOff)
		return nil
	}
	k.inc(ext.bitmapDirOff, ext.bitmapDirSize, useBitmapDirectory)
	dir := make([]byte, ext.bitmapDirSize)
	if err := k.readAt(dir, ext.bitmapDirOff); err != nil {
		return err
	}
	be := binary.BigEndian
	for pos, i := uint64(0), uint32(0); i < ext.nbBitmaps; i++ {
		if pos+24 > uint64(len(dir)) {
			k.problem(true, "ERROR bitmap directory: entry %d runs past its end", i)
			return nil
		}
		e := dir[pos:]
		tableOff, tableSize := be.Uint64(e), uint64(be.Uint32(e[8:]))
		nameSize, extraSize := uint64(be.Uint16(e[18:])), uint64(be.Uint32(e[20:]))
		pos += (24 + extraSize + nameSize + 7) &^ 7
		if tableSize > maxBitmapTable || tableOff&uint64(k.cs-1) != 0 {
			k.problem(true, "ERROR bitmap %d: table of %d entries at %#x is out of bounds", i, tableSize, tableOff)
			continue
		}
		k.inc(tableOff, tableSize*8, useBitmapTable)
		if err := k.entries(tableOff, tableSize, func(_, t uint64) error {
			off := t & entryOffsetMask
			if t&bitmapReservedMask != 0 || (off != 0 && (t&bitmapAllOnes != 0 || off&uint64(k.cs-1) != 0)) {
				k.problem(true, "ERROR bitmap %d: table entry %#x is invalid", i, t)
				return nil
			}
			if off != 0 {
				k.inc(off, uint64(k.cs), useBitmapData)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// checkRefblocks checks the refcount table's entries and counts the
// blocks, as QEMU's check_refblocks.
func (k *checker) checkRefblocks() {
	for i, e := range k.reftable {
		off := e &^ reftableReservedMask
		if e&reftableReservedMask != 0 {
			k.problem(true, "ERROR refcount table entry %d has reserved bits set", i)
			continue
		}
		if int64(off>>k.img.clusterBits) >= k.nbClusters {
			k.problem(true, "ERROR refcount block %d is outside image", i)
			continue
		}
		if off != 0 {
			k.inc(off, uint64(k.cs), useRefcountBlock)
			if n := k.computed(int64(off >> k.img.clusterBits)); n != 1 {
				k.problem(true, "ERROR refcount block %d refcount=%d", i, n)
			}
		}
	}
}

// refcountsPerBlock is how many refcounts one refcount block holds.
func (k *checker) refcountsPerBlock() int64 {
	return k.cs * 8 >> k.img.hdr.RefcountOrder
}

// stored is the refcount the image records for cluster c; ok is false
// where QEMU could not read it (a refcount block not cluster aligned).
func (k *checker) stored(c int64) (n uint64, ok bool, err error) {
	per := k.refcountsPerBlock()
	idx := c / per
	if idx >= int64(len(k.reftable)) {
		return 0, true, nil
	}
	off := k.reftable[idx] &^ reftableReservedMask
	if off == 0 {
		return 0, true, nil
	}
	if off&uint64(k.cs-1) != 0 {
		return 0, false, nil
	}
	b, cached := k.blocks.Get(off)
	if !cached {
		b = make([]byte, k.cs)
		if err := k.readAt(b, off); err != nil {
			return 0, false, err
		}
		k.blocks.Add(off, b, k.cs)
	}
	i := c % per
	switch order := k.img.hdr.RefcountOrder; order {
	case 0, 1, 2:
		bits := int64(1) << order
		return uint64(b[i*bits/8]>>(i*bits%8)) & (1<<bits - 1), true, nil
	case 3:
		return uint64(b[i]), true, nil
	case 4:
		return uint64(binary.BigEndian.Uint16(b[2*i:])), true, nil
	case 5:
		return uint64(binary.BigEndian.Uint32(b[4*i:])), true, nil
	}
	return binary.BigEndian.Uint64(b[8*i:]), true, nil
}

// compareRefcounts compares each cluster's stored refcount with the
// references counted, as QEMU's compare_refcounts; it sets the image end.
func (k *checker) compareRefcounts() error {
	highest := int64(0)
	unreadable := int64(0)
	for c := int64(0); c < max(k.nbClusters, k.highestRef+1); c++ {
		stored, ok, err := k.stored(c)
		if err != nil {
			return err
		}
		if !ok {
			if unreadable == 0 {
				k.problem(false, "Can't get refcount for cluster %d: its refcount block is not cluster aligned", c)
			}
			unreadable++
			k.res.CheckErrors++
			continue
		}
		computed := k.computed(c)
		if stored > 0 || computed > 0 {
			highest = c
		}
		switch {
		case stored < computed:
			k.problem(true, "ERROR cluster %d refcount=%d reference=%d", c, stored, computed)
		case stored > computed:
			k.res.Leaks++
			k.problem(false, "Leaked cluster %d refcount=%d reference=%d", c, stored, computed)
		}
	}
	k.res.ImageEndOffset = (highest + 1) * k.cs
	return nil
}

// checkCopiedFlags checks the active tables' copied flags against the
// refcounts, as QEMU's check_oflag_copied.
func (k *checker) checkCopiedFlags() error {
	h := &k.img.hdr
	l2 := make([]byte, k.cs)
	return k.entries(h.L1TableOffset, uint64(h.L1Size), func(i, e uint64) error {
		l2Off := e & entryOffsetMask
		if l2Off == 0 {
			return nil
		}
		n, ok, err := k.stored(int64(l2Off >> k.img.clusterBits))
		if err != nil {
			return err
		}
		if ok && (n == 1) != (e&l2Copied != 0) {
			k.problem(true, "ERROR OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", i, e, n)
		}
		if err := k.readAt(l2, l2Off); err != nil {
			return err
		}
		for j := range int(1 << k.img.l2Bits) {
			entry, _ := k.l2Entry(l2, j)
			if typ := k.clusterType(entry); typ != clusterNormal && typ != clusterZeroAlloc {
				continue
			}
			n, ok := uint64(1), true
			if !k.img.hasDataFile() {
				if n, ok, err = k.stored(int64((entry & entryOffsetMask) >> k.img.clusterBits)); err != nil {
					return err
				}
			}
			if ok && (n == 1) != (entry&l2Copied != 0) {
				k.problem(true, "ERROR OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", entry, n)
			}
		}
		return nil
	})
}
