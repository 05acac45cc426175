package qemutest

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// Hostile is a damaged image of the corpus and what a reader must do
// with it: refuse it at open naming a field, or open it and fail only the
// reads of the damaged ranges, reading everything else as QEMU reads the
// undamaged image.
type Hostile struct {
	Name string
	Path string
	// OpenError, when set, is text the error from opening must contain:
	// the field at fault. Nothing else is checked then.
	OpenError string
	// Bad are guest ranges [start, end) whose reads must fail (EIO through
	// FUSE); every other byte must equal Want's.
	Bad [][2]int64
	// Want is QEMU's raw output of the image before the damage.
	Want string
	// Passphrase opens the image where it is encrypted.
	Passphrase string
}

// HostilePassphrase is the passphrase of the encrypted images of the
// corpus.
const HostilePassphrase = "hostile corpus"

// IsBad reports whether guest offset off lies in a damaged range.
func (h Hostile) IsBad(off int64) bool {
	for _, r := range h.Bad {
		if off >= r[0] && off < r[1] {
			return true
		}
	}
	return false
}

// hostileBase is an undamaged image and where its tables lie.
type hostileBase struct {
	path     string
	raw      string
	size     int64
	l1Off    int64
	l2Off    int64 // the first L2 table
	clusters int64 // cluster size
	luksOff  int64 // where an encrypted base keeps its LUKS header
}

// The base images have 4 KiB clusters, so one L2 table maps 2 MiB; they
// are 4 MiB, with data in both L2 tables, a zero cluster and a hole.
const (
	hostileCluster = 4096
	hostileSize    = 4 << 20
	hostileL2Span  = hostileCluster * hostileCluster / 8
)

func buildHostileBase(t testing.TB, dir, name, compat, compression string) hostileBase {
	t.Helper()
	src := filepath.Join(dir, name+".src.raw")
	var text strings.Builder
	for i := 0; text.Len() < 64<<10; i++ {
		fmt.Fprintf(&text, "line %06d of a guest file that compresses well enough\n", i)
	}
	// Half random, half zeros: compressed clusters of several sectors.
	for i := range int64(8) {
		WriteFile(t, src, i*hostileCluster, Pattern(byte(10+i), hostileCluster/2))
	}
	WriteFile(t, src, 64<<10, Pattern(5, 8<<10))
	WriteFile(t, src, hostileL2Span+8192, []byte(text.String()[:16<<10]))
	if err := os.Truncate(src, hostileSize); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".qcow2")
	opts := fmt.Sprintf("cluster_size=%d,compat=%s", hostileCluster, compat)
	args := []string{"convert", "-q", "-f", "raw", "-O", "qcow2", "-o", opts}
	if compression != "" {
		args = append(args, "-c", "-o", "compression_type="+compression)
	}
	Run(t, "qemu-img", append(args, src, path)...)
	if compat == "1.1" && compression == "" {
		IO(t, path, "write -z 16k 4k")
	}
	b := readAll(t, path)
	l1Off := int64(binary.BigEndian.Uint64(b[40:]))
	return hostileBase{
		path: path, raw: Raw(t, path), size: hostileSize,
		l1Off:    l1Off,
		l2Off:    int64(binary.BigEndian.Uint64(b[l1Off:]) & 0x00fffffffffffe00),
		clusters: hostileCluster,
	}
}

func readAll(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// l2Entry is the file offset of the first L2 table's entry for cluster i.
func (b hostileBase) l2Entry(i int64) int64 { return b.l2Off + 8*i }

// HostileCorpus writes the damaged images into dir: the cases of QEMU's
// iotests 080 and 060 and more, each made from an image qemu-img wrote.
func HostileCorpus(t testing.TB, dir string) []Hostile {
	t.Helper()
	Require(t, "qemu-img", "qemu-io")
	v3 := buildHostileBase(t, dir, "v3", "1.1", "")
	v2 := buildHostileBase(t, dir, "v2", "0.10", "")
	zlib := buildHostileBase(t, dir, "zlib", "1.1", "zlib")
	zst := buildHostileBase(t, dir, "zstd", "1.1", "zstd")
	snap := buildHostileBase(t, dir, "snap", "1.1", "")
	Run(t, "qemu-img", "snapshot", "-c", "s1", snap.path)
	luks := buildHostileLUKS(t, dir)
	snapTable := int64(binary.BigEndian.Uint64(readAll(t, snap.path)[64:]))

	var out []Hostile
	add := func(name string, base hostileBase, change func(b []byte) []byte, openErr string, bad ...[2]int64) {
		b := change(readAll(t, base.path))
		p := filepath.Join(dir, "hostile-"+strings.ReplaceAll(name, " ", "-")+".qcow2")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, Hostile{Name: name, Path: p, OpenError: openErr, Bad: bad, Want: base.raw})
		if base.path == luks.path {
			out[len(out)-1].Passphrase = HostilePassphrase
		}
	}
	u32 := func(off int64, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
	}
	u64 := func(off int64, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }
	}
	or64 := func(off int64, v uint64) func([]byte) []byte {
		return func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[off:], binary.BigEndian.Uint64(b[off:])|v)
			return b
		}
	}
	add64 := func(off int64, v uint64) func([]byte) []byte {
		return func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[off:], binary.BigEndian.Uint64(b[off:])+v)
			return b
		}
	}
	both := func(fs ...func([]byte) []byte) func([]byte) []byte {
		return func(b []byte) []byte {
			for _, f := range fs {
				b = f(b)
			}
			return b
		}
	}
	cut := func(n int64) func([]byte) []byte { return func(b []byte) []byte { return b[:n] } }
	keep := func(b []byte) []byte { return b }
	cluster := func(i int64) [2]int64 { return [2]int64{i * hostileCluster, (i + 1) * hostileCluster} }
	firstTable := [2]int64{0, hostileL2Span}

	// The header.
	add("wrong magic", v3, u32(0, 0x514649fa), "magic")
	for _, v := range []uint32{0, 4} {
		add(fmt.Sprintf("version %d", v), v3, u32(4, v), "version")
	}
	add("version 1", v3, u32(4, 1), "cluster_bits") // read as qcow v1, whose fields are elsewhere
	for _, cb := range []uint32{8, 22, 63, 0xffffffff} {
		add(fmt.Sprintf("cluster_bits %d", cb), v3, u32(20, cb), "cluster_bits")
	}
	for _, hl := range []uint32{103, hostileCluster + 8, 0xffffffff} {
		add(fmt.Sprintf("header_length %d", hl), v3, u32(100, hl), "header_length")
	}
	add("backing offset outside the first cluster", v3, both(u64(8, 2*hostileCluster), u32(16, 8)), "backing_file_offset")
	add("backing name of 1024 bytes", v3, both(u64(8, 1024), u32(16, 1024)), "backing_file_size")
	add("backing name of 0xffffffff bytes", v3, both(u64(8, 1024), u32(16, 0xffffffff)), "backing_file_size")
	add("extension past the cluster", v3, both(u32(112, 0x12345678), u32(112+4, hostileCluster)), "header extension")
	add("backing format extension of 16 bytes", v3, func(b []byte) []byte {
		copy(b[112:], []byte{0xe2, 0x79, 0x2a, 0xca, 0, 0, 0, 16})
		copy(b[120:], "qcow2qcow2qcow2q")
		return b
	}, "backing format extension")
	add("unknown incompatible bit", v3, u64(72, 1<<40), "unknown incompatible bit 40")
	add("unknown incompatible bit with a name", v3, func(b []byte) []byte {
		// A feature-name table naming bit 20 "frobnicate", as the first
		// header extension.
		copy(b[112:], []byte{0x68, 0x03, 0xf8, 0x57, 0, 0, 0, 48, 0, 20})
		copy(b[122:], "frobnicate")
		binary.BigEndian.PutUint64(b[72:], 1<<20)
		return b
	}, `"frobnicate" (incompatible bit 20)`)
	add("compression type 2", v3, func(b []byte) []byte { b[104] = 2; return b }, "compression_type")
	add("zstd type without its bit", v3, func(b []byte) []byte { b[104] = 1; return b }, "incompatible_features")
	add("compression bit with zlib", v3, or64(72, 1<<3), "incompatible_features")
	add("l1_size 0x7fffffff", v3, u32(36, 0x7fffffff), "l1_table_offset")
	add("l1_size 0xffffffff", v3, u32(36, 0xffffffff), "l1_table_offset")
	add("L1 too small", v3, u32(36, 1), "l1_size")
	add("L1 unaligned", v3, add64(40, 8), "l1_table_offset")
	add("L1 beyond the end of the file", v3, u64(40, 1<<30), "l1_table_offset")
	add("L1 offset plus size overflows", v3, both(u64(40, 1<<63-hostileCluster), u32(36, 1<<20)), "l1_table_offset")
	add("refcount table of zero clusters", v3, u32(56, 0), "refcount_table_clusters")
	add("snapshot count 0xffffffff", v3, u32(60, 0xffffffff), "nb_snapshots")
	add("snapshot table unaligned", snap, add64(64, 8), "snapshots_offset")
	add("snapshot extra data 65536", snap, u32(snapTable+36, 65536), "snapshot extra_data_size")
	add("virtual size 2^63-1", v3, u64(24, 1<<63-1), "size")

	// The tables: the damaged range fails, the rest reads.
	add("L1 entry with reserved bits", v3, or64(v3.l1Off, 1<<60), "", firstTable)
	add("L1 entry with an unaligned L2 offset", v3, add64(v3.l1Off, 512), "", firstTable)
	add("L1 entry past the end of the file", v3, u64(v3.l1Off, 1<<40), "", firstTable)
	add("L2 entry with reserved bits", v3, or64(v3.l2Entry(1), 1<<57), "", cluster(1))
	add("L2 entry with an unaligned data offset", v3, add64(v3.l2Entry(2), 512), "", cluster(2))
	add("L2 entry past the end of the file", v3, u64(v3.l2Entry(3), 1<<63|1<<40), "", cluster(3))
	add("zero flag in a v2 image", v2, or64(v2.l2Entry(5), 1), "", cluster(5))

	// Compressed clusters.
	for _, base := range []hostileBase{zlib, zst} {
		name := filepath.Base(base.path)
		b := readAll(t, base.path)
		desc := func(i int64) (host, sectors uint64) {
			e := binary.BigEndian.Uint64(b[base.l2Entry(i):])
			x := uint(62 - (12 - 8))
			return e & (1<<x - 1), (e >> x) & (1<<4 - 1)
		}
		setDesc := func(i int64, host, sectors uint64) func([]byte) []byte {
			x := uint(62 - (12 - 8))
			return u64(base.l2Entry(i), 1<<62|sectors<<x|host)
		}
		host1, sec1 := desc(1)
		add(name+" compressed garbage", base, func(b []byte) []byte {
			for i := range 100 {
				b[int(host1)+i] = 0xa5
			}
			return b
		}, "", cluster(1))
		add(name+" compressed length too small", base, setDesc(1, host1, 0), "", cluster(1))
		// The most sectors a descriptor can claim, two clusters: more than
		// QEMU writes, and the bytes after the stream are ignored, as by QEMU.
		add(name+" compressed length of two clusters", base, setDesc(1, host1, 1<<4-1), "")
		add(name+" compressed at host offset 0", base, setDesc(1, 0, sec1), "", cluster(1))
		// The last compressed cluster, with its length running past the end
		// of the file: what is there is complete, so it reads (as in QEMU).
		var last, lastHost, lastSec int64 = -1, 0, 0
		for i := range int64(hostileL2Span / hostileCluster) {
			e := binary.BigEndian.Uint64(b[base.l2Entry(i):])
			if h, s := desc(i); e&(1<<62) != 0 && int64(h) > lastHost {
				last, lastHost, lastSec = i, int64(h), int64(s)
			}
		}
		if last < 0 {
			t.Fatalf("%s has no compressed cluster", name)
		}
		if lastHost+(lastSec+1)*512 <= int64(len(b)) {
			add(name+" compressed data past the end of the file", base,
				setDesc(last, uint64(lastHost), uint64((int64(len(b))-lastHost)/512+1)), "")
		}
	}
	frame := func(n int) []byte {
		enc, err := zstd.NewWriter(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer enc.Close()
		return enc.EncodeAll([]byte(strings.Repeat("z", n)), nil)
	}
	for _, n := range []int{2 * hostileCluster, hostileCluster / 2} {
		add(fmt.Sprintf("zstd frame of %d bytes", n), zst, func(b []byte) []byte {
			f := frame(n)
			host := (len(b) + 511) &^ 511
			b = append(b, make([]byte, host-len(b))...)
			b = append(b, f...)
			x := uint(62 - (12 - 8))
			binary.BigEndian.PutUint64(b[zst.l2Entry(2):], 1<<62|uint64((len(f)+511)/512-1)<<x|uint64(host))
			return b
		}, "", cluster(2))
	}

	// Truncated files.
	add("truncated to 0 bytes", v3, cut(0), "header")
	add("truncated to 100 bytes", v3, cut(100), "header")
	add("truncated in the L1 table", v3, cut(v3.l1Off+4), "l1_table_offset")
	last := lastDataCluster(t, v3)
	add("truncated in an L2 table", v3, cut(v3.l2Off+100), "", [2]int64{0, hostileSize})
	add("truncated in the data", v3, cut(last.host+hostileCluster/2), "", cluster(last.index))
	add("undamaged", v3, keep, "")

	// LUKS: the header inside the image, its key slots and PBKDF2 counts.
	lk := luks.luksOff
	slot0 := lk + 208
	add("LUKS area cut short", luks, cut(lk+1000), "full disk encryption extension")
	add("LUKS key slot outside the file", luks, u32(slot0+40, 0x7fffffff), "key slot offset")
	add("LUKS stripes for gigabytes", luks, u32(slot0+44, 1<<30), "stripes")
	add("LUKS payload outside the area", luks, u32(lk+104, 0xffffffff), "payload_offset")
	add("LUKS PBKDF2 iterations 2^32-1", luks, u32(slot0+4, 0xffffffff), "no key slot can be tried within")
	add("LUKS digest iterations 2^32-1", luks, u32(lk+164, 0xffffffff), "no key slot can be tried within")
	add("LUKS key bytes huge", luks, u32(lk+108, 0xfffffff0), "LUKS cipher")
	add("LUKS undamaged", luks, keep, "")
	return out
}

// buildHostileLUKS is a LUKS-encrypted base image, with the offset of its
// LUKS header in luksOff.
func buildHostileLUKS(t testing.TB, dir string) hostileBase {
	t.Helper()
	path := filepath.Join(dir, "luks.qcow2")
	CreateEncrypted(t, path, "qcow2", "4M", HostilePassphrase, "encrypt.format=luks", "encrypt.iter-time=10",
		"encrypt.cipher-alg=aes-128", "encrypt.cipher-mode=cbc", fmt.Sprintf("cluster_size=%d", hostileCluster))
	IOEncrypted(t, path, "qcow2", []string{HostilePassphrase}, "write -P 0x61 0 64k", "write -P 0x62 3M 100k")
	b := readAll(t, path)
	at := strings.Index(string(b), "LUKS\xba\xbe")
	if at < 0 {
		t.Fatal("no LUKS header in the image QEMU made")
	}
	return hostileBase{path: path, raw: RawEncrypted(t, path, "qcow2", HostilePassphrase), size: 4 << 20, clusters: hostileCluster, luksOff: int64(at)}
}

type dataCluster struct{ index, host int64 }

// lastDataCluster finds the allocated cluster that lies last in the file,
// and checks that nothing follows it.
func lastDataCluster(t testing.TB, base hostileBase) dataCluster {
	t.Helper()
	b := readAll(t, base.path)
	best := dataCluster{-1, 0}
	perTable := int64(hostileL2Span / hostileCluster)
	for table := range int64(hostileSize / hostileL2Span) {
		l2 := int64(binary.BigEndian.Uint64(b[base.l1Off+8*table:]) & 0x00fffffffffffe00)
		for i := range perTable {
			host := int64(binary.BigEndian.Uint64(b[l2+8*i:]) & 0x00fffffffffffe00)
			if l2 != 0 && host > best.host {
				best = dataCluster{table*perTable + i, host}
			}
		}
	}
	if best.index < 0 || best.host+hostileCluster != int64(len(b)) {
		t.Fatalf("base image: the last data cluster (%+v) does not end the file (%d bytes)", best, len(b))
	}
	return best
}
