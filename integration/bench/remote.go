package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/qcowmount/qcowmount/integration/internal/proc"
)

// The remote measures: an image on a web server on this machine, once
// with a delay added to every request (a far server), once without.
const (
	remoteDelay = 20 * time.Millisecond
	// A small file of the guest's ext4: /usr/lib is copied in first, in
	// lexical order, and apt comes first in it on Debian.
	remoteFile = "usr/lib/apt/apt.systemd.daily"
	// remoteExportLimit stops an export over HTTP that hangs: QEMU 7.2's
	// curl driver has stalled here for good, with and without -m 16.
	remoteExportLimit = time.Minute
)

// slowServer serves dir over HTTP on loopback, sleeping delay before
// each answer and counting the bytes it sends, the requests, and the most
// it answered at once.
type slowServer struct {
	url      string
	sent     atomic.Int64
	requests atomic.Int64
	busy     atomic.Int64
	maxBusy  atomic.Int64
	close    func()
}

func newSlowServer(dir string, delay time.Duration) (*slowServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &slowServer{url: "http://" + l.Addr().String()}
	files := http.FileServer(http.Dir(dir))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		n := s.busy.Add(1)
		defer s.busy.Add(-1)
		for m := s.maxBusy.Load(); n > m && !s.maxBusy.CompareAndSwap(m, n); m = s.maxBusy.Load() {
		}
		time.Sleep(delay)
		files.ServeHTTP(countingWriter{w, &s.sent}, r)
	})}
	go srv.Serve(l)
	s.close = func() { srv.Close() }
	return s, nil
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// ReadFrom keeps the ResponseWriter's own, which sends a file with
// sendfile(2) as web servers do; without it the file would be copied
// through a buffer in user space.
func (c countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := c.ResponseWriter.(io.ReaderFrom).ReadFrom(r)
	c.n.Add(n)
	return n, err
}

// remoteFigures reads remoteFile from the guest of img two ways through a
// server 20 ms away: mounted from its URL, and downloaded first then
// mounted. Then it reads all of disk.raw from a server with no delay,
// from the one 20 ms away and from the local file, with curl's fetch of
// the image file beside them for the ceiling, and exports the disk from
// both servers, ours against qemu-img. Best of runs, taking turns.
func remoteFigures(img benchImage, ours, work string, runs int) (string, error) {
	dir := filepath.Dir(img.path)
	name := filepath.Base(img.path)
	type result struct {
		secs  float64
		bytes int64
	}
	best := map[string]result{}
	rates := map[string]float64{}  // MiB/s of disk.raw
	cpus := map[string]float64{}   // CPU seconds of every process, in the best run
	var farRequests, farBusy int64 // of the best sequential run 20 ms away
	keep := func(k string, r result) {
		if b, ok := best[k]; !ok || r.secs < b.secs {
			best[k] = r
		}
	}
	st, err := os.Stat(img.raw)
	if err != nil {
		return "", err
	}
	mib := st.Size() >> 20
	file, err := os.Stat(img.path)
	if err != nil {
		return "", err
	}
	far, err := newSlowServer(dir, remoteDelay)
	if err != nil {
		return "", err
	}
	defer far.close()
	near, err := newSlowServer(dir, 0)
	if err != nil {
		return "", err
	}
	defer near.close()
	// Export from each server: the best seconds of each command, and how
	// many of its runs were stopped at remoteExportLimit.
	servers := []struct {
		name string
		url  string
	}{{"no delay", near.url}, {fmt.Sprint(remoteDelay, " added"), far.url}}
	exportCmds := remoteExportRuns(ours, st.Size())
	exports := make([][]float64, len(servers))
	unfinished := make([][]int, len(servers))
	for i := range servers {
		exports[i] = make([]float64, len(exportCmds))
		unfinished[i] = make([]int, len(exportCmds))
	}
	for run := 1; run <= runs; run++ {
		fmt.Fprintf(os.Stderr, "remote, run %d of %d ...\n", run, runs)
		before := far.sent.Load()
		start := time.Now()
		if err := readGuestFile(ours, far.url+"/"+name, work); err != nil {
			return "", err
		}
		keep("mounted from its URL", result{time.Since(start).Seconds(), far.sent.Load() - before})

		before = far.sent.Load()
		start = time.Now()
		local := filepath.Join(work, "downloaded.qcow2")
		if err := download(far.url+"/"+name, local); err != nil {
			return "", err
		}
		err := readGuestFile(ours, local, work)
		os.Remove(local)
		if err != nil {
			return "", err
		}
		keep("downloaded first, then mounted", result{time.Since(start).Seconds(), far.sent.Load() - before})

		for _, src := range []struct{ key, image string }{{"remote", near.url + "/" + name}, {"far", far.url + "/" + name}, {"local", img.path}} {
			requests := far.requests.Load()
			far.maxBusy.Store(0)
			rate, cpu, err := mountedSequential(ours, src.image, work)
			if err != nil {
				return "", err
			}
			if src.key == "far" && rate > rates["far"] {
				farRequests, farBusy = far.requests.Load()-requests, far.maxBusy.Load()
			}
			if rate > rates[src.key] {
				rates[src.key], cpus[src.key] = rate, cpu
			}
		}
		secs, cpu, err := transportAlone(near.url + "/" + name)
		if err != nil {
			return "", err
		}
		if rate := float64(mib) / secs; rate > rates["curl"] {
			rates["curl"], cpus["curl"] = rate, cpu
		}
		for k, srv := range servers {
			for i, r := range exportCmds {
				fmt.Fprintf(os.Stderr, "remote, run %d of %d: %s, %s ...\n", run, runs, r.name, srv.name)
				secs, err := timeCommandsWithin(r.args(benchImage{path: srv.url + "/" + name}, ""), "", remoteExportLimit)
				if errors.Is(err, errTooLong) && r.role != roleOurs {
					unfinished[k][i]++
					continue
				}
				if err != nil {
					return "", err
				}
				if exports[k][i] == 0 || secs < exports[k][i] {
					exports[k][i] = secs
				}
			}
		}
	}
	// A read over HTTP does what curl and the server did (move the
	// image's bytes) and what the local read did (answer FUSE with them,
	// the reader copying them out): on these cores it cannot pass this.
	cores := runtime.NumCPU()
	ceiling := float64(cores) * float64(mib) / (cpus["curl"] + cpus["local"])
	var b strings.Builder
	fmt.Fprintf(&b, "#### Remote: %s on a web server on this machine\n\n", img.name)
	fmt.Fprintf(&b, "Reading `/%s` from the guest's ext4 (fuse2fs on p1.raw) through a server that adds %v to every request, from nothing mounted to the file read:\n\n", remoteFile, remoteDelay)
	b.WriteString("| way | time (s) | MiB fetched |\n|---|---:|---:|\n")
	for _, k := range []string{"mounted from its URL", "downloaded first, then mounted"} {
		fmt.Fprintf(&b, "| %s | %.2f | %.1f |\n", k, best[k].secs, float64(best[k].bytes)/(1<<20))
	}
	fmt.Fprintf(&b, "\nSequential read of disk.raw (%d MiB, %.0f MiB of it in the image file) in 1 MiB reads, mounted with ours. The rate is disk.raw's size over the time taken; CPU is every process's (our server, the web server, the reader) in the fastest run:\n\n", mib, float64(file.Size())/(1<<20))
	b.WriteString("| way | MiB/s | of the local file | CPU (s) |\n|---|---:|---:|---:|\n")
	for _, w := range []struct{ key, name string }{
		{"local", "from the local file"},
		{"remote", "over a local server with no delay"},
		{"curl", "curl alone: the image file (what the read fetches) from that server to /dev/null, no FUSE"},
	} {
		fmt.Fprintf(&b, "| %s | %.0f | %.2fx | %.2f |\n", w.name, rates[w.key], rates[w.key]/rates["local"], cpus[w.key])
	}
	fmt.Fprintf(&b, "| ceiling on %d cores: curl's CPU and the local read's together | %.0f | %.2fx | %.2f |\n", cores, ceiling, ceiling/rates["local"], cpus["curl"]+cpus["local"])
	fmt.Fprintf(&b, "\nOver the server that adds %v to every request: %.0f MiB/s, in %d requests (%.2f per MiB), at most %d at once.\n",
		remoteDelay, rates["far"], farRequests, float64(farRequests)/float64(mib), farBusy)
	b.WriteString("\nExport of the whole disk from each server, the output thrown away (writing it to a file here took anywhere from 0.3 to 2.5 s, for either tool), seconds, best of the runs; the ratio is the best peer's time over ours:\n\n| server |")
	for _, r := range exportCmds {
		b.WriteString(" " + r.name + " |")
	}
	b.WriteString(" ratio |\n|---|" + strings.Repeat("---:|", len(exports[0])+1) + "\n")
	var hung []string
	for k, srv := range servers {
		fmt.Fprintf(&b, "| %s |", srv.name)
		ourBest, peerBest := 0.0, 0.0
		for i, r := range exportCmds {
			if n := unfinished[k][i]; n > 0 {
				hung = append(hung, fmt.Sprintf("%s from the server with %s did not finish within %v in %d of %d runs", r.name, srv.name, remoteExportLimit, n, runs))
			}
			if exports[k][i] == 0 {
				b.WriteString(" none finished |")
				continue
			}
			fmt.Fprintf(&b, " %.2f |", exports[k][i])
			switch {
			case r.role == roleOurs:
				ourBest = exports[k][i]
			case peerBest == 0 || exports[k][i] < peerBest:
				peerBest = exports[k][i]
			}
		}
		if peerBest > 0 {
			fmt.Fprintf(&b, " %.2fx |\n", peerBest/ourBest)
		} else {
			b.WriteString(" no peer finished |\n")
		}
	}
	if len(hung) > 0 {
		fmt.Fprintf(&b, "\n%s: each was stopped then, and its best counts the runs that finished.\n", strings.Join(hung, "; "))
	}
	return b.String(), nil
}

// remoteExportRuns export an image given by URL and throw the disk away:
// ours to standard output on /dev/null, qemu-img to its null-co driver
// (it cannot write to /dev/null).
func remoteExportRuns(binary string, size int64) []commandRun {
	null := fmt.Sprintf("driver=raw,file.driver=null-co,file.size=%d", size)
	return []commandRun{
		{"qcowmount export - >/dev/null", roleOurs, func(img benchImage, _ string) [][]string {
			return [][]string{{"sh", "-c", `exec "$0" export --no-progress "$1" - >/dev/null`, binary, img.path}}
		}},
		{"qemu-img convert to null-co", rolePeer, func(img benchImage, _ string) [][]string {
			return [][]string{{"qemu-img", "convert", "-n", "--target-image-opts", img.path, null}}
		}},
		{"qemu-img convert -m 16 -W to null-co", rolePeer, func(img benchImage, _ string) [][]string {
			return [][]string{{"qemu-img", "convert", "-m", "16", "-W", "-n", "--target-image-opts", img.path, null}}
		}},
	}
}

// transportAlone times curl reading url to /dev/null, and returns the
// seconds and the CPU seconds of curl and of this process (the server).
func transportAlone(url string) (secs, cpu float64, err error) {
	before, err := proc.UsageOf(os.Getpid())
	if err != nil {
		return 0, 0, err
	}
	cmd := exec.Command("curl", "--silent", "--show-error", "--fail", "--output", "/dev/null", url)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("curl %s: %v: %s", url, err, out)
	}
	secs = time.Since(start).Seconds()
	after, err := proc.UsageOf(os.Getpid())
	if err != nil {
		return 0, 0, err
	}
	return secs, (after.CPU - before.CPU + cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds(), nil
}

// readGuestFile mounts image, mounts its first partition with fuse2fs,
// reads remoteFile and unmounts both.
func readGuestFile(ours, image, work string) error {
	mnt, err := os.MkdirTemp(work, "remote")
	if err != nil {
		return err
	}
	defer os.RemoveAll(mnt)
	if err := sh(ours, image, mnt); err != nil {
		return err
	}
	defer sh(ours, "umount", "--wait", mnt)
	guest, err := os.MkdirTemp(work, "guest")
	if err != nil {
		return err
	}
	defer os.RemoveAll(guest)
	if err := sh("fuse2fs", "-o", "ro,fakeroot", filepath.Join(mnt, "p1.raw"), guest); err != nil {
		return err
	}
	defer sh("fusermount3", "-u", guest)
	b, err := os.ReadFile(filepath.Join(guest, remoteFile))
	if err == nil && len(b) == 0 {
		err = fmt.Errorf("%s is empty in the guest", remoteFile)
	}
	return err
}

func download(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// mountedSequential mounts image and reads its disk.raw once, in MiB/s,
// and returns the CPU seconds our server and this process (the reader,
// and the web server) spent meanwhile.
func mountedSequential(ours, image, work string) (rate, cpu float64, err error) {
	mnt, err := os.MkdirTemp(work, "remote")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(mnt)
	if err := sh(ours, image, mnt); err != nil {
		return 0, 0, err
	}
	defer sh(ours, "umount", "--wait", mnt)
	pid := proc.Find(ours, mnt)
	if pid == 0 {
		return 0, 0, fmt.Errorf("no server process for %s", mnt)
	}
	var before, after [2]proc.Usage
	for i, p := range []int{pid, os.Getpid()} {
		if before[i], err = proc.UsageOf(p); err != nil {
			return 0, 0, err
		}
	}
	rate, err = sequential(filepath.Join(mnt, "disk.raw"), 1)
	if err != nil {
		return 0, 0, err
	}
	for i, p := range []int{pid, os.Getpid()} {
		if after[i], err = proc.UsageOf(p); err != nil {
			return 0, 0, err
		}
		cpu += (after[i].CPU - before[i].CPU).Seconds()
	}
	return rate, cpu, nil
}
