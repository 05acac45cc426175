package qcow2

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// patch describes a change to a valid image's bytes.
type patch func(b []byte) []byte

func put32(off int, v uint32) patch {
	return func(b []byte) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
}

func put64(off int, v uint64) patch {
	return func(b []byte) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }
}

func truncateTo(n int) patch { return func(b []byte) []byte { return b[:n] } }

// openPatched writes a copy of a committed image with patches applied and
// opens it.
func openPatched(t *testing.T, image string, patches ...patch) (*Image, error) {
	t.Helper()
	return openPatchedWith(t, image, Options{}, patches...)
}

func openPatchedWith(t *testing.T, image string, opts Options, patches ...patch) (*Image, error) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../testdata/images", image))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range patches {
		b = p(b)
	}
	path := filepath.Join(t.TempDir(), image)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return Open(path, opts)
}

// The committed v3-4k.qcow2 has 4 KiB clusters, header_length 112, its L1
// table at 0x3000 with one entry, and 256 KiB of guest disk.
func TestOpenRefusesBadHeaders(t *testing.T) {
	tests := []struct {
		name    string
		image   string
		patches []patch
		field   string // the FormatError's field; "" for another error
		msg     string // part of the message
	}{
		{"empty file", "v3-4k.qcow2", []patch{truncateTo(0)}, "header", "shorter than a qcow2 header"},
		{"100 bytes", "v3-4k.qcow2", []patch{truncateTo(100)}, "header", "shorter than a v3 header"},
		{"wrong magic", "v3-4k.qcow2", []patch{put32(0, 0x12345678)}, "magic", "not a qcow2 image"},
		{"version 0", "v3-4k.qcow2", []patch{put32(4, 0)}, "version", "0 is not a qcow2 version"},
		{"version 4", "v3-4k.qcow2", []patch{put32(4, 4)}, "version", "4 is not"},
		{"cluster_bits 8", "v3-4k.qcow2", []patch{put32(20, 8)}, "cluster_bits", "outside 9..21"},
		{"cluster_bits 22", "v3-4k.qcow2", []patch{put32(20, 22)}, "cluster_bits", "outside"},
		{"cluster_bits 63", "v3-4k.qcow2", []patch{put32(20, 63)}, "cluster_bits", "outside"},
		{"cluster_bits max", "v3-4k.qcow2", []patch{put32(20, 0xffffffff)}, "cluster_bits", "outside"},
		{"header_length 103", "v3-4k.qcow2", []patch{put32(100, 103)}, "header_length", "shorter than 104"},
		{"header_length over a cluster", "v3-4k.qcow2", []patch{put32(100, 4097)}, "header_length", "exceeds the cluster size"},
		{"header_length max", "v3-4k.qcow2", []patch{put32(100, 0xffffffff)}, "header_length", "exceeds"},
		{"backing offset outside first cluster", "v3-4k.qcow2", []patch{put64(8, 8192), put32(16, 4)}, "backing_file_offset", "outside the first cluster"},
		{"backing name 1024", "v3-4k.qcow2", []patch{put64(8, 512), put32(16, 1024)}, "backing_file_size", "too long"},
		{"backing name max", "v3-4k.qcow2", []patch{put64(8, 512), put32(16, 0xffffffff)}, "backing_file_size", "too long"},
		{"unknown incompatible bit", "v3-4k.qcow2", []patch{put64(72, 1<<20)}, "", "unknown incompatible bit 20"},
		{"compression type 2", "v3-4k.qcow2", []patch{func(b []byte) []byte { b[104] = 2; return b }}, "compression_type", "2 is not"},
		{"zstd without bit", "v3-4k.qcow2", []patch{func(b []byte) []byte { b[104] = 1; return b }}, "incompatible_features", "bit is clear"},
		{"bit without zstd", "v3-4k.qcow2", []patch{put64(72, IncompatCompressionType)}, "incompatible_features", "bit is set"},
		{"refcount_order 7", "v3-4k.qcow2", []patch{put32(96, 7)}, "refcount_order", "exceeds 6"},
		{"crypt_method 3", "v3-4k.qcow2", []patch{put32(32, 3)}, "crypt_method", "not an encryption method"},
		{"l1_size 0x7fffffff", "v3-4k.qcow2", []patch{put32(36, 0x7fffffff)}, "l1_table_offset", "exceeds"},
		{"l1_size max", "v3-4k.qcow2", []patch{put32(36, 0xffffffff)}, "l1_table_offset", "exceeds"},
		{"L1 too small", "v3-4k.qcow2", []patch{put32(36, 0)}, "l1_size", "too small"},
		{"L1 unaligned", "v3-4k.qcow2", []patch{put64(40, 0x3008)}, "l1_table_offset", "not cluster aligned"},
		{"L1 past EOF", "v3-4k.qcow2", []patch{put64(40, 1<<30)}, "l1_table_offset", "beyond the end of the file"},
		{"L1 offset overflows", "v3-4k.qcow2", []patch{put64(40, 0x7ffffffffffff000), put32(36, 4096)}, "l1_table_offset", "overflows"},
		{"no refcount table", "v3-4k.qcow2", []patch{put32(56, 0)}, "refcount_table_clusters", "no refcount table"},
		{"snapshot count max", "v3-4k.qcow2", []patch{put32(60, 0xffffffff)}, "nb_snapshots", "exceeds 65536"},
		{"snapshot table unaligned", "v3-4k.qcow2", []patch{put32(60, 1), put64(64, 0x3001)}, "snapshots_offset", "not cluster aligned"},
		{"virtual size 2^63-1", "v3-4k.qcow2", []patch{put64(24, 1<<63-1)}, "size", "too big"},
		{"virtual size 2^64-1", "v3-4k.qcow2", []patch{put64(24, 1<<64-1)}, "size", "exceeds 2^63-1"},
		{"extended L2 with small clusters", "v3-4k.qcow2", []patch{put64(72, IncompatExtendedL2)}, "cluster_bits", "at least 16 KiB"},
		{"encrypted (AES) without a passphrase", "v3-4k.qcow2", []patch{put32(32, 1)}, "", "encrypted (AES) and no passphrase was given"},
		{"LUKS without its extension", "v3-4k.qcow2", []patch{put32(32, 2)}, "crypt_method", "no full disk encryption header extension"},
		{"data file bit without name", "v3-4k.qcow2", []patch{put64(72, IncompatExternalData)}, "incompatible_features", "names no data file"},
		{"raw data bit without data file", "v3-4k.qcow2", []patch{put64(88, AutoclearDataFileIsRaw)}, "autoclear_features", "without an external data file"},
		{"v2 too short", "v2-512.qcow2", []patch{truncateTo(71)}, "header", "shorter than a qcow2 header"},
		{"read as qcow v1", "v2-512.qcow2", []patch{put32(4, 1)}, "cluster_bits", "outside 9..16"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, err := openPatched(t, tc.image, tc.patches...)
			expectRefused(t, img, err, tc.image, tc.field, tc.msg)
		})
	}
}

// expectRefused fails unless opening failed with an error that names the
// image file and says msg; where field is set, a FormatError for it.
func expectRefused(t *testing.T, img *Image, err error, image, field, msg string) {
	t.Helper()
	if err == nil {
		img.Close()
		t.Fatal("opened")
	}
	var fe *FormatError
	if field != "" && (!errors.As(err, &fe) || fe.Field != field) {
		t.Fatalf("error %q: want a FormatError for field %q", err, field)
	}
	if !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), image) {
		t.Fatalf("error %q does not say %q and name %s", err, msg, image)
	}
}

func TestExtensionsParse(t *testing.T) {
	ext := func(typ uint32, body string) []byte {
		b := binary.BigEndian.AppendUint32(nil, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
		b = append(b, body...)
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
		return b
	}
	feature := func(kind, bit byte, name string) string {
		e := make([]byte, 48)
		e[0], e[1] = kind, bit
		copy(e[2:], name)
		return string(e)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return append(b, make([]byte, 8)...)
	}
	tests := []struct {
		name    string
		area    []byte
		wantErr string
		check   func(*extensions) bool
	}{
		{"backing format", cat(ext(extBackingFormat, "raw")), "", func(e *extensions) bool { return e.backingFormat == "raw" }},
		{"backing format of 16 bytes", cat(ext(extBackingFormat, "0123456789abcdef")), "too long", nil},
		{"unknown skipped", cat(ext(0x12345678, "whatever"), ext(extBackingFormat, "qcow2")), "", func(e *extensions) bool { return e.backingFormat == "qcow2" }},
		{"feature names", cat(ext(extFeatureTable, feature(0, 9, "frobnicate"))), "", func(e *extensions) bool {
			return e.featureNames[featureKey{0, 9}] == "frobnicate"
		}},
		{"data file", cat(ext(extDataFile, "data.raw")), "", func(e *extensions) bool { return e.namesDataFile && e.dataFile == "data.raw" }},
		{"LUKS header pointer", cat(ext(extFullDiskCrypto, "\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x08\x10\x00")), "", func(e *extensions) bool {
			return e.hasFDE && e.fdeOffset == 0x1000 && e.fdeLength == 0x81000
		}},
		{"LUKS header pointer of 8 bytes", cat(ext(extFullDiskCrypto, "\x00\x00\x00\x00\x00\x00\x10\x00")), "length 8, not 16", nil},
		{"length past the area", append(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, extBackingFormat), 1000), make([]byte, 16)...), "running past", nil},
		{"truncated header", []byte{0xe2, 0x79, 0x2a, 0xca}, "only 4 bytes left", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := parseExtensions("ext.qcow2", tc.area, 0, uint64(len(tc.area)))
			if expectError(t, err, tc.wantErr) {
				return
			}
			if !tc.check(e) {
				t.Fatalf("parsed %+v", e)
			}
		})
	}
}

func TestUnknownIncompatibleBitNamedFromTable(t *testing.T) {
	names := map[featureKey]string{{featureIncompatible, 9}: "frobnicate"}
	got := describeIncompat(1<<9|1<<12, names)
	want := `"frobnicate" (incompatible bit 9), unknown incompatible bit 12`
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestSnapshotDiskSizeOutOfRange(t *testing.T) {
	b, err := os.ReadFile("../testdata/images/v3-snapshot.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	table := binary.BigEndian.Uint64(b[64:])
	binary.BigEndian.PutUint64(b[table+48:], 1<<64-1) // the first entry's disk_size
	path := filepath.Join(t.TempDir(), "snap.qcow2")
	os.WriteFile(path, b, 0o644)
	if _, err := Open(path, Options{Snapshot: "first"}); err == nil || !strings.Contains(err.Error(), "snapshot disk_size") {
		t.Fatalf("error %v, want one naming snapshot disk_size", err)
	}
	img, err := Open(path, Options{}) // the current state still reads
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
}

// expectError checks err against a table case's expected error: none when
// want is empty, else one that says want. It reports whether the case
// expected an error, and so is done.
func expectError(t *testing.T, err error, want string) bool {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one saying %q", err, want)
	}
	return true
}

// dirFiles opens the files an image names beside it.
type dirFiles struct{}

func (dirFiles) Resolve(from, name, what string) (File, int64, string, error) {
	p := filepath.Join(filepath.Dir(from), name)
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, "", err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, "", err
	}
	return f, st.Size(), p, nil
}

// countingFile counts the bytes read through it.
type countingFile struct {
	*os.File
	read atomic.Int64
}

func (f *countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	f.read.Add(int64(n))
	return n, err
}

// Opening reads QEMU's default cluster's worth for the header, and the
// rest of the first cluster only where the clusters are larger: what lies
// past the first 64 KiB (extensions, a backing file name) is still found,
// as QEMU finds it.
func TestHeaderPastTheFirstRead(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	be := binary.BigEndian
	// move rewrites path: its backing file name to nameAt and, where
	// extAt is not 0, its header extensions (and header_length) to extAt.
	// (qcow and qcow2 keep the name's offset and length at 8 and 16.)
	move := func(path string, nameAt, extAt int64) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		off, n := be.Uint64(b[8:]), be.Uint32(b[16:])
		name := string(b[off : off+uint64(n)])
		if extAt != 0 {
			hl := be.Uint32(b[100:])
			exts := append([]byte(nil), b[hl:off]...)
			clear(b[hl:off])
			copy(b[extAt:], exts)
			be.PutUint32(b[100:], uint32(extAt))
		}
		clear(b[off : off+uint64(n)])
		if int64(len(b)) < nameAt+int64(n) {
			b = append(b, make([]byte, nameAt+int64(n)-int64(len(b)))...)
		}
		copy(b[nameAt:], name)
		be.PutUint64(b[8:], uint64(nameAt))
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const backing = "backing_file=base.raw,backing_fmt=raw"
	for _, tc := range []struct {
		name          string
		format        string
		opts          []string
		nameAt, extAt int64
		maxRead       int64 // bytes New may read, 0 for no bound
	}{
		// A file of 8 MiB, whose first 2 MiB were read before.
		{"64 KiB clusters, metadata preallocated: a cluster read for the header", "qcow2", []string{"preallocation=metadata"}, 0, 0, 1 << 20},
		{"2 MiB clusters, backing name at 1 MiB", "qcow2", []string{"cluster_size=2M", backing}, 1 << 20, 0, 0},
		{"2 MiB clusters, extensions at 96 KiB, backing name at 1 MiB", "qcow2", []string{"cluster_size=2M", backing}, 1 << 20, 96 << 10, 0},
		{"qcow version 1, backing name at 100 KiB", "qcow", []string{backing}, 100 << 10, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			qemutest.WriteFile(t, filepath.Join(dir, "base.raw"), 0, qemutest.Pattern(3, 8<<20))
			path := filepath.Join(dir, "top."+tc.format)
			qemutest.Create(t, path, tc.format, "8M", tc.opts...)
			if tc.nameAt != 0 {
				move(path, tc.nameAt, tc.extAt)
			}
			var want Info
			if err := json.Unmarshal([]byte(qemutest.Run(t, "qemu-img", "info", "--output=json", "-f", tc.format, path)), &want); err != nil {
				t.Fatal(err)
			}
			f, size := qemutest.Open(t, path)
			cf := &countingFile{File: f}
			img, err := New(cf, size, Options{Name: path, Resolver: dirFiles{}})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if tc.maxRead != 0 && cf.read.Load() > tc.maxRead {
				t.Errorf("opening read %d bytes, more than %d", cf.read.Load(), tc.maxRead)
			}
			got, err := img.Info()
			if err != nil {
				t.Fatal(err)
			}
			if got.BackingFilename != want.BackingFilename || got.BackingFilenameFormat != want.BackingFilenameFormat {
				t.Errorf("backing file %q (%q), qemu-img says %q (%q)", got.BackingFilename, got.BackingFilenameFormat, want.BackingFilename, want.BackingFilenameFormat)
			}
			disk, err := io.ReadAll(io.NewSectionReader(img, 0, img.Size()))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := qemutest.SHA256(disk), qemutest.SHA256(qemutest.RawBytes(t, path)); got != want {
				t.Errorf("guest disk differs from qemu-img convert's")
			}
		})
	}
}
