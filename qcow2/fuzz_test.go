package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// seedImages adds the tiny committed images (testdata/make-images.sh made
// them with qemu-img: v1, v2, v3, compressed, zero clusters, subclusters,
// snapshots) to a fuzz target's corpus. Small seeds keep fuzzing fast.
func seedImages(f *testing.F, add func(b []byte)) {
	f.Helper()
	files, err := filepath.Glob("../testdata/images/tiny/*.qcow*")
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed images: %v", err)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		add(b)
	}
}

// fuzzOptions read an image from memory with small caches, so that
// eviction is exercised too, and a passphrase for whatever the fuzzer
// makes encrypted.
func fuzzOptions(snapshot string) Options {
	return Options{Name: "fuzz.qcow2", Snapshot: snapshot, NoBacking: true, L2CacheSize: 64 << 10, ClusterCacheSize: 128 << 10,
		Passphrase: func(KeyRequest) ([]byte, error) { return []byte("qcowmount"), nil }, MaxKDFTime: time.Second}
}

func openBytes(b []byte, snapshot string) (*Image, error) {
	return New(bytes.NewReader(b), int64(len(b)), fuzzOptions(snapshot))
}

// readSome reads the disk in a few windows: the start, the end, and where
// off points; a hostile size can make the whole disk far too big to read.
func readSome(t *testing.T, img *Image, off uint64, n int) {
	buf := make([]byte, n)
	size := img.Size()
	for _, at := range []int64{0, size - int64(n), int64(off % uint64(max(size, 1))), int64(off)} {
		if at < 0 {
			continue
		}
		got, err := img.ReadAt(buf, at)
		if got < 0 || got > n || (err == nil && got != n) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", at, n, got, err)
		}
	}
}

// FuzzOpen feeds whole image files to Open (header, extensions, tables,
// snapshots), then reads and describes whatever opens.
func FuzzOpen(f *testing.F) {
	seedImages(f, func(b []byte) { f.Add(b) })
	f.Add(extensionsSeed(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, snapshot := range []string{"", "1"} {
			img, err := openBytes(b, snapshot)
			if err != nil {
				continue
			}
			if _, err := img.Info(); err != nil {
				t.Errorf("info: %v", err)
			}
			img.Warnings()
			readSome(t, img, 12345, 70000)
			img.Close()
		}
	})
}

// FuzzCheck checks fuzzed images: only I/O fails a check, and bytes in
// memory have none; a check stays within its budget of work.
func FuzzCheck(f *testing.F) {
	seedImages(f, func(b []byte) { f.Add(b) })
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := New(bytes.NewReader(b), int64(len(b)), Options{Name: "fuzz.qcow2", NoBacking: true, AllowMissing: true})
		if err != nil {
			return
		}
		defer img.Close()
		// A small budget: what stops a hostile table is the same code as
		// Check's, and with Check's 2^25 entries a fuzzed table costs a
		// second of every exec that meets it, minimizing included.
		res, err := img.check(1<<14 + int64(len(b))/4)
		if err != nil {
			t.Fatalf("check: %v", err)
		}
		if res.Corruptions < 0 || res.Leaks < 0 || len(res.Problems) > maxCheckProblems+2 {
			t.Fatalf("check result %+v", res)
		}
	})
}

// anyName resolves every backing or data file name that the local
// resolver would take as a path (resolveReference) to base, but for names
// that say "missing": a fuzzed name still opens something, and a base
// that names a backing file of its own makes a chain of itself. That
// chain ends after a few files (it would end at the depth limit, 64
// images, which the crafted chains test; here 64 opens an exec would make
// minimizing such an input take a second).
type anyName struct {
	base   []byte
	opened *int
}

// fuzzChainFiles is how many files anyName opens for one chain.
const fuzzChainFiles = 4

func (a anyName) Resolve(from, name, what string) (File, int64, string, error) {
	if _, err := resolveReference(from, name, what); err != nil {
		return nil, 0, "", err
	}
	if strings.Contains(name, "missing") {
		return nil, 0, "", fmt.Errorf("no %s %q beside %s", what, name, from)
	}
	if *a.opened++; *a.opened > fuzzChainFiles {
		return nil, 0, "", fmt.Errorf("%s %q: the fuzzed chain is long enough", what, name)
	}
	return namedReader{bytes.NewReader(a.base), "base.qcow2"}, int64(len(a.base)), "base.qcow2", nil
}

// FuzzChain opens fuzzed tops over fuzzed bases: the seeds are a top
// naming a backing file over each tiny image, so that mutations land in
// the top (a fuzzed top over a fixed base) or in the base (the other
// way round). A read returns what it was asked, or an error.
func FuzzChain(f *testing.F) {
	open := func(top, base []byte) (*Image, error) {
		opts := fuzzOptions("")
		// A missing file refuses the open, or (AllowMissing, as check
		// opens) fails the reads that need it: either way by the base's
		// length, so that the fuzzer reaches both.
		opts.NoBacking, opts.Resolver, opts.AllowMissing = false, anyName{base, new(int)}, len(base)%2 == 1
		return New(bytes.NewReader(top), int64(len(top)), opts)
	}
	seedImages(f, func(base []byte) {
		top := tinyTop(f, "base.qcow2")
		if len(base) >= 16 && binary.BigEndian.Uint64(base[8:]) != 0 {
			// A base with a backing file of its own (v3-top) names itself
			// through anyName: a loop, refused, and a seed still.
			f.Add(top, base)
			return
		}
		img, err := open(top, base)
		if err != nil {
			f.Fatalf("the seed top does not open over a tiny image: %v", err)
		}
		if img.backing == nil {
			f.Fatal("the seed top opened without its backing file")
		}
		img.Close()
		f.Add(top, base)
	})
	// A raw base, the base as an external data file, a missing base and
	// a missing data file, refused and allowed (by the length of the
	// base), and names the local resolver refuses.
	f.Add(tinyTop(f, "base.qcow2"), bytes.Repeat([]byte("raw base "), 8000))
	f.Add(dataFileTop(f, "data.raw"), bytes.Repeat([]byte("raw data "), 8000))
	f.Add(tinyTop(f, "missing.qcow2"), []byte("even"))
	f.Add(tinyTop(f, "missing.qcow2"), []byte("odd"))
	f.Add(dataFileTop(f, "missing.raw"), []byte("odd"))
	f.Add(tinyTop(f, "file:base.qcow2"), []byte("even"))
	f.Add(tinyTop(f, "nbd:localhost:10809"), []byte("even"))
	f.Add(tinyTop(f, "base\x00.qcow2"), []byte("even"))
	f.Fuzz(func(t *testing.T, top, base []byte) {
		img, err := open(top, base)
		if err != nil {
			return
		}
		defer img.Close()
		readSome(t, img, 4096, 70000)
	})
}

// extension is a header extension: its type and its data.
type extension struct {
	typ  uint32
	data []byte
}

// withExtensions is the tiny zlib image with exts as its header
// extensions, in place of its own.
func withExtensions(f *testing.F, exts ...extension) []byte {
	b, err := os.ReadFile("../testdata/images/tiny/v3-zlib.qcow2")
	if err != nil {
		f.Fatal(err)
	}
	be := binary.BigEndian
	at := uint64(be.Uint32(b[100:])) // header_length: where extensions start
	for _, e := range append(exts, extension{}) {
		be.PutUint32(b[at:], e.typ)
		be.PutUint32(b[at+4:], uint32(len(e.data)))
		copy(b[at+8:], e.data)
		at += 8 + (uint64(len(e.data))+7)/8*8
	}
	return b
}

// extensionsSeed has every kind of header extension: backing format,
// feature names, data file, bitmaps, full disk encryption, and one
// nobody defined.
func extensionsSeed(f *testing.F) []byte {
	be := binary.BigEndian
	feature := make([]byte, 48)
	feature[0], feature[1] = 0, 2
	copy(feature[2:], "external data file")
	return withExtensions(f,
		extension{0xe2792aca, []byte("qcow2")},
		extension{0x6803f857, feature},
		extension{0x44415441, []byte("data.raw")},
		extension{0x23852875, be.AppendUint64(be.AppendUint64(be.AppendUint64(nil, 1<<32), 64), 3<<16)},
		extension{0x0537be77, be.AppendUint64(be.AppendUint64(nil, 4<<16), 1<<16)},
		extension{0x12345678, []byte("hello")})
}

// dataFileTop is the tiny zlib image made to keep its data in the
// external data file name: the extension and the incompatible feature bit.
func dataFileTop(f *testing.F, name string) []byte {
	b := withExtensions(f, extension{0x44415441, []byte(name)})
	binary.BigEndian.PutUint64(b[72:], binary.BigEndian.Uint64(b[72:])|IncompatExternalData)
	return b
}

// tinyTop is a small v3 image naming backing file name: the tiny zlib
// image with the name written after its header extensions.
func tinyTop(f *testing.F, name string) []byte {
	b, err := os.ReadFile("../testdata/images/tiny/v3-zlib.qcow2")
	if err != nil {
		f.Fatal(err)
	}
	hdrLen := binary.BigEndian.Uint32(b[100:])
	at := uint64(hdrLen) + 8 // past the end-of-extensions marker: QEMU's first extension is ours to overwrite
	for i := uint64(hdrLen); i+8 <= uint64(len(b)); {
		typ, n := binary.BigEndian.Uint32(b[i:]), binary.BigEndian.Uint32(b[i+4:])
		if typ == 0 {
			at = i + 8
			break
		}
		i += 8 + (uint64(n)+7)/8*8
	}
	copy(b[at:], name)
	binary.BigEndian.PutUint64(b[8:], at)
	binary.BigEndian.PutUint32(b[16:], uint32(len(name)))
	return b
}

// FuzzSnapshotTable walks fuzzed snapshot tables of nb entries, listing
// them and looking up key as --snapshot does: a snapshot list or an error
// naming the entry, never a panic, no more snapshots than the table says,
// and a lookup that finds only a snapshot of that ID or name.
func FuzzSnapshotTable(f *testing.F) {
	b, err := os.ReadFile("../testdata/images/tiny/v3-snapshot.qcow2")
	if err != nil {
		f.Fatal(err)
	}
	h, err := parseHeader("fuzz", b, int64(len(b)))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(h.NbSnapshots, b[h.SnapshotsOffset:], "")
	f.Add(h.NbSnapshots, b[h.SnapshotsOffset:], "1")
	f.Add(h.NbSnapshots, b[h.SnapshotsOffset:], "first")
	f.Add(h.NbSnapshots, b[h.SnapshotsOffset:], "none")
	f.Fuzz(func(t *testing.T, nb uint32, table []byte, key string) {
		h := &Header{Version: 3, ClusterBits: 16, Size: 1 << 30, NbSnapshots: nb % 70000}
		img := newChain(Options{}, nil).newImage(namedReader{bytes.NewReader(table), "fuzz"}, "fuzz", h, 13, qcow2Format{})
		img.fileSize = int64(len(table))
		snaps, err := img.Snapshots()
		if len(snaps) > int(img.hdr.NbSnapshots) || (err == nil && len(snaps) != int(img.hdr.NbSnapshots)) {
			t.Fatalf("%d snapshots of %d, %v", len(snaps), img.hdr.NbSnapshots, err)
		}
		sn, err := img.checkSnapshots(key)
		switch {
		case err != nil:
		case key == "" && sn != nil:
			t.Fatalf("no key, and snapshot %q found", sn.ID)
		case key != "" && (sn == nil || !shownAs(sn.ID, key, maxSnapshotIDLen) && !shownAs(sn.Name, key, maxSnapshotNameLen)):
			t.Fatalf("key %q found %+v", key, sn)
		}
	})
}

// shownAs reports whether shown is key as a snapshot list shows it:
// whole, or cut to max bytes.
func shownAs(shown, key string, max int) bool {
	return shown == key || len(key) > max && shown == key[:max]
}

// FuzzReadAt reads fuzzed images at fuzzed offsets and lengths: the L1
// and L2 entries, descriptors, bitmaps and compressed data a hostile image
// can hold.
func FuzzReadAt(f *testing.F) {
	seedImages(f, func(b []byte) { f.Add(b, uint64(4096), uint32(65536)) })
	// Encrypted with "qcowmount", the passphrase fuzzOptions gives.
	for _, name := range []string{"v3-aes.qcow2", "v1-aes.qcow"} {
		b, err := os.ReadFile("../testdata/images/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint64(8192), uint32(70000))
	}
	f.Fuzz(func(t *testing.T, b []byte, off uint64, n uint32) {
		img, err := openBytes(b, "")
		if err != nil {
			return
		}
		defer img.Close()
		readSome(t, img, off, int(n%(4<<20))+1)
	})
}
