package main

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/integration/internal/proc"
)

// Lines as Linux 6.18 writes them to a tracing instance's trace file.
const sampleTrace = `# tracer: nop
#
              dd-10191   [001] ...1. 56698.056961: fuse_request_send: connection 40 req 16 opcode 1 (FUSE_LOOKUP) len 49 
             qcm-10185   [000] ..... 56698.062663: fuse_request_end: connection 40 req 16 len 144 error 0
              dd-10191   [000] ...2. 56698.063408: fuse_request_send: connection 40 req 22 opcode 15 (FUSE_READ) len 80 
              dd-10191   [000] ...2. 56698.063500: fuse_request_send: connection 40 req 24 opcode 15 (FUSE_READ) len 80 
             qcm-10185   [000] ..... 56698.063719: fuse_request_end: connection 40 req 22 len 131088 error 0
             qcm-10185   [001] ..... 56698.064500: fuse_request_end: connection 40 req 24 len 4112 error 0
             qcm-10185   [001] ..... 56698.064600: fuse_request_end: connection 40 req 2 len 16 error 0
`

func TestParseTrace(t *testing.T) {
	s, err := parseTrace(bufio.NewScanner(strings.NewReader(sampleTrace)))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"LOOKUP": 1, "READ": 2}; len(s.ops) != len(want) || s.ops["LOOKUP"] != 1 || s.ops["READ"] != 2 {
		t.Errorf("requests by opcode: %v, want %v", s.ops, want)
	}
	// The answer to req 2, sent before the recording, is not counted.
	if want := []int{128 << 10, 4 << 10}; !slices.Equal(s.readSizes, want) {
		t.Errorf("READ sizes %v, want %v", s.readSizes, want)
	}
	if want := []int{1, 2}; !slices.Equal(s.inFlight, want) {
		t.Errorf("in flight %v, want %v", s.inFlight, want)
	}
	for i, want := range []float64{311, 1000} {
		if got := s.readUsecs[i]; got < want-0.5 || got > want+0.5 {
			t.Errorf("READ %d took %.3f µs, want %.0f", i, got, want)
		}
	}
}

func TestParseTraceRejects(t *testing.T) {
	for name, line := range map[string]string{
		"no timestamp":  "dd-1 [001] ...1.: fuse_request_send: connection 40 req 16 opcode 1 (FUSE_LOOKUP) len 49",
		"bad timestamp": "dd-1 [001] ...1. 5669x.05: fuse_request_send: connection 40 req 16 opcode 1 (FUSE_LOOKUP) len 49",
		"short":         "dd-1 [001] ...1. 56698.05: fuse_request_send: connection 40 req",
		"bad request":   "dd-1 [001] ...1. 56698.05: fuse_request_send: connection 40 req x opcode 1 (FUSE_LOOKUP) len 49",
	} {
		if _, err := parseTrace(bufio.NewScanner(strings.NewReader(line))); err == nil {
			t.Errorf("%s: no error for %q", name, line)
		}
	}
}

func TestSummary(t *testing.T) {
	s := requestStats{
		ops:       map[string]int{"READ": 4, "OPEN": 1, "FLUSH": 1, "RELEASE": 2},
		readSizes: []int{4096, 4096, 8192, 1 << 20},
		inFlight:  []int{1, 1, 2, 3},
		readUsecs: []float64{10, 20, 30, 100},
		server:    proc.Usage{CPU: 80 * time.Microsecond, Switches: 4},
	}
	want := []string{"4", "8.0 / 260.0 / 1024.0", "2 / 3 / 3", "30 / 40 / 100", "0", "10.0", "0.50", "FLUSH 1, OPEN 1, RELEASE 2"}
	if got := s.summary(); !slices.Equal(got, want) {
		t.Errorf("summary\n got %q\nwant %q", got, want)
	}
	if got := (requestStats{ops: map[string]int{"OPEN": 1}}).summary(); got[0] != "0" || got[len(got)-1] != "OPEN 1" {
		t.Errorf("summary without READs: %q", got)
	}
}

func TestZeroServers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting FUSE in-process needs root")
	}
	for _, how := range []string{"go-fuse", "fusefs"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			server, err := mountZeros(how, dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { server.Unmount() })
			f, err := os.Open(filepath.Join(dir, "zeros"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != zerosSize {
				t.Errorf("size %d, want %d", st.Size(), zerosSize)
			}
			buf := bytes.Repeat([]byte{0xff}, 8192)
			if n, err := f.ReadAt(buf, zerosSize-4096); n != 4096 || err != io.EOF {
				t.Errorf("read at the end: %d bytes, %v; want 4096 and EOF", n, err)
			}
			if !bytes.Equal(buf[:4096], make([]byte, 4096)) {
				t.Error("the file's last block is not zeros")
			}
		})
	}
}
