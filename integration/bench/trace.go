package main

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/qcowmount/qcowmount/integration/internal/proc"
	"golang.org/x/sys/unix"
)

// The kernel's fuse tracepoints (Linux 6.13 and later) show every request
// a FUSE server is sent and its answer, whoever the server is: the same
// view of our server, of libfuse's and of qemu-storage-daemon's.
const (
	tracefs   = "/sys/kernel/tracing"
	fusectl   = "/sys/fs/fuse/connections"
	outHeader = 16 // struct fuse_out_header, before a READ's data
)

// fuseCtlMagic is FUSE_CTL_SUPER_MAGIC, which golang.org/x/sys/unix lacks.
const fuseCtlMagic = 0x65735543

// tracer records the requests of one FUSE connection at a time in a
// tracing instance of its own, leaving the machine's trace buffer alone.
type tracer struct {
	dir     string   // the instance
	mounted []string // what newTracer mounted, and close unmounts
}

func newTracer() (*tracer, error) {
	t := &tracer{}
	if err := t.setUp(); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// setUp mounts what is missing and makes the instance; close undoes
// whatever it did.
func (t *tracer) setUp() error {
	for _, fs := range []struct {
		typ, dir string
		magic    int64
	}{{"tracefs", tracefs, unix.TRACEFS_MAGIC}, {"fusectl", fusectl, fuseCtlMagic}} {
		var st unix.Statfs_t
		if unix.Statfs(fs.dir, &st) == nil && st.Type == fs.magic {
			continue
		}
		if err := unix.Mount("none", fs.dir, fs.typ, 0, ""); err != nil {
			return fmt.Errorf("mount %s at %s: %w", fs.typ, fs.dir, err)
		}
		t.mounted = append(t.mounted, fs.dir)
	}
	if _, err := os.Stat(filepath.Join(tracefs, "events/fuse/fuse_request_send")); err != nil {
		return fmt.Errorf("this kernel has no fuse tracepoints (Linux 6.13 added them): %w", err)
	}
	dir := filepath.Join(tracefs, "instances", fmt.Sprintf("qcowmount-bench-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	t.dir = dir
	// Room for a few million events per CPU: 4 jobs of random 4 KiB reads
	// for a few seconds.
	return t.write("buffer_size_kb", "262144")
}

func (t *tracer) write(name, value string) error {
	return os.WriteFile(filepath.Join(t.dir, name), []byte(value), 0)
}

func (t *tracer) close() error {
	var errs []error
	if t.dir != "" {
		errs = append(errs, os.Remove(t.dir))
	}
	for _, dir := range slices.Backward(t.mounted) {
		errs = append(errs, unix.Unmount(dir, 0))
	}
	return errors.Join(errs...)
}

// connection is the FUSE connection that serves file: its device number
// names it in fusectl and in the tracepoints.
func connection(file string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return 0, err
	}
	return unix.Minor(st.Dev), nil
}

// start clears the buffer and records the requests of connection conn.
func (t *tracer) start(conn uint32) error {
	if err := t.write("trace", ""); err != nil {
		return err
	}
	for _, ev := range []string{"fuse_request_send", "fuse_request_end"} {
		if err := t.write("events/fuse/"+ev+"/filter", fmt.Sprintf("connection == %d", conn)); err != nil {
			return err
		}
		if err := t.write("events/fuse/"+ev+"/enable", "1"); err != nil {
			return err
		}
	}
	return nil
}

// stop ends the recording and reads what it holds.
func (t *tracer) stop() (requestStats, error) {
	for _, ev := range []string{"fuse_request_send", "fuse_request_end"} {
		if err := t.write("events/fuse/"+ev+"/enable", "0"); err != nil {
			return requestStats{}, err
		}
	}
	f, err := os.Open(filepath.Join(t.dir, "trace"))
	if err != nil {
		return requestStats{}, err
	}
	defer f.Close()
	s, err := parseTrace(bufio.NewScanner(f))
	if err != nil {
		return s, err
	}
	lost, err := t.lostEvents()
	if err == nil && lost > 0 {
		err = fmt.Errorf("the trace buffer overran: %d events lost", lost)
	}
	return s, err
}

func (t *tracer) lostEvents() (int, error) {
	cpus, err := filepath.Glob(filepath.Join(t.dir, "per_cpu/cpu*/stats"))
	if err != nil {
		return 0, err
	}
	lost := 0
	for _, c := range cpus {
		b, err := os.ReadFile(c)
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "overrun: "); ok {
				n, _ := strconv.Atoi(v)
				lost += n
			}
		}
	}
	return lost, nil
}

// requestStats is what the kernel sent one server during one measure.
type requestStats struct {
	ops       map[string]int // requests by opcode
	readSizes []int          // bytes answered, per READ
	inFlight  []int          // requests outstanding as each READ was sent, itself included
	readUsecs []float64      // from send to answer, per READ
	server    proc.Usage     // what the server process used meanwhile
}

// parseTrace reads the text of a trace buffer holding fuse_request_send
// and fuse_request_end events, in time order.
func parseTrace(sc *bufio.Scanner) (requestStats, error) {
	s := requestStats{ops: map[string]int{}}
	type sent struct {
		read bool
		at   float64
	}
	outstanding := map[uint64]sent{}
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		before, event, ok := strings.Cut(line, ": fuse_request_")
		if !ok {
			continue
		}
		at, err := eventTime(before)
		if err != nil {
			return s, fmt.Errorf("trace line %q: %w", line, err)
		}
		f := strings.Fields(event)
		// send: connection C req N opcode O (NAME) len L
		// end:  connection C req N len L error E
		if len(f) < 7 || f[3] != "req" {
			return s, fmt.Errorf("trace line %q: unknown layout", line)
		}
		req, err := strconv.ParseUint(f[4], 10, 64)
		if err != nil {
			return s, fmt.Errorf("trace line %q: %w", line, err)
		}
		switch f[0] {
		case "send:":
			name := strings.Trim(f[7], "()")
			s.ops[strings.TrimPrefix(name, "FUSE_")]++
			read := name == "FUSE_READ"
			outstanding[req] = sent{read, at}
			if read {
				s.inFlight = append(s.inFlight, len(outstanding))
			}
		case "end:":
			r, ok := outstanding[req]
			if !ok {
				continue // sent before the recording started
			}
			delete(outstanding, req)
			if !r.read {
				continue
			}
			n, err := strconv.Atoi(f[6])
			if err != nil {
				return s, fmt.Errorf("trace line %q: %w", line, err)
			}
			s.readSizes = append(s.readSizes, max(n-outHeader, 0))
			s.readUsecs = append(s.readUsecs, (at-r.at)*1e6)
		}
	}
	return s, sc.Err()
}

// eventTime is the timestamp, in seconds, that ends the part of a trace
// line before the event's name ("... 1234.567890").
func eventTime(before string) (float64, error) {
	f := strings.Fields(before)
	if len(f) == 0 {
		return 0, errors.New("no timestamp")
	}
	return strconv.ParseFloat(f[len(f)-1], 64)
}

// negotiated is what INIT left in force on a connection, as the kernel
// shows it: the read-ahead of its backing device and fusectl's limits.
func negotiated(conn uint32) string {
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("read_ahead_kb %s, max_background %s, congestion_threshold %s",
		read(fmt.Sprintf("/sys/class/bdi/0:%d/read_ahead_kb", conn)),
		read(filepath.Join(fusectl, strconv.Itoa(int(conn)), "max_background")),
		read(filepath.Join(fusectl, strconv.Itoa(int(conn)), "congestion_threshold")))
}

// summary is one table row's cells: READs, their sizes, the requests in
// flight, the time each took and all of them together, the server's CPU
// time and context switches per request, and every other request.
func (s requestStats) summary() []string {
	if len(s.readSizes) == 0 {
		return []string{"0", "", "", "", "", "", "", others(s.ops)}
	}
	sizes, flight, usecs := slices.Clone(s.readSizes), slices.Clone(s.inFlight), slices.Clone(s.readUsecs)
	slices.Sort(sizes)
	slices.Sort(flight)
	slices.Sort(usecs)
	bytes, busy := 0, 0.0
	for i := range sizes {
		bytes += sizes[i]
		busy += usecs[i]
	}
	requests := 0
	for _, n := range s.ops {
		requests += n
	}
	kib := func(n int) string { return strconv.FormatFloat(float64(n)/1024, 'f', 1, 64) }
	return []string{
		strconv.Itoa(len(sizes)),
		fmt.Sprintf("%s / %s / %s", kib(pick(sizes, 0.5)), kib(bytes/len(sizes)), kib(sizes[len(sizes)-1])),
		fmt.Sprintf("%d / %d / %d", pick(flight, 0.5), pick(flight, 0.9), flight[len(flight)-1]),
		fmt.Sprintf("%.0f / %.0f / %.0f", pick(usecs, 0.5), busy/float64(len(usecs)), pick(usecs, 0.99)),
		fmt.Sprintf("%.0f", busy/1000),
		fmt.Sprintf("%.1f", float64(s.server.CPU.Microseconds())/float64(requests)),
		fmt.Sprintf("%.2f", float64(s.server.Switches)/float64(requests)),
		others(s.ops),
	}
}

// pick is the q-quantile of sorted values.
func pick[T cmp.Ordered](sorted []T, q float64) T {
	return sorted[min(int(q*float64(len(sorted))), len(sorted)-1)]
}

func others(ops map[string]int) string {
	var parts []string
	for op, n := range ops {
		if op != "READ" {
			parts = append(parts, fmt.Sprintf("%s %d", op, n))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// traceFigures runs every measure once on each FUSE server and tables what
// the kernel sent it: the first step in finding where a request's cost
// lies, since it shows what each server negotiated and received.
func traceFigures(images []benchImage, ours string, o options) (string, error) {
	t, err := newTracer()
	if err != nil {
		return "", err
	}
	defer t.close()
	var b strings.Builder
	fmt.Fprintf(&b, "%s, `make bench-requests` (%s), each measure once with the kernel's fuse tracepoints on.\n", measuredOn(), invocation())
	for _, img := range images {
		if err := warmImage(img); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "\n#### Requests: %s\n\n", img.name)
		b.WriteString("READ size is KiB answered (median / mean / max); in flight counts the requests outstanding as each READ was sent (median / 90th percentile / max); time is from the kernel's send to the answer (median / mean / 99th percentile), and busy is the sum of those times; CPU and switches are the server process's CPU time and context switches, all threads, per request of any kind.\n\n")
		b.WriteString("| measure | server | READs | READ size (KiB) | in flight | time (µs) | busy (ms) | CPU (µs) | switches | other requests |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
		var setups []string
		for _, mt := range metrics() {
			if mt.guest && !img.guest {
				continue
			}
			for _, tl := range tools(ours, img.raw) {
				if !tl.reads(img) || tl.name == noFUSE {
					continue
				}
				fmt.Fprintf(os.Stderr, "%s: tracing %s: %s ...\n", img.name, mt.name, tl.name)
				s, setup, err := traceOnce(t, tl, img, mt, o)
				cells := []string{"failed: " + strings.ReplaceAll(fmt.Sprint(err), "|", "/"), "", "", "", "", "", "", ""}
				if err == nil {
					cells = s.summary()
				}
				fmt.Fprintf(&b, "| %s | %s | %s |\n", mt.name, tl.name, strings.Join(cells, " | "))
				if line := tl.name + ": " + setup; setup != "" && !slices.Contains(setups, line) {
					setups = append(setups, line)
				}
			}
		}
		b.WriteString("\nNegotiated:\n\n")
		for _, line := range setups {
			fmt.Fprintf(&b, "- %s\n", line)
		}
	}
	return b.String(), nil
}

// traceOnce mounts the image afresh, records one measure's requests and
// says what the connection negotiated.
func traceOnce(t *tracer, tl tool, img benchImage, mt metric, o options) (requestStats, string, error) {
	dir, err := os.MkdirTemp(o.work, "mnt")
	if err != nil {
		return requestStats{}, "", err
	}
	defer os.RemoveAll(dir)
	m, err := tl.mount(img, dir)
	if err != nil {
		return requestStats{}, "", err
	}
	conn, err := connection(m.file)
	var before, after proc.Usage
	if err == nil {
		before, err = proc.UsageOf(m.pid)
	}
	if err == nil {
		err = t.start(conn)
	}
	if err == nil {
		_, err = mt.run(m, img, o)
	}
	if err == nil {
		after, err = proc.UsageOf(m.pid)
	}
	s, stopErr := t.stop()
	s.server = proc.Usage{CPU: after.CPU - before.CPU, Switches: after.Switches - before.Switches}
	setup := negotiated(conn)
	if mountErr := m.stop(); mountErr != nil {
		stopErr = errors.Join(stopErr, mountErr)
	}
	return s, setup, errors.Join(err, stopErr)
}
