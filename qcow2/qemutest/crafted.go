package qemutest

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Crafted images: headers that QEMU's checks accept, written by hand, in
// small sparse files that declare far more than they hold. They are the
// resource attacks on a reader: memory from declared table sizes, CPU from
// tables that cannot share a cache, decompression bombs.

// Header is the part of a qcow2 v3 header a crafted image sets; the rest
// is fixed (no encryption, refcount table of one cluster at cluster 1).
type Header struct {
	ClusterBits     uint32
	Size            uint64
	L1Size          uint32
	L1Offset        uint64
	NbSnapshots     uint32
	SnapshotsOffset uint64
	BackingFile     string // with backing format qcow2
	FileSize        int64  // the file is truncated (or extended, sparse) to this
}

// WriteImage writes h as a qcow2 v3 image at path.
func WriteImage(t testing.TB, path string, h Header) {
	t.Helper()
	be := binary.BigEndian
	cs := 1 << h.ClusterBits
	b := make([]byte, cs)
	be.PutUint32(b[0:], 0x514649fb)
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[20:], h.ClusterBits)
	be.PutUint64(b[24:], h.Size)
	be.PutUint32(b[36:], h.L1Size)
	be.PutUint64(b[40:], h.L1Offset)
	be.PutUint64(b[48:], uint64(cs)) // refcount table: cluster 1
	be.PutUint32(b[56:], 1)
	be.PutUint32(b[60:], h.NbSnapshots)
	be.PutUint64(b[64:], h.SnapshotsOffset)
	be.PutUint32(b[96:], 4)    // refcount_order
	be.PutUint32(b[100:], 112) // header_length
	ext := 112
	if h.BackingFile != "" {
		be.PutUint32(b[ext:], 0xe2792aca) // backing format
		be.PutUint32(b[ext+4:], 5)
		copy(b[ext+8:], "qcow2")
		ext += 16
	}
	ext += 8 // end of extensions: type 0, length 0
	if h.BackingFile != "" {
		be.PutUint64(b[8:], uint64(ext))
		be.PutUint32(b[16:], uint32(len(h.BackingFile)))
		copy(b[ext:], h.BackingFile)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, max(h.FileSize, int64(2*cs))); err != nil {
		t.Fatal(err)
	}
}

// MaxL1Chain makes a chain of depth images whose every layer declares the
// largest L1 table QEMU opens (32 MiB, for a 2 PiB disk) in a sparse file,
// and returns the top image. Loading the tables whole would take 64 MiB a
// layer.
func MaxL1Chain(t testing.TB, dir string, depth int) string {
	t.Helper()
	const entries = 32 << 20 / 8
	path := ""
	for i := depth - 1; i >= 0; i-- {
		path = filepath.Join(dir, fmt.Sprintf("layer%02d.qcow2", i))
		h := Header{ClusterBits: 16, Size: entries << 29, L1Size: entries, L1Offset: 2 << 16, FileSize: 2<<16 + 32<<20}
		if i < depth-1 {
			h.BackingFile = fmt.Sprintf("layer%02d.qcow2", i+1)
		}
		WriteImage(t, path, h)
	}
	return path
}

// ManySnapshots makes an image with n snapshots, IDs 00000001 and on,
// whose names are nameLen bytes rounded down to 8 (zeros: the file stays
// sparse), and returns its path.
func ManySnapshots(t testing.TB, dir string, n, nameLen int) string {
	t.Helper()
	path := filepath.Join(dir, "snapshots.qcow2")
	const tableOff = 3 << 16
	entry := (40 + 8 + nameLen) &^ 7 // 8-byte IDs, names of up to nameLen bytes
	WriteImage(t, path, Header{ClusterBits: 16, Size: 1 << 30, L1Size: 2, L1Offset: 2 << 16,
		NbSnapshots: uint32(n), SnapshotsOffset: tableOff, FileSize: int64(tableOff + n*entry)})
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range n {
		id := fmt.Sprintf("%08d", i+1)
		e := make([]byte, 40+len(id))
		binary.BigEndian.PutUint64(e[0:], 2<<16) // the active L1 table
		binary.BigEndian.PutUint32(e[8:], 2)
		binary.BigEndian.PutUint16(e[12:], uint16(len(id)))
		binary.BigEndian.PutUint16(e[14:], uint16(entry-40-len(id)))
		copy(e[40:], id)
		if _, err := f.WriteAt(e, int64(tableOff+i*entry)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// Qcow1HugeL1 makes a qcow version 1 image (2 TiB, 512-byte clusters)
// whose L1 table takes 512 MiB of a sparse file.
func Qcow1HugeL1(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "huge-l1.qcow")
	b := make([]byte, 512)
	be := binary.BigEndian
	be.PutUint32(b[0:], 0x514649fb)
	be.PutUint32(b[4:], 1)
	be.PutUint64(b[24:], 1<<41) // size: 2^41 / 2^(9+6) = 64M L1 entries
	b[32], b[33] = 9, 6         // cluster_bits, l2_bits
	be.PutUint64(b[40:], 512)   // L1 table
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 512+512<<20); err != nil {
		t.Fatal(err)
	}
	return path
}

// L2ThrashChain makes a 1 MiB disk: a top image of 512-byte clusters,
// every other one allocated (filled with byte 0x5a) and the rest read from
// below, over depth-1 images of 2 MiB clusters, each with one 2 MiB L2
// table (all unallocated). Every read of an unallocated cluster looks at
// every layer's table; whole tables would not fit a 32 MiB cache.
func L2ThrashChain(t testing.TB, dir string, depth int) string {
	t.Helper()
	be := binary.BigEndian
	for i := depth - 1; i >= 1; i-- {
		path := filepath.Join(dir, fmt.Sprintf("base%02d.qcow2", i))
		h := Header{ClusterBits: 21, Size: 1 << 20, L1Size: 1, L1Offset: 2 << 21, FileSize: 4 << 21}
		if i < depth-1 {
			h.BackingFile = fmt.Sprintf("base%02d.qcow2", i+1)
		}
		WriteImage(t, path, h)
		l1 := make([]byte, 8)
		be.PutUint64(l1, 3<<21) // the L2 table, all zeros
		WriteFile(t, path, 2<<21, l1)
	}
	top := filepath.Join(dir, "top.qcow2")
	const (
		clusters = 2048 // 1 MiB of 512-byte clusters
		perL2    = 64
		l1Off    = 2 * 512
		l2Off    = 3 * 512 // 32 tables, one cluster each
		dataOff  = 64 * 512
	)
	WriteImage(t, top, Header{ClusterBits: 9, Size: 1 << 20, L1Size: clusters / perL2, L1Offset: l1Off,
		BackingFile: "base01.qcow2", FileSize: dataOff + clusters/2*512})
	l1 := make([]byte, 8*clusters/perL2)
	for i := range clusters / perL2 {
		be.PutUint64(l1[8*i:], uint64(l2Off+512*i))
	}
	WriteFile(t, top, l1Off, l1)
	l2 := make([]byte, 8*clusters)
	for c := 0; c < clusters; c += 2 {
		be.PutUint64(l2[8*c:], 1<<63|uint64(dataOff+512*c/2))
	}
	WriteFile(t, top, l2Off, l2)
	data := make([]byte, clusters/2*512)
	for i := range data {
		data[i] = 0x5a
	}
	WriteFile(t, top, dataOff, data)
	return top
}

// DeflateBomb makes an image of one 2 MiB compressed cluster whose 4 MiB
// of deflate data are tiny empty dynamic-Huffman blocks: each costs a
// Huffman table build and produces nothing.
func DeflateBomb(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "bomb.qcow2")
	const (
		cs      = 2 << 20
		dataOff = 4 * cs
		sectors = 2 * cs / 512 // the most a descriptor can count
	)
	WriteImage(t, path, Header{ClusterBits: 21, Size: cs, L1Size: 1, L1Offset: 2 * cs, FileSize: dataOff + 2*cs})
	be := binary.BigEndian
	e := make([]byte, 8)
	be.PutUint64(e, 3*cs)
	WriteFile(t, path, 2*cs, e)
	be.PutUint64(e, 1<<62|uint64(sectors-1)<<49|dataOff)
	WriteFile(t, path, 3*cs, e)
	var w bitWriter
	for len(w.b) < 2*cs-64 {
		emptyDynamicBlock(&w)
	}
	WriteFile(t, path, dataOff, w.b)
	return path
}

// bitWriter writes deflate's LSB-first bit stream.
type bitWriter struct {
	b     []byte
	nbits uint
}

func (w *bitWriter) bits(v uint32, n uint) {
	for i := uint(0); i < n; i++ {
		if w.nbits%8 == 0 {
			w.b = append(w.b, 0)
		}
		w.b[len(w.b)-1] |= byte(v>>i&1) << (w.nbits % 8)
		w.nbits++
	}
}

// code writes a Huffman code, which deflate packs most significant bit
// first.
func (w *bitWriter) code(c uint32, n uint) {
	for i := int(n) - 1; i >= 0; i-- {
		w.bits(c>>uint(i)&1, 1)
	}
}

// emptyDynamicBlock writes a non-final dynamic block whose literal code
// has the end-of-block symbol alone, and no distance codes: 92 bits.
func emptyDynamicBlock(w *bitWriter) {
	w.bits(0, 1)  // not final
	w.bits(2, 2)  // dynamic
	w.bits(0, 5)  // 257 literal/length codes
	w.bits(0, 5)  // 1 distance code
	w.bits(14, 4) // 18 code-length codes, up to symbol 1
	// Code-length code lengths, in deflate's order 16 17 18 0 8 7 9 6 10
	// 5 11 4 12 3 13 2 14 1: symbol 18 gets 1 bit, 0 and 1 get 2 bits.
	order := []int{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1}
	lengths := map[int]uint32{18: 1, 0: 2, 1: 2}
	for _, sym := range order {
		w.bits(lengths[sym], 3)
	}
	// Canonical codes: 18 -> 0, 0 -> 10, 1 -> 11. Lengths of the 258
	// codes: 256 zeros (18 twice: 138 and 118), symbol 256 gets 1, the
	// one distance code 0.
	w.code(0, 1)
	w.bits(138-11, 7)
	w.code(0, 1)
	w.bits(118-11, 7)
	w.code(3, 2)
	w.code(2, 2)
	w.code(0, 1) // the block: end of block
}

// SetBackingName replaces the backing file name of a qcow2 image, which
// QEMU stores last in the first cluster, so a longer name fits.
func SetBackingName(t testing.TB, path, name string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := binary.BigEndian.Uint64(b[8:])
	if off == 0 {
		t.Fatalf("%s has no backing file", path)
	}
	copy(b[off:], name)
	binary.BigEndian.PutUint32(b[16:], uint32(len(name)))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ImageWithBacking makes dir/top.qcow2 (1 MiB) whose backing file is name,
// in format format, whatever name points at: QEMU writes the image against
// a placeholder, whose name is then replaced.
func ImageWithBacking(t testing.TB, dir, name, format string) string {
	t.Helper()
	top := filepath.Join(dir, "top.qcow2")
	WriteFile(t, filepath.Join(dir, "placeholder"), 0, make([]byte, 1<<20))
	Create(t, top, "qcow2", "1M", "backing_file=placeholder", "backing_fmt="+format)
	SetBackingName(t, top, name)
	if err := os.Remove(filepath.Join(dir, "placeholder")); err != nil {
		t.Fatal(err)
	}
	return top
}

// SetSnapshotNames rewrites the snapshot table of the image at path with
// names in place of the snapshots' names, in order (IDs and the rest kept),
// at the end of the file; names QEMU cannot write (a NUL inside, more than
// 255 bytes) are how strangers' images test a reader. The old table's
// clusters are left behind, leaked.
func SetSnapshotNames(t testing.TB, path string, names []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	clusterSize := int64(1) << be.Uint32(b[20:])
	nb, off := int(be.Uint32(b[60:])), int64(be.Uint64(b[64:]))
	if nb != len(names) {
		t.Fatalf("%s has %d snapshots, not %d", path, nb, len(names))
	}
	var table []byte
	for _, name := range names {
		extra, idLen, nameLen := int64(be.Uint32(b[off+36:])), int64(be.Uint16(b[off+12:])), int64(be.Uint16(b[off+14:]))
		e := append([]byte{}, b[off:off+40+extra+idLen]...)
		be.PutUint16(e[14:], uint16(len(name)))
		e = append(e, name...)
		table = append(table, e...)
		for len(table)%8 != 0 {
			table = append(table, 0)
		}
		off = (off + 40 + extra + idLen + nameLen + 7) &^ 7
	}
	at := (int64(len(b)) + clusterSize - 1) &^ (clusterSize - 1)
	be.PutUint64(b[64:], uint64(at))
	b = append(b, make([]byte, at-int64(len(b)))...)
	b = append(b, table...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
