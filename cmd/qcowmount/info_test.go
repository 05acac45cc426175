package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestInfoMatchesQemuImg compares `qcowmount info --json --backing-chain`
// with `qemu-img info --output=json --backing-chain` on every key the two
// share.
func TestInfoMatchesQemuImg(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	top, _, _ := qemutest.ThreeLevelChain(t, dir)
	qemutest.Run(t, "qemu-img", "snapshot", "-c", "snap1", top)
	zstd := filepath.Join(dir, "z.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compat=0.10,cluster_size=4k", top, zstd)
	zstd3 := filepath.Join(dir, "z3.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd,lazy_refcounts=on", top, zstd3)
	data := filepath.Join(dir, "meta.qcow2")
	qemutest.Create(t, data, "qcow2", "1M", "data_file=data.bin", "data_file_raw=on")
	luks := filepath.Join(dir, "luks.qcow2")
	qemutest.CreateEncrypted(t, luks, "qcow2", "1M", "p", "encrypt.format=luks", "encrypt.iter-time=10",
		"encrypt.cipher-alg=aes-128", "encrypt.cipher-mode=cbc", "encrypt.ivgen-alg=essiv", "encrypt.ivgen-hash-alg=sha256")
	aes := filepath.Join(dir, "aes.qcow2")
	qemutest.CreateEncrypted(t, aes, "qcow2", "1M", "p", "encrypt.format=aes")
	shared := []string{"filename", "format", "virtual-size", "cluster-size", "dirty-flag", "encrypted",
		"backing-filename", "full-backing-filename", "backing-filename-format"}
	sharedQcow2 := []string{"compat", "compression-type", "lazy-refcounts", "refcount-bits", "corrupt", "extended-l2", "data-file", "data-file-raw", "encrypt"}
	sharedSnapshot := []string{"id", "name", "vm-state-size", "date-sec", "date-nsec", "vm-clock-sec", "vm-clock-nsec", "icount"}
	for _, image := range []string{top, zstd, zstd3, data, luks, aes} {
		t.Run(filepath.Base(image), func(t *testing.T) {
			ours, code := qcowmount(t, "info", "--json", "--backing-chain", image)
			if code != 0 {
				t.Fatalf("info: exit %d: %s", code, ours)
			}
			var got, want []map[string]any
			if err := json.Unmarshal([]byte(ours), &got); err != nil {
				t.Fatalf("%v: %s", err, ours)
			}
			theirs := qemutest.Run(t, "qemu-img", "info", "--output=json", "--backing-chain", image)
			if err := json.Unmarshal([]byte(theirs), &want); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("chain of %d images, qemu-img says %d", len(got), len(want))
			}
			for i := range want {
				same(t, fmt.Sprint("image ", i), got[i], want[i], shared)
				g, _ := got[i]["format-specific"].(map[string]any)
				w, _ := want[i]["format-specific"].(map[string]any)
				if w != nil {
					gd, _ := g["data"].(map[string]any)
					wd, _ := w["data"].(map[string]any)
					same(t, fmt.Sprint("image ", i, " format-specific"), gd, wd, sharedQcow2)
				}
				gs, _ := got[i]["snapshots"].([]any)
				ws, _ := want[i]["snapshots"].([]any)
				if len(gs) != len(ws) {
					t.Fatalf("image %d: %d snapshots, qemu-img says %d", i, len(gs), len(ws))
				}
				for j := range ws {
					same(t, fmt.Sprint("snapshot ", j), gs[j].(map[string]any), ws[j].(map[string]any), sharedSnapshot)
				}
			}
		})
	}
}

func same(t *testing.T, what string, got, want map[string]any, keys []string) {
	t.Helper()
	for _, k := range keys {
		if !reflect.DeepEqual(got[k], want[k]) {
			t.Errorf("%s: %q is %v, qemu-img says %v", what, k, got[k], want[k])
		}
	}
}

func TestInfoText(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	top, _, _ := qemutest.ThreeLevelChain(t, dir)
	qemutest.Run(t, "qemu-img", "snapshot", "-c", "snap1", top)
	out, code := qcowmount(t, "info", top)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, want := range []string{
		"image: " + top, "file format: qcow2", "virtual size: 6 MiB (6291456 bytes)", "cluster_size: 65536",
		"backing file: middle.qcow2", "backing file format: qcow2", "Snapshot list:", "snap1",
		"compat: 1.1 (version 3)", "extended l2: true", "L1 size: 1",
		"image: " + filepath.Join(dir, "middle.qcow2"), "image: " + filepath.Join(dir, "base.raw"), "file format: raw",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("info does not say %q:\n%s", want, out)
		}
	}
	os.Remove(filepath.Join(dir, "base.raw"))
	out, code = qcowmount(t, "info", top)
	if code != 0 || !strings.Contains(out, "warning:") || !strings.Contains(out, "image: "+top) {
		t.Fatalf("with a broken chain: exit %d: %s", code, out)
	}
	out, code = qcowmount(t, "info", filepath.Join(dir, "nothing.qcow2"))
	if code == 0 || !strings.Contains(out, "no such file") {
		t.Fatalf("missing image: exit %d: %s", code, out)
	}
}

// TestInfoEscapesNames: names from the image reach the terminal escaped.
func TestInfoEscapesNames(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	top := qemutest.ImageWithBacking(t, t.TempDir(), "evil\x1b]0;pwned\x07\x1b[2J.raw", "raw")
	out, _ := qcowmount(t, "info", top)
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Fatalf("info printed control characters: %q", out)
	}
	if !strings.Contains(out, `backing file: evil\x1b]0;pwned\a\x1b[2J.raw`) {
		t.Fatalf("info does not show the escaped name: %s", out)
	}
}

// TestInfoTextMatchesQemuImg: where the human output of info overlaps
// qemu-img info's (the name as given, sizes, the snapshot table to the
// space), it is the same text.
func TestInfoTextMatchesQemuImg(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	dir := t.TempDir()
	image := filepath.Join(dir, "snap.qcow2")
	qemutest.Create(t, image, "qcow2", "1000M")
	for _, name := range []string{"first", "a snapshot name longer than the column"} {
		qemutest.Run(t, "qemu-img", "snapshot", "-c", name, image)
	}
	theirs := qemutest.RunIn(t, dir, "qemu-img", "info", "snap.qcow2")
	t.Chdir(dir)
	ours, code := qcowmount(t, "info", "snap.qcow2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, ours)
	}
	section := func(out string) string {
		var keep []string
		in := false
		for _, line := range strings.Split(out, "\n") {
			switch {
			case strings.HasPrefix(line, "image:"), strings.HasPrefix(line, "virtual size:"), strings.HasPrefix(line, "cluster_size:"):
				keep = append(keep, line)
			case line == "Snapshot list:":
				in = true
			case in && strings.HasPrefix(line, "Format specific"):
				in = false
			}
			if in {
				keep = append(keep, line)
			}
		}
		return strings.Join(keep, "\n")
	}
	if got, want := section(ours), section(theirs); got != want {
		t.Fatalf("ours:\n%s\nqemu-img:\n%s", got, want)
	}
}
