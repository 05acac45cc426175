package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// memFiles resolves names from memory, as a remote source resolves them
// against its base: the reader needs nothing but io.ReaderAt.
type memFiles map[string][]byte

type memFile struct {
	*bytes.Reader
	name string
}

func (m memFile) Name() string { return m.name }

func (m memFiles) Resolve(from, name, what string) (qcow2.File, int64, string, error) {
	b, ok := m[name]
	if !ok {
		return nil, 0, "", fmt.Errorf("no %s %q beside %s", what, name, from)
	}
	return memFile{bytes.NewReader(b), name}, int64(len(b)), name, nil
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNewReadsFromAnyReaderAt opens a three-level chain (raw base,
// compressed middle, extended-L2 top) from memory and reads what QEMU
// reads from the files.
func TestNewReadsFromAnyReaderAt(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	top, middle, base := qemutest.ThreeLevelChain(t, dir)
	files := memFiles{"middle.qcow2": readFile(t, middle), "base.raw": readFile(t, base)}
	b := readFile(t, top)
	img, err := qcow2.New(bytes.NewReader(b), int64(len(b)), qcow2.Options{Name: "top.qcow2", Resolver: files})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	compareWithRaw(t, img, qemutest.Raw(t, top))
	if h := img.Header(); h.Version != 3 || h.BackingFileSize != uint32(len("middle.qcow2")) {
		t.Errorf("header %+v", h)
	}
	if _, _, ok := img.HostRange(0, 4096); ok {
		t.Error("HostRange offers a file for an image that is not local")
	}

	// Without a resolver, an image that names a backing file says so;
	// with NoBacking it reads alone.
	if _, err := qcow2.New(bytes.NewReader(b), int64(len(b)), qcow2.Options{Name: "top.qcow2"}); err == nil || !strings.Contains(err.Error(), "nothing was given to open it with") {
		t.Fatalf("no resolver: %v", err)
	}
	alone, err := qcow2.New(bytes.NewReader(b), int64(len(b)), qcow2.Options{NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	alone.Close()
}

// TestFormatErrorNamesTheFile: a damaged field names the file of the
// chain it lies in, whichever image was opened.
func TestFormatErrorNamesTheFile(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	top, middle, _ := qemutest.ThreeLevelChain(t, dir)
	// Reserved bits in the middle image's first L1 entry.
	b := readFile(t, middle)
	l1 := binary.BigEndian.Uint64(b[40:])
	binary.BigEndian.PutUint64(b[l1:], binary.BigEndian.Uint64(b[l1:])|1)
	if err := os.WriteFile(middle, b, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(top, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	_, err = img.ReadAt(make([]byte, 4096), 1<<20) // unallocated in the top: from the middle
	var fe *qcow2.FormatError
	if !errors.As(err, &fe) || fe.Path != middle || fe.Field != "L1 entry" {
		t.Fatalf("error %v (%+v): want the middle image's L1 entry", err, fe)
	}
	// A header refused at open, in an image read through New.
	_, err = qcow2.New(bytes.NewReader(b[:100]), 100, qcow2.Options{Name: "cut.qcow2"})
	if !errors.As(err, &fe) || fe.Path != "cut.qcow2" || !strings.HasPrefix(err.Error(), "cut.qcow2: ") {
		t.Fatalf("error %v: want one naming cut.qcow2", err)
	}
}
