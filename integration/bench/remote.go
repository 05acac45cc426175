package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// The remote measures: an image on a web server on this machine, once
// with a delay added to every request (a far server), once without.
const (
	remoteDelay = 20 * time.Millisecond
	// A small file of the guest's ext4: /usr/lib is copied in first, in
	// lexical order, and apt comes first in it on Debian.
	remoteFile = "usr/lib/apt/apt.systemd.daily"
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

// remoteFigures reads remoteFile from the guest of img two ways through a
// server 20 ms away: mounted from its URL, and downloaded first then
// mounted; then reads all of disk.raw over a server with no delay, and
// the same from the local file. Best of runs, taking turns.
func remoteFigures(img benchImage, ours, work string, runs int) (string, error) {
	dir := filepath.Dir(img.path)
	name := filepath.Base(img.path)
	type result struct {
		secs  float64
		bytes int64
	}
	best := map[string]result{}
	rates := map[string]float64{}  // MiB/s
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
			rate, err := mountedSequential(ours, src.image, work)
			if err != nil {
				return "", err
			}
			if src.key == "far" && rate > rates["far"] {
				farRequests, farBusy = far.requests.Load()-requests, far.maxBusy.Load()
			}
			rates[src.key] = max(rates[src.key], rate)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "#### Remote: %s on a web server on this machine\n\n", img.name)
	fmt.Fprintf(&b, "Reading `/%s` from the guest's ext4 (fuse2fs on p1.raw) through a server that adds %v to every request, from nothing mounted to the file read:\n\n", remoteFile, remoteDelay)
	b.WriteString("| way | time (s) | MiB fetched |\n|---|---:|---:|\n")
	for _, k := range []string{"mounted from its URL", "downloaded first, then mounted"} {
		fmt.Fprintf(&b, "| %s | %.2f | %.1f |\n", k, best[k].secs, float64(best[k].bytes)/(1<<20))
	}
	fmt.Fprintf(&b, "\nSequential read of disk.raw (%d MiB) in 1 MiB reads: from the local file %.0f MiB/s; over a local server with no delay %.0f MiB/s (%.2fx); "+
		"over the server that adds %v to every request %.0f MiB/s, in %d requests (%.2f per MiB), at most %d at once.\n",
		mib, rates["local"], rates["remote"], rates["remote"]/rates["local"], remoteDelay, rates["far"], farRequests, float64(farRequests)/float64(mib), farBusy)
	return b.String(), nil
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

// mountedSequential mounts image and reads its disk.raw once, in MiB/s.
func mountedSequential(ours, image, work string) (float64, error) {
	mnt, err := os.MkdirTemp(work, "remote")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(mnt)
	if err := sh(ours, image, mnt); err != nil {
		return 0, err
	}
	defer sh(ours, "umount", "--wait", mnt)
	return sequential(filepath.Join(mnt, "disk.raw"), 1)
}
