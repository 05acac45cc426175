package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// qemuCheck is what qemu-img check says of an image: its JSON counts and
// the problem lines it prints on stderr.
type qemuCheck struct {
	counts   map[string]int64
	problems []string
}

func runQemuCheck(t *testing.T, path, passphrase string) qemuCheck {
	t.Helper()
	args := []string{"check", "--output=json", path}
	if passphrase != "" {
		args = []string{"check", "--output=json", "--object", "secret,id=s0,data=" + passphrase,
			"--image-opts", "driver=qcow2,file.filename=" + path + ",encrypt.key-secret=s0"}
	}
	cmd := exec.Command("qemu-img", args...)
	cmd.Dir = filepath.Dir(path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && (!errors.As(err, &exit) || exit.ExitCode() == 1) {
		t.Fatalf("qemu-img check %s: %v\n%s", path, err, stderr.String())
	}
	var raw map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &raw); err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", path, err, stdout.String())
	}
	q := qemuCheck{counts: map[string]int64{}}
	for k, v := range raw {
		if n, ok := v.(float64); ok {
			q.counts[k] = int64(n)
		}
	}
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.HasPrefix(l, "ERROR") || strings.HasPrefix(l, "Leaked") {
			q.problems = append(q.problems, l)
		}
	}
	return q
}

// counts are the result's numbers under qemu-img's keys, zeros left out.
func counts(r *qcow2.CheckResult) map[string]int64 {
	b, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	var raw map[string]any
	json.Unmarshal(b, &raw)
	out := map[string]int64{}
	for k, v := range raw {
		if n, ok := v.(float64); ok {
			out[k] = int64(n)
		}
	}
	return out
}

func checkImage(t *testing.T, path string) *qcow2.CheckResult {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.Options{AllowLocked: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	res, err := img.Check()
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// compareWithQemu fails where Check and qemu-img check disagree on a
// count or on a problem qemu-img reports.
func compareWithQemu(t *testing.T, path, passphrase string) *qcow2.CheckResult {
	t.Helper()
	want := runQemuCheck(t, path, passphrase)
	res := checkImage(t, path)
	got := counts(res)
	for _, k := range []string{"check-errors", "leaks", "corruptions", "image-end-offset", "total-clusters",
		"allocated-clusters", "fragmented-clusters", "compressed-clusters"} {
		if got[k] != want.counts[k] {
			t.Errorf("%s: %d, qemu-img check says %d", k, got[k], want.counts[k])
		}
	}
	if len(want.problems) <= 1000 {
		for _, p := range want.problems {
			if !slices.Contains(res.Problems, p) {
				t.Errorf("qemu-img check reports %q; we do not (we report %q)", p, res.Problems)
				break
			}
		}
	}
	return res
}

// TestCheckCleanImagesMatchQemu checks images of every kind QEMU writes:
// the counts are qemu-img check's, and nothing is wrong with them.
func TestCheckCleanImagesMatchQemu(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	writes := []string{"write -P 1 0 1M", "write -P 2 5M 64k", "write -P 3 3M 64k", "write -z 7M 128k", "write -P 4 1M 4k"}
	luks := []string{"encrypt.format=luks", "encrypt.iter-time=10"}
	tests := []struct {
		name  string
		opts  []string
		setup func(t *testing.T, path string)
	}{
		{"v3", nil, nil},
		{"v2", []string{"compat=0.10"}, nil},
		{"512-byte clusters, 1-bit refcounts", []string{"cluster_size=512", "refcount_bits=1"}, nil},
		{"2 MiB clusters, 8-bit refcounts", []string{"cluster_size=2M", "refcount_bits=8"}, nil},
		{"64-bit refcounts", []string{"refcount_bits=64"}, nil},
		{"extended L2", []string{"extended_l2=on"}, nil},
		{"lazy refcounts, zstd", []string{"lazy_refcounts=on", "compression_type=zstd"}, func(t *testing.T, p string) {
			qemutest.IO(t, p, "write -c -P 7 8M 64k", "write -c -P 8 9M 64k")
		}},
		{"compressed zlib", nil, func(t *testing.T, p string) { qemutest.IO(t, p, "write -c -P 7 8M 64k", "write -c -P 8 9M 64k") }},
		{"snapshots", nil, func(t *testing.T, p string) {
			qemutest.Run(t, "qemu-img", "snapshot", "-c", "s1", p)
			qemutest.IO(t, p, "write -P 5 512k 1M")
			qemutest.Run(t, "qemu-img", "snapshot", "-c", "s2", p)
			qemutest.IO(t, p, "write -P 6 0 64k")
		}},
		{"data file", []string{"data_file=data.img"}, nil},
		{"raw data file", []string{"data_file=rawdata.img", "data_file_raw=on"}, nil},
		{"bitmaps", nil, func(t *testing.T, p string) {
			qemutest.Run(t, "qemu-img", "bitmap", "--add", p, "b0")
			qemutest.IO(t, p, "write -P 9 10M 1M")
			qemutest.Run(t, "qemu-img", "bitmap", "--add", p, "b1")
		}},
		{"preallocated metadata", []string{"preallocation=metadata"}, nil},
		{"preallocated full, 4 KiB clusters", []string{"preallocation=full", "cluster_size=4k"}, nil},
		{"LUKS", luks, nil},
		{"legacy AES", []string{"encrypt.format=aes"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "clean.qcow2")
			pass := ""
			if strings.HasPrefix(strings.Join(tc.opts, ","), "encrypt.") {
				pass = "pass"
				qemutest.CreateEncrypted(t, path, "qcow2", "16M", pass, tc.opts...)
				qemutest.IOEncrypted(t, path, "qcow2", []string{pass}, writes...)
			} else {
				qemutest.Create(t, path, "qcow2", "16M", tc.opts...)
				qemutest.IO(t, path, writes...)
			}
			if tc.setup != nil {
				tc.setup(t, path)
			}
			res := compareWithQemu(t, path, pass)
			if len(res.Problems) > 0 {
				t.Errorf("problems in a clean image: %q", res.Problems)
			}
			for _, f := range res.Findings {
				if f.Warning {
					t.Errorf("warning about a clean image: %s", f.Message)
				}
			}
		})
	}
}

// TestCheckFindsWhatQemuFinds damages images as a crash or a stranger
// would and checks them: the counts and problems are qemu-img check's.
func TestCheckFindsWhatQemuFinds(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	tests := []struct {
		name        string
		poke        func(f *qemutest.ImageFile)
		corruptions bool
		leaks       bool
		finding     string // a warning finding's kind, if one is due
	}{
		{"refcount zero", func(f *qemutest.ImageFile) { f.Put16(f.Refcount(f.DataCluster(0)), 0) }, true, false, ""},
		{"refcount two", func(f *qemutest.ImageFile) { f.Put16(f.Refcount(f.DataCluster(0)), 2) }, true, true, ""},
		{"leaked cluster appended", (*qemutest.ImageFile).Leak, false, true, ""},
		{"data appended", func(f *qemutest.ImageFile) { f.B = append(f.B, 0, 0, 0, 0, 7) }, false, false, "trailing-data"},
		{"two entries, one cluster", func(f *qemutest.ImageFile) { f.Put64(f.L2Entry(1), f.U64(f.L2Entry(0))) }, true, true, ""},
		{"data in the L1 table", func(f *qemutest.ImageFile) { f.Put64(f.L2Entry(0), uint64(f.L1())|1<<63) }, true, true, "overlap"},
		{"data in the header", func(f *qemutest.ImageFile) { f.Put64(f.L2Entry(2), 1<<63) }, false, false, ""},
		{"L2 reserved bits", func(f *qemutest.ImageFile) { f.Put64(f.L2Entry(0), f.U64(f.L2Entry(0))|2) }, true, false, ""},
		{"L1 reserved bits", func(f *qemutest.ImageFile) { f.Put64(f.L1(), f.U64(f.L1())|1<<57) }, true, false, ""},
		{"unaligned data cluster", func(f *qemutest.ImageFile) { f.Put64(f.L2Entry(0), f.U64(f.L2Entry(0))+512) }, true, false, ""},
		{"refcount block outside", func(f *qemutest.ImageFile) { f.Put64(f.Reftable()+8, 1<<40) }, true, false, ""},
		{"refcount table reserved bits", func(f *qemutest.ImageFile) { f.Put64(f.Reftable()+8, 1<<16|1) }, true, false, ""},
		{"data past the end", func(f *qemutest.ImageFile) { f.Put64(f.L2Entry(0), 1<<40|1<<63) }, true, true, ""},
		{"unknown extension and feature bits", func(f *qemutest.ImageFile) {
			f.Put64(80, f.U64(80)|1<<9) // compatible bit 9
			f.Put64(88, f.U64(88)|1<<7) // autoclear bit 7
			hl := int64(binary.BigEndian.Uint32(f.B[100:]))
			ext := f.B[hl:]
			// Shift the extensions along by one unknown one.
			shifted := append([]byte{0x12, 0x34, 0x56, 0x78, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8}, ext[:4096-hl-16]...)
			copy(f.B[hl:], shifted)
		}, false, false, "unknown-extension"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "poked.qcow2")
			qemutest.Create(t, path, "qcow2", "64M")
			qemutest.IO(t, path, "write -P 1 0 64k", "write -P 2 64k 64k", "write -P 3 1M 64k")
			f := qemutest.ReadImageFile(t, path)
			tc.poke(f)
			f.Save()
			res := compareWithQemu(t, path, "")
			if (res.Corruptions > 0) != tc.corruptions || (res.Leaks > 0) != tc.leaks {
				t.Errorf("%d corruptions, %d leaks; want corruptions %v, leaks %v: %q", res.Corruptions, res.Leaks, tc.corruptions, tc.leaks, res.Problems)
			}
			if tc.finding != "" && !slices.ContainsFunc(res.Findings, func(f qcow2.Finding) bool { return f.Kind == tc.finding && f.Warning }) {
				t.Errorf("no %s warning among %+v", tc.finding, res.Findings)
			}
		})
	}
}

// TestCheckAfterKilledWriter kills qemu-io in the middle of many writes,
// with and without lazy refcounts (the dirty bit then stays set), and
// compares the check of what is left with qemu-img's.
func TestCheckAfterKilledWriter(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	for _, lazy := range []string{"off", "on"} {
		t.Run("lazy refcounts "+lazy, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "killed.qcow2")
			qemutest.Create(t, path, "qcow2", "4G", "lazy_refcounts="+lazy)
			var args []string
			for i := range 3000 {
				args = append(args, "-c", fmt.Sprintf("write -P 1 %d 64k", i<<20+64<<10*(i%7)))
			}
			cmd := exec.Command("qemu-io", append(args, path)...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			cmd.Process.Kill()
			finished := cmd.Wait() == nil // all 3000 writes before the kill: a clean image
			res := compareWithQemu(t, path, "")
			t.Logf("after the kill (finished first: %v): %d corruptions, %d leaks, %d clusters allocated", finished, res.Corruptions, res.Leaks, res.AllocatedClusters)
			dirty := slices.ContainsFunc(res.Findings, func(f qcow2.Finding) bool { return f.Kind == "dirty" })
			if dirty != (lazy == "on" && res.AllocatedClusters > 0 && !finished) {
				t.Errorf("dirty finding %v with lazy refcounts %s", dirty, lazy)
			}
		})
	}
}

// TestCheckQcow1 checks old qcow images, which qemu-img cannot check:
// clean ones are clean (64k + 8k + 4k written: 19 clusters of 4 KiB),
// and a cluster given to two entries is found.
func TestCheckQcow1(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	path := filepath.Join(t.TempDir(), "old.qcow")
	qemutest.Create(t, path, "qcow", "16M")
	qemutest.IOFormat(t, path, "qcow", "write -P 1 0 64k", "write -P 2 1M 8k", "write -P 3 5M 4k")
	res := checkImage(t, path)
	if res.Corruptions != 0 || res.Leaks != 0 || res.AllocatedClusters != 19 || len(res.Findings) != 0 {
		t.Fatalf("clean qcow: %+v", res)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	l1 := binary.BigEndian.Uint64(b[40:])
	l2 := binary.BigEndian.Uint64(b[l1:])
	copy(b[l2+8:], b[l2:l2+8]) // cluster 1 now shares cluster 0's data
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if res := checkImage(t, path); res.Corruptions != 1 {
		t.Errorf("shared cluster: %d corruptions, want 1: %q", res.Corruptions, res.Problems)
	}
}

// TestCheckHostileImagesMatchQemu checks the images of the damaged corpus
// that both we and QEMU open (TestHostileImages bounds the time and memory
// of every check): the counts and problems are qemu-img check's.
func TestCheckHostileImagesMatchQemu(t *testing.T) {
	for _, h := range qemutest.HostileCorpus(t, t.TempDir()) {
		if h.OpenError != "" || h.Passphrase != "" {
			continue
		}
		t.Run(h.Name, func(t *testing.T) { compareWithQemu(t, h.Path, "") })
	}
}

// TestCheckStopsAtItsBudget: tables that point at each other make work
// out of proportion to the file; check stops at its budget, in entries
// visited, and says it could not check. 65536 snapshots each naming a
// 32 MiB L1 table (zeros past the end of a small file) would have it read
// 2 TiB; 65536 L1 entries naming one L2 table whose entries all name one
// cluster, 512 million entries, in a 1 MiB file or padded to 64 MiB.
func TestCheckStopsAtItsBudget(t *testing.T) {
	tests := []struct {
		name string
		make func(t *testing.T, dir string) string
	}{
		{"snapshots of L1 tables past the end", func(t *testing.T, dir string) string {
			path := qemutest.ManySnapshots(t, dir, 65536, 0)
			f := qemutest.ReadImageFile(t, path)
			const tableOff, entry = 3 << 16, 48
			for i := range 65536 {
				binary.BigEndian.PutUint32(f.B[tableOff+i*entry+8:], 32<<20/8)
			}
			f.Save()
			return path
		}},
		{"one L2 table under every L1 entry, 1 MiB", func(t *testing.T, dir string) string { return sharedL2(t, dir, 1<<20) }},
		{"one L2 table under every L1 entry, 64 MiB", func(t *testing.T, dir string) string { return sharedL2(t, dir, 64<<20) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.make(t, t.TempDir())
			start := time.Now()
			done := make(chan *qcow2.CheckResult, 1)
			go func() { done <- checkImage(t, path) }()
			var res *qcow2.CheckResult
			select {
			case res = <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("still checking after 60 s: the budget did not stop it")
			}
			if res.CheckErrors != 1 || len(res.Problems) == 0 || !strings.Contains(res.Problems[0], "stopped counting") {
				t.Errorf("check errors %d, first problems %q", res.CheckErrors, res.Problems[:min(3, len(res.Problems))])
			}
			t.Logf("stopped after %v", time.Since(start))
		})
	}
}

// sharedL2 makes an image of size bytes (zeros after its tables) whose
// 65536 L1 entries all name one L2 table, whose entries all name one
// data cluster.
func sharedL2(t *testing.T, dir string, size int64) string {
	path := filepath.Join(dir, "shared-l2.qcow2")
	qemutest.Create(t, path, "qcow2", "32T")
	qemutest.IO(t, path, "write -P 1 0 64k")
	f := qemutest.ReadImageFile(t, path)
	l1 := f.L1()
	for i := range int64(65536) {
		f.Put64(l1+8*i, f.U64(l1))
	}
	l2 := f.L2Entry(0)
	for i := range int64(8192) {
		f.Put64(l2+8*i, f.U64(l2))
	}
	f.Save()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestAllowMissingDataFile opens an image whose data file is gone, to
// check it: the check warns, and reads of its data fail rather than read
// the metadata file in its place.
func TestAllowMissingDataFile(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	path := filepath.Join(dir, "meta.qcow2")
	qemutest.Create(t, path, "qcow2", "4M", "data_file=data.img")
	qemutest.IO(t, path, "write -P 7 0 1M")
	if err := os.Remove(filepath.Join(dir, "data.img")); err != nil {
		t.Fatal(err)
	}
	if _, err := qcow2.Open(path, qcow2.Options{}); err == nil || !strings.Contains(err.Error(), `external data file "data.img"`) {
		t.Fatalf("open without AllowMissing: %v", err)
	}
	img, err := qcow2.Open(path, qcow2.Options{AllowMissing: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAt(make([]byte, 4096), 0); err == nil || !strings.Contains(err.Error(), "data.img") {
		t.Errorf("read of data whose file is gone: %v", err)
	}
	res, err := img.Check()
	if err != nil {
		t.Fatal(err)
	}
	if res.Corruptions != 0 || !slices.ContainsFunc(res.Findings, func(f qcow2.Finding) bool {
		return f.Kind == "data-file" && f.Warning && strings.Contains(f.Message, "does not open")
	}) {
		t.Errorf("%+v", res)
	}
}

// TestAllowMissingBackingFile: the image opens, says why its backing file
// did not, and reads of what the backing file holds fail, never zeros.
func TestAllowMissingBackingFile(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	qemutest.Create(t, base, "qcow2", "1M")
	qemutest.IO(t, base, "write -P 3 0 64k")
	qemutest.Create(t, top, "qcow2", "1M", "backing_file=base.qcow2", "backing_fmt=qcow2")
	qemutest.IO(t, top, "write -P 4 512k 64k")
	if err := os.Remove(base); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(top, qcow2.Options{AllowMissing: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAt(make([]byte, 4096), 0); err == nil || !strings.Contains(err.Error(), "base.qcow2") {
		t.Errorf("read of the missing backing file's part: %v", err)
	}
	if _, err := img.ReadAt(make([]byte, 4096), 512<<10); err != nil {
		t.Errorf("read of the top image's own data: %v", err)
	}
	in, err := img.Info()
	if err != nil || !strings.Contains(in.BackingError, "base.qcow2") {
		t.Errorf("info: %v, backing error %q", err, in.BackingError)
	}
	if m := img.Missing(); len(m) != 1 || !strings.Contains(m[0].Error(), "base.qcow2") {
		t.Errorf("missing %q", m)
	}
}
