package qcow2_test

import (
	"errors"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// allocBound is what opening and reading one hostile image may allocate in
// all: a constant, whatever its header says.
const allocBound = 96 << 20

// TestHostileImages opens every image of the damaged corpus: each is
// refused naming the field, or opens, checks, and fails exactly the reads
// of its damaged ranges, reading the rest as QEMU does; never a panic, a
// hang, or an allocation beyond a fixed bound.
func TestHostileImages(t *testing.T) {
	corpus := qemutest.HostileCorpus(t, t.TempDir())
	for _, h := range corpus {
		t.Run(h.Name, func(t *testing.T) {
			done := make(chan struct{})
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			go func() {
				defer close(done)
				checkHostile(t, h)
			}()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("hung for 30s")
			}
			runtime.ReadMemStats(&after)
			if n := after.TotalAlloc - before.TotalAlloc; n > allocBound {
				t.Errorf("allocated %d MiB", n>>20)
			}
		})
	}
}

func checkHostile(t *testing.T, h qemutest.Hostile) {
	img, err := qcow2.Open(h.Path, qcow2.Options{Passphrase: func(r qcow2.KeyRequest) ([]byte, error) {
		if r.Tries > 0 {
			return nil, nil
		}
		return []byte(h.Passphrase), nil
	}})
	if h.OpenError != "" {
		if err == nil {
			img.Close()
			t.Errorf("opened; want an error naming %q", h.OpenError)
			return
		}
		if !strings.Contains(err.Error(), h.OpenError) {
			t.Errorf("error %q does not name %q", err, h.OpenError)
		}
		return
	}
	if err != nil {
		t.Errorf("open: %v", err)
		return
	}
	defer img.Close()
	if _, err := img.Info(); err != nil {
		t.Errorf("info: %v", err)
	}
	if _, err := img.Check(); err != nil {
		t.Errorf("check: %v", err)
	}
	want, err := os.ReadFile(h.Want)
	if err != nil {
		t.Error(err)
		return
	}
	if img.Size() != int64(len(want)) {
		t.Errorf("size %d, want %d", img.Size(), len(want))
		return
	}
	// Read cluster by cluster: inside a damaged range every read fails,
	// elsewhere it returns QEMU's bytes.
	buf := make([]byte, 4096)
	for off := int64(0); off < img.Size(); off += int64(len(buf)) {
		_, err := img.ReadAt(buf, off)
		bad := h.IsBad(off)
		switch {
		case bad && err == nil:
			t.Errorf("read at %#x succeeded inside a damaged range", off)
			return
		case bad && errors.Is(err, io.EOF):
			t.Errorf("read at %#x: EOF inside a damaged range", off)
			return
		case !bad && err != nil:
			t.Errorf("read at %#x: %v", off, err)
			return
		case !bad && string(buf) != string(want[off:off+int64(len(buf))]):
			t.Errorf("read at %#x: wrong bytes", off)
			return
		}
	}
}
