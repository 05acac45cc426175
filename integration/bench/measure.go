package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/qcowmount/qcowmount/integration/internal/proc"
)

// A metric is one figure each tool gets on an image, measured on a fresh
// mount of it.
type metric struct {
	name   string
	unit   string
	higher bool // higher is better (a rate), or lower (a time)
	// guest needs the built guest disk (an ext4 partition at 1 MiB).
	guest bool
	run   func(m *mounted, img benchImage, opts options) (float64, error)
}

// options are the bench's settings that measures use.
type options struct {
	seconds int
	work    string
}

// randomWorkload is one of fio's random 4 KiB read patterns.
type randomWorkload struct {
	name   string
	direct bool
	jobs   int
}

// randomWorkloads are the random patterns every image and the FUSE
// ceiling are measured with.
var randomWorkloads = []randomWorkload{
	{"random 4 KiB, buffered, 1 job", false, 1},
	{"random 4 KiB, buffered, 4 jobs", false, 4},
	{"random 4 KiB, O_DIRECT, 1 job", true, 1},
	{"random 4 KiB, O_DIRECT, 4 jobs", true, 4},
}

func metrics() []metric {
	ms := []metric{
		{name: "sequential, 1 reader", unit: "MiB/s", higher: true, run: func(m *mounted, img benchImage, o options) (float64, error) {
			return sequential(m.file, 1)
		}},
		{name: "sequential, 8 readers", unit: "MiB/s", higher: true, run: func(m *mounted, img benchImage, o options) (float64, error) {
			return sequential(m.file, 8)
		}},
	}
	for _, w := range randomWorkloads {
		ms = append(ms, metric{name: w.name, unit: "IOPS", higher: true, run: randomReads(w.direct, w.jobs)})
	}
	return append(ms, []metric{
		{name: "guest: tar of the ext4 files (loop device)", unit: "MiB/s", higher: true, guest: true, run: guestTar(false)},
		{name: fmt.Sprintf("guest: up to %d files under 16 KiB (loop device)", smallFiles), unit: "s", guest: true, run: guestSmallFiles(false)},
		// The loop device without its second page cache: it sends its
		// reads as O_DIRECT, several at once (FUSE's ASYNC_DIO).
		{name: "guest: tar of the ext4 files (loop device, --direct-io=on)", unit: "MiB/s", higher: true, guest: true, run: guestTar(true)},
		{name: fmt.Sprintf("guest: up to %d files under 16 KiB (loop device, --direct-io=on)", smallFiles), unit: "s", guest: true, run: guestSmallFiles(true)},
		{name: "guest: tar through fuse2fs (no root)", unit: "MiB/s", higher: true, guest: true, run: fuse2fsTar},
	}...)
}

// figures are one tool's results on one image: a value per metric.
type figures struct {
	tool   string
	peer   bool
	ready  time.Duration
	rssMiB float64
	values map[string]float64
	errs   map[string]error
}

// keep merges a run into the figures: the best value of each metric, the
// fastest mount, the highest peak memory.
func (f *figures) keep(mt metric, v float64, err error) {
	if err != nil {
		if _, ok := f.values[mt.name]; !ok {
			f.errs[mt.name] = err
		}
		return
	}
	delete(f.errs, mt.name)
	old, ok := f.values[mt.name]
	if !ok || (mt.higher && v > old) || (!mt.higher && v < old) {
		f.values[mt.name] = v
	}
}

// measureOnce mounts the image afresh and takes one metric. The image is
// in the page cache already (warmImage, and coldGuest after each drop).
func measureOnce(t tool, img benchImage, mt metric, o options, f *figures) {
	dir, err := os.MkdirTemp(o.work, "mnt")
	if err != nil {
		f.keep(mt, 0, err)
		return
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	m, err := t.mount(img, dir)
	if err != nil {
		f.keep(mt, 0, err)
		return
	}
	if ready := time.Since(start); f.ready == 0 || ready < f.ready {
		f.ready = ready
	}
	v, err := mt.run(m, img, o)
	f.rssMiB = max(f.rssMiB, float64(proc.PeakRSS(m.pid))/1024)
	if stopErr := m.stop(); err == nil {
		err = stopErr
	}
	f.keep(mt, v, err)
}

// sequential reads the whole file with n readers, each its own share, in
// 1 MiB blocks, and returns the total rate.
func sequential(file string, n int) (float64, error) {
	st, err := os.Stat(file)
	if err != nil {
		return 0, err
	}
	share := (st.Size() + int64(n) - 1) / int64(n)
	start := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			f, err := os.Open(file)
			if err != nil {
				errs[i] = err
				return
			}
			defer f.Close()
			// Not io.Copy: io.Discard would read in 8 KiB pieces.
			buf := make([]byte, 1<<20)
			for off, end := int64(i)*share, min(int64(i+1)*share, st.Size()); off < end; {
				n, err := f.ReadAt(buf[:min(int64(len(buf)), end-off)], off)
				if err != nil && err != io.EOF {
					errs[i] = err
					return
				}
				if n == 0 {
					errs[i] = fmt.Errorf("%s: no data at %d", file, off)
					return
				}
				off += int64(n)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return float64(st.Size()) / (1 << 20) / time.Since(start).Seconds(), nil
}

func randomReads(direct bool, jobs int) func(*mounted, benchImage, options) (float64, error) {
	return func(m *mounted, img benchImage, o options) (float64, error) {
		iops, _, err := fioRun(m.file, "randread", direct, jobs, o.seconds)
		return iops, err
	}
}

// fioRun runs fio's rw pattern (randread: the file opened read-only;
// randwrite: a final fsync, counted) on file in 4 KiB blocks with psync
// and returns the operations per second and how many there were.
func fioRun(file, rw string, direct bool, jobs, seconds int) (float64, int64, error) {
	d := "0"
	if direct {
		d = "1"
	}
	args := []string{"--name=random", "--filename=" + file, "--rw=" + rw,
		"--bs=4k", "--ioengine=psync", "--direct=" + d, "--numjobs=" + strconv.Itoa(jobs), "--time_based",
		"--runtime=" + strconv.Itoa(seconds), "--group_reporting", "--output-format=json"}
	if rw == "randread" {
		args = append(args, "--readonly")
	} else {
		args = append(args, "--end_fsync=1")
	}
	out, err := exec.Command("fio", args...).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("fio: %v", err)
	}
	type side struct {
		IOPS     float64 `json:"iops"`
		TotalIOs int64   `json:"total_ios"`
	}
	var report struct {
		Jobs []struct {
			Read  side `json:"read"`
			Write side `json:"write"`
			Error int  `json:"error"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &report); err != nil || len(report.Jobs) == 0 || report.Jobs[0].Error != 0 {
		return 0, 0, fmt.Errorf("fio report: %v: %.300s", err, out)
	}
	r := report.Jobs[0].Read
	if rw != "randread" {
		r = report.Jobs[0].Write
	}
	return r.IOPS, r.TotalIOs, nil
}

// guestPartition is where the built guest disk's ext4 partition starts.
const guestPartition = 1 << 20

// withGuest attaches the file's ext4 partition to a loop device (by
// offset, so no partition device of an earlier attachment can be picked
// up; with direct, reading the file with O_DIRECT), mounts it read-only
// and calls fn with the mountpoint.
func withGuest(file, work string, direct bool, fn func(dir string) (float64, error)) (float64, error) {
	args := []string{"-r", "-o", strconv.Itoa(guestPartition), "--show", "-f", file}
	if direct {
		args = append(args, "--direct-io=on")
	}
	var stderr strings.Builder
	cmd := exec.Command("losetup", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("losetup: %v: %s", err, stderr.String())
	}
	loop := strings.TrimSpace(string(out))
	defer sh("losetup", "-d", loop)
	// losetup falls back to buffered reads with a warning where the file
	// refuses O_DIRECT: that would measure the other flow.
	if direct && stderr.Len() > 0 {
		return 0, fmt.Errorf("losetup --direct-io=on: %s", stderr.String())
	}
	dir, err := os.MkdirTemp(work, "guest")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if err := sh("mount", "-t", "ext4", "-o", "ro,noload", loop, dir); err != nil {
		return 0, err
	}
	defer sh("umount", dir)
	return fn(dir)
}

// coldGuest drops the kernel's caches (the guest file system's, the loop
// device's, the mount's), then reads the image files back into the page
// cache: what is measured is the path through the tool, not the host disk.
func coldGuest(img benchImage) error {
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return err
	}
	return warmImage(img)
}

// warmImage reads the image and its raw disk into the page cache.
func warmImage(img benchImage) error {
	for _, p := range []string{img.path, img.raw} {
		if err := warm(p); err != nil {
			return err
		}
	}
	return nil
}

// tarRate archives the tree at dir to a pipe (tar skips reading files
// when it writes to /dev/null) and returns MiB/s.
func tarRate(dir string) (float64, error) {
	start := time.Now()
	cmd := exec.Command("tar", "cf", "-", "-C", dir, ".")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	n, copyErr := drain(stdout)
	if err := cmd.Wait(); err != nil || copyErr != nil {
		return 0, fmt.Errorf("tar: %v %v: %.300s", err, copyErr, stderr.String())
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds(), nil
}

func guestTar(direct bool) func(m *mounted, img benchImage, o options) (float64, error) {
	return func(m *mounted, img benchImage, o options) (float64, error) {
		return withGuest(m.file, o.work, direct, func(dir string) (float64, error) {
			if err := coldGuest(img); err != nil {
				return 0, err
			}
			return tarRate(dir)
		})
	}
}

// smallFiles is how many of the guest's small files the small-file test
// reads at most: those under 16 KiB, in path order (the mostly empty
// guest has a few hundred).
const (
	smallFiles    = 5000
	minSmallFiles = 100
)

func guestSmallFiles(direct bool) func(m *mounted, img benchImage, o options) (float64, error) {
	return func(m *mounted, img benchImage, o options) (float64, error) {
		return withGuest(m.file, o.work, direct, func(dir string) (float64, error) {
			var files []string
			err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() || len(files) == smallFiles {
					return err
				}
				if info, err := d.Info(); err == nil && info.Size() < 16<<10 {
					files = append(files, p)
				}
				return nil
			})
			if err != nil {
				return 0, err
			}
			if len(files) < minSmallFiles {
				return 0, fmt.Errorf("the guest has only %d files under 16 KiB", len(files))
			}
			if err := coldGuest(img); err != nil {
				return 0, err
			}
			start := time.Now()
			for _, p := range files {
				if _, err := os.ReadFile(p); err != nil {
					return 0, err
				}
			}
			return time.Since(start).Seconds(), nil
		})
	}
}

// fuse2fsTar is the rootless flow: fuse2fs reads the ext4 partition from
// the tool's file, no loop device.
func fuse2fsTar(m *mounted, img benchImage, o options) (float64, error) {
	dir, err := os.MkdirTemp(o.work, "fuse2fs")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if err := sh("fuse2fs", "-o", "ro,fakeroot,offset="+strconv.Itoa(guestPartition), m.file, dir); err != nil {
		return 0, err
	}
	defer sh("fusermount3", "-u", dir)
	if err := coldGuest(img); err != nil {
		return 0, err
	}
	return tarRate(dir)
}

// warm reads a file so that it is in the page cache.
func warm(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = drain(f)
	return err
}

// drain reads r to its end in 1 MiB pieces (io.Copy to io.Discard would
// read 8 KiB at a time) and returns how many bytes it read.
func drain(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// formatTable prints one image's figures as a Markdown table: a row per
// metric, a column per tool, and our ratio to the best peer (above 1 is
// better for us, for times too).
func formatTable(img benchImage, ms []metric, results []figures) string {
	var b strings.Builder
	fmt.Fprintf(&b, "#### %s\n\n| measure |", img.name)
	for _, r := range results {
		fmt.Fprintf(&b, " %s |", r.tool)
	}
	b.WriteString(" ours / best peer |\n|---|")
	for range results {
		b.WriteString("---:|")
	}
	b.WriteString("---:|\n")
	row := func(name string, cell func(r figures) string, ratio string) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, r := range results {
			fmt.Fprintf(&b, " %s |", cell(r))
		}
		fmt.Fprintf(&b, " %s |\n", ratio)
	}
	for _, mt := range ms {
		if mt.guest && !img.guest {
			continue
		}
		var ours, bestPeer float64
		for _, r := range results {
			v, ok := r.values[mt.name]
			switch {
			case !ok:
			case !r.peer && strings.Contains(r.tool, "ours"):
				ours = v
			case r.peer && (bestPeer == 0 || (mt.higher && v > bestPeer) || (!mt.higher && v < bestPeer)):
				bestPeer = v
			}
		}
		ratio := ""
		if ours > 0 && bestPeer > 0 {
			if mt.higher {
				ratio = fmt.Sprintf("%.2fx", ours/bestPeer)
			} else {
				ratio = fmt.Sprintf("%.2fx", bestPeer/ours)
			}
		}
		row(mt.name+" ("+mt.unit+")", func(r figures) string {
			if err, ok := r.errs[mt.name]; ok {
				return "failed: " + strings.ReplaceAll(fmt.Sprint(err), "|", "/")
			}
			v, ok := r.values[mt.name]
			switch {
			case !ok:
				return "n/a"
			case mt.unit == "s":
				return fmt.Sprintf("%.2f", v)
			}
			return fmt.Sprintf("%.0f", v)
		}, ratio)
	}
	row("mount ready (ms)", func(r figures) string { return strconv.FormatInt(r.ready.Milliseconds(), 10) }, "")
	row("peak RSS (MiB)", func(r figures) string { return fmt.Sprintf("%.0f", r.rssMiB) }, "")
	return b.String()
}
