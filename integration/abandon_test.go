package integration

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// holdingServer serves file, and the files beside it, with byte ranges,
// and holds every request
// that hold says to hold (by its number, from 1, and the range's start)
// until the test ends. held counts the requests held so far.
func holdingServer(t *testing.T, file string, hold func(n int64, start int64) bool) (url string, held *atomic.Int64) {
	t.Helper()
	held = &atomic.Int64{}
	var requests atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var start int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &start)
		if hold(requests.Add(1), start) {
			held.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		f, err := os.Open(filepath.Join(filepath.Dir(file), filepath.Base(r.URL.Path)))
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		defer f.Close()
		http.ServeContent(w, r, "", time.Time{}, f)
	}))
	t.Cleanup(func() {
		close(release) // before the server waits for its handlers
		srv.Close()
	})
	return srv.URL + "/" + filepath.Base(file), held
}

// dataImage is a qcow2 image of 64 MiB whose first 32 MiB hold data, so
// that its file is 32 MiB too: long enough to read for a reader to be
// caught in the middle.
func dataImage(t *testing.T) string {
	t.Helper()
	qemutest.Require(t, "qemu-img", "qemu-io")
	image := filepath.Join(t.TempDir(), "data.qcow2")
	qemutest.Create(t, image, "qcow2", "64M")
	qemutest.IO(t, image, "write -P 0x5a 0 32M")
	return image
}

// TestInterruptWhileARemoteReadStalls: export, hash and info of a remote
// image whose server stops answering stop within moments of SIGINT or
// SIGTERM, exit 130 and leave no partial output, instead of waiting out
// --remote-timeout.
func TestInterruptWhileARemoteReadStalls(t *testing.T) {
	image := dataImage(t)
	// Reading data stalls past 8 MiB; opening, after the probe.
	data := func(_, start int64) bool { return start >= 8<<20 }
	opening := func(n, _ int64) bool { return n > 1 }
	tests := []struct {
		name string
		hold func(n, start int64) bool
		args func(url, out string) []string
	}{
		{"export", data, func(url, out string) []string { return []string{"export", url, out} }},
		{"export to stdout", data, func(url, out string) []string { return []string{"export", url, "-"} }},
		{"hash", data, func(url, out string) []string { return []string{"hash", url} }},
		{"info", opening, func(url, out string) []string { return []string{"info", url} }},
		{"check", opening, func(url, out string) []string { return []string{"check", url} }},
	}
	for _, tc := range tests {
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
			t.Run(fmt.Sprintf("%s %v", tc.name, sig), func(t *testing.T) {
				url, held := holdingServer(t, image, tc.hold)
				dir := t.TempDir()
				cmd := exec.Command(bin, append(tc.args(url, filepath.Join(dir, "out.raw")), "--remote-timeout", "10m")...)
				var stderr lockedBuffer
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "a read to stall", 30*time.Second, func() bool { return held.Load() > 0 })
				time.Sleep(100 * time.Millisecond)
				cmd.Process.Signal(sig)
				stopped := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
				err := cmd.Wait()
				if !stopped.Stop() {
					t.Fatalf("still running 10 s after %v: %s", sig, stderr.String())
				}
				// check too: an interrupt, not "could not check" (1).
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 || !strings.Contains(stderr.String(), "interrupted") {
					t.Fatalf("exit %v, want 130 saying interrupted: %s", err, stderr.String())
				}
				if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) > 0 {
					t.Errorf("left %q behind", left)
				}
			})
		}
	}
}

// TestMountWhoseStarterGaveUp: when the command that starts a mount is
// gone before the mount is ready (timeout(1) gave up on it, Ctrl-C, a
// kill), the background process mounts nothing and exits, whichever
// request of the remote image's opening it was waiting on.
func TestMountWhoseStarterGaveUp(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img")
	// A chain over HTTP: the top's probe and header, then the base's.
	dir := t.TempDir()
	base, _ := filepath.Abs("../testdata/demo.qcow2")
	qemutest.Run(t, "cp", base, filepath.Join(dir, "base.qcow2"))
	top := filepath.Join(dir, "top.qcow2")
	qemutest.Create(t, top, "qcow2", "8M", "backing_file=base.qcow2", "backing_fmt=qcow2")
	for _, at := range []int64{1, 2, 3, 4} {
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(fmt.Sprintf("request %d, %v", at, sig), func(t *testing.T) {
				url, held := holdingServer(t, top, func(n, _ int64) bool { return n == at })
				mnt := t.TempDir()
				starter := exec.Command(bin, url, mnt)
				var out lockedBuffer
				starter.Stdout, starter.Stderr = &out, &out
				if err := starter.Start(); err != nil {
					t.Fatal(err)
				}
				exited := make(chan error, 1)
				go func() { exited <- starter.Wait() }()
				t.Cleanup(func() { unmount(t, mnt) })
				for held.Load() == 0 {
					select {
					case err := <-exited:
						t.Fatalf("the mount was ready before request %d (%v): %s", at, err, out.String())
					case <-time.After(10 * time.Millisecond):
					}
				}
				var server int
				waitFor(t, "the background process", 10*time.Second, func() bool { server = serverPID(mnt); return server > 0 })
				starter.Process.Signal(sig)
				<-exited
				waitFor(t, "the background process to exit", 10*time.Second, func() bool { return !alive(server) })
				if isMounted(mnt) {
					t.Fatal("mounted after its starter was gone")
				}
			})
		}
	}
}

// TestRemoteErrorsKeepSecretsOut: whatever fails with a presigned URL
// (connection, TLS, status, redirect, timeout), neither the commands'
// messages, nor info --json, nor a mount's log show its query or its
// password.
func TestRemoteErrorsKeepSecretsOut(t *testing.T) {
	const secret = "s3cr3t-Sig"
	image := dataImage(t)
	presigned := func(base string) string {
		return strings.Replace(base, "http://", "http://user:pw-"+secret+"@", 1) + "?X-Amz-Signature=" + secret
	}
	refusedURL := func(t *testing.T) string {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close() // nothing listens there now
		return presigned(srv.URL + "/d.qcow2")
	}
	tests := []struct {
		name string
		url  func(t *testing.T) string
		says string
	}{
		{"connection refused", refusedURL, "connection refused"},
		{"unknown certificate authority", func(t *testing.T) string {
			srv := httptest.NewTLSServer(http.NotFoundHandler())
			t.Cleanup(srv.Close)
			return strings.Replace(presigned(strings.Replace(srv.URL, "https", "http", 1)+"/d.qcow2"), "http://", "https://", 1)
		}, "--ca-file"},
		{"status 403", func(t *testing.T) string {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) }))
			t.Cleanup(srv.Close)
			return presigned(srv.URL + "/d.qcow2")
		}, "403 Forbidden"},
		{"redirect to another host", func(t *testing.T) string {
			srv := httptest.NewServer(http.RedirectHandler(presigned("http://127.0.0.2:9/elsewhere"), http.StatusFound))
			t.Cleanup(srv.Close)
			return presigned(srv.URL + "/d.qcow2")
		}, "another origin"},
		{"timeout", func(t *testing.T) string {
			url, _ := holdingServer(t, image, func(n, _ int64) bool { return n > 1 }) // all but the probe
			return presigned(url)
		}, "no complete answer in time"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url(t)
			for _, args := range [][]string{{"info"}, {"info", "--json"}, {"check"}, {"hash"}, {"export", "--no-progress"}, {"--debug", "info"}} {
				args = append(append(args, url), "--remote-timeout", "1s")
				if args[0] == "export" {
					args = append(args, filepath.Join(t.TempDir(), "out.raw"))
				}
				out, code := run(t, args...)
				if code == 0 || !strings.Contains(out, tc.says) || strings.Contains(out, secret) {
					t.Errorf("qcowmount %s: exit %d, want an error saying %q, without the secret: %s", strings.Join(args[:len(args)-1], " "), code, tc.says, out)
				}
			}
			// A mount that fails to open says why, without it.
			out, code := run(t, url, t.TempDir(), "--remote-timeout", "1s")
			if code != 3 || strings.Contains(out, secret) {
				t.Errorf("mount: exit %d: %s", code, out)
			}
		})
	}
	t.Run("a read that times out in a mount", func(t *testing.T) {
		requireFUSE(t)
		url, held := holdingServer(t, image, func(_, start int64) bool { return start >= 16<<20 })
		mnt := t.TempDir()
		var log lockedBuffer
		server := exec.Command(bin, "-f", "--debug", "--remote-timeout", "1s", presigned(url), mnt)
		server.Stderr = &log
		if err := server.Start(); err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		stop := func() {
			once.Do(func() {
				unmount(t, mnt)
				server.Wait()
			})
		}
		t.Cleanup(stop)
		waitFor(t, "the mount", 30*time.Second, func() bool { return isMounted(mnt) })
		f, err := os.Open(filepath.Join(mnt, "disk.raw"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.ReadAt(make([]byte, 4096), 24<<20)
		f.Close()
		if err == nil || held.Load() == 0 {
			t.Fatalf("a read the server never answers: %v", err)
		}
		stop()
		if !strings.Contains(log.String(), "no complete answer in time") || strings.Contains(log.String(), secret) {
			t.Errorf("the log says no timeout, or the secret:\n%s", log.String())
		}
	})
}
