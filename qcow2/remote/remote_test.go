package remote

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// object is what the test server serves: bytes with an ETag, which a
// test may change, and faults it may inject.
type object struct {
	mu       sync.Mutex
	data     []byte
	etag     string
	noRanges bool          // answer every request with the whole body
	fail503  int           // answer this many requests with 503 first
	dropAt   int           // cut this many bodies short after half
	delay    time.Duration // before each answer
	hold     chan struct{} // when set, hold answers for ranges past holdAt
	holdAt   int64
	requests atomic.Int64
	busy     atomic.Int64 // requests being answered
	maxBusy  atomic.Int64 // the most answered at once
}

func (o *object) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.requests.Add(1)
	n := o.busy.Add(1)
	defer o.busy.Add(-1)
	for m := o.maxBusy.Load(); n > m && !o.maxBusy.CompareAndSwap(m, n); m = o.maxBusy.Load() {
	}
	o.mu.Lock()
	data, etag, delay, hold := o.data, o.etag, o.delay, o.hold
	fail := o.fail503 > 0
	if fail {
		o.fail503--
	}
	drop := o.dropAt > 0 && r.Header.Get("Range") != "bytes=0-0"
	if drop {
		o.dropAt--
	}
	o.mu.Unlock()
	time.Sleep(delay)
	if hold != nil {
		var start int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &start)
		if start >= o.holdAt {
			<-hold
		}
	}
	switch {
	case fail:
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	case o.noRanges:
		w.Write(data)
		return
	case drop:
		var start, end int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &start, &end)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(data)))
		w.Header().Set("Content-Length", fmt.Sprint(end-start+1))
		w.Header().Set("ETag", etag)
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[start : start+(end-start+1)/2])
		panic(http.ErrAbortHandler) // the connection drops mid-body
	}
	w.Header().Set("ETag", etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
}

func serve(t *testing.T, size int) (*object, *httptest.Server) {
	t.Helper()
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	o := &object{data: data, etag: `"v1"`}
	srv := httptest.NewServer(o)
	t.Cleanup(srv.Close)
	return o, srv
}

// mustOpen opens the object at url for the rest of the test.
func mustOpen(t *testing.T, url string, o Options) *File {
	t.Helper()
	f, err := Open(url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func small(o Options) Options {
	o.BlockSize = 64 << 10
	return o
}

func TestReadsWhatTheServerHolds(t *testing.T) {
	o, srv := serve(t, 3<<20+1234)
	var traced atomic.Int64
	f := mustOpen(t, srv.URL+"/disk.qcow2?X-Amz-Signature=secret", small(Options{Trace: func(string, int64, int64, int, time.Duration, error) { traced.Add(1) }}))
	if f.Size() != int64(len(o.data)) || strings.Contains(f.Name(), "secret") {
		t.Fatalf("size %d, name %s", f.Size(), f.Name())
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(3, uint64(g)))
			buf := make([]byte, 300<<10)
			for range 40 {
				off := r.Int64N(f.Size())
				n := 1 + r.IntN(len(buf))
				if g == 0 {
					off, n = 0, len(buf) // one sequential-ish reader
				}
				got, err := f.ReadAt(buf[:n], off)
				want := o.data[off:min(off+int64(n), f.Size())]
				if (err != nil && err != io.EOF) || !bytes.Equal(buf[:got], want) {
					t.Errorf("ReadAt(%d, %d) = %d, %v: wrong bytes", off, n, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got, want := traced.Load(), o.requests.Load(); got != want {
		t.Errorf("traced %d requests, the server saw %d", got, want)
	}
	if bytes, reqs := f.Fetched(); bytes > int64(len(o.data))*2 || reqs != o.requests.Load() {
		t.Errorf("fetched %d bytes in %d requests", bytes, reqs)
	}
}

// A cache far smaller than what is read evicts all the time, and evicted
// blocks' buffers are reused for the next fetches: readers must still see
// the right bytes (and -race no race), and bytes lent by Pin must stay
// as they were until released, however often the cache evicts their
// blocks meanwhile; released, their buffers are reused too.
func TestEvictedBlocksAreReused(t *testing.T) {
	o, srv := serve(t, 3<<20)
	f := mustOpen(t, srv.URL, small(Options{CacheSize: 256 << 10}))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			buf := make([]byte, 200<<10)
			for range 50 {
				pinOff, pinN := r.Int64N(f.Size()-300<<10), 1+r.IntN(300<<10)
				bufs, release, err := f.Pin(pinOff, pinN)
				if err != nil {
					t.Errorf("Pin(%d, %d): %v", pinOff, pinN, err)
					return
				}
				off, n := r.Int64N(f.Size()), 1+r.IntN(len(buf))
				got, err := f.ReadAt(buf[:n], off)
				if (err != nil && err != io.EOF) || !bytes.Equal(buf[:got], o.data[off:off+int64(got)]) {
					t.Errorf("ReadAt(%d, %d) = %d, %v: wrong bytes", off, n, got, err)
					return
				}
				if lent := bytes.Join(bufs, nil); !bytes.Equal(lent, o.data[pinOff:pinOff+int64(pinN)]) {
					t.Errorf("Pin(%d, %d): %d bytes, changed while pinned", pinOff, pinN, len(lent))
				}
				release()
			}
		})
	}
	wg.Wait()
	if used := f.sh.cache.Used(); used > 256<<10 {
		t.Errorf("the cache holds %d bytes, over its 256 KiB", used)
	}
	if f.sh.spare.Get() == nil {
		t.Error("no buffer the cache let go, pinned or not, was put back for reuse")
	}
	for _, tc := range []struct{ off, n int64 }{{-1, 10}, {f.Size() - 10, 11}} {
		if _, _, err := f.Pin(tc.off, int(tc.n)); err == nil {
			t.Errorf("Pin(%d, %d) outside the file: no error", tc.off, tc.n)
		}
	}
}

// Readahead grows with the bytes a reader consumes, not with how many
// reads it makes: a file system reading a few small blocks in a row must
// not pull megabytes.
func TestReadaheadFollowsWhatIsConsumed(t *testing.T) {
	o, srv := serve(t, 16<<20)
	f := mustOpen(t, srv.URL, small(Options{}))
	buf := make([]byte, 4096)
	for off := int64(0); off < 64<<10; off += int64(len(buf)) {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close() // waits for readahead
	if bytes, _ := f.Fetched(); bytes > 256<<10 {
		t.Errorf("16 reads of 4 KiB fetched %d KiB of %d", bytes>>10, len(o.data)>>10)
	}
}

func TestSequentialReadsAreReadAhead(t *testing.T) {
	const size, chunk = 16 << 20, 128 << 10
	inOrder := func(i int) int { return i }
	// Two reads in flight answered in turn, as FUSE's readahead sends
	// them: the second chunk of each pair arrives first.
	pairsSwapped := func(i int) int { return i ^ 1 }
	tests := []struct {
		name        string
		opts        Options
		readers     int             // each reads its share of the object, sequentially
		order       func(i int) int // which of its chunks a reader reads i-th
		maxRequests int64           // for the whole object
	}{
		// 16 MiB in 64 KiB blocks: the window grows to runs of 16 blocks.
		{"default cache", small(Options{}), 1, inOrder, 24},
		// Readahead stays within half the cache, so that what it fetches
		// is seldom evicted before it is read: 38 requests here, natively
		// and under s390x's emulation, 41 there on a loaded machine (a
		// block evicted before it was read is fetched again).
		{"small cache", small(Options{CacheSize: 1 << 20}), 1, inOrder, 46},
		// Requests in flight stay within MaxInFlight.
		{"two in flight", small(Options{MaxInFlight: 2}), 1, inOrder, 24},
		{"reads out of order", small(Options{}), 1, pairsSwapped, 28},
		// Each reader is a stream of its own, sharing the window.
		{"four readers", small(Options{}), 4, inOrder, 48},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, srv := serve(t, size)
			o.delay = time.Millisecond
			f := mustOpen(t, srv.URL, tc.opts)
			share := int64(size / tc.readers)
			var wg sync.WaitGroup
			for r := range tc.readers {
				wg.Go(func() {
					buf := make([]byte, chunk)
					for i := range int(share / chunk) {
						off := int64(r)*share + int64(tc.order(i))*chunk
						n, err := f.ReadAt(buf, off)
						if (err != nil && err != io.EOF) || !bytes.Equal(buf[:n], o.data[off:off+int64(n)]) {
							t.Errorf("ReadAt(%d) = %d, %v: wrong bytes", off, n, err)
							return
						}
					}
				})
			}
			wg.Wait()
			f.Close()
			t.Logf("%d requests", o.requests.Load())
			if n := o.requests.Load(); n > tc.maxRequests {
				t.Errorf("%d requests for %d readers' sequential reads of 128 KiB, want at most %d", n, tc.readers, tc.maxRequests)
			}
			// A slow machine (s390x under emulation) may see the cache drop
			// a block fetched ahead before it is read, since blocks the
			// reader has just consumed count as more recently used; an
			// unbounded window fetches the object twice over.
			if bytes, _ := f.Fetched(); bytes > int64(len(o.data))*9/8 {
				t.Errorf("fetched %d bytes of a %d-byte object: readahead fetched much of it twice", bytes, len(o.data))
			}
			if n, limit := o.maxBusy.Load(), int64(f.opts.MaxInFlight); n > limit {
				t.Errorf("%d requests at once, MaxInFlight is %d", n, limit)
			}
		})
	}
}

func TestServerFaults(t *testing.T) {
	tests := []struct {
		name    string
		fault   func(o *object)
		openErr string // "" to open
		readErr string // "" to read the right bytes
	}{
		{"no byte ranges", func(o *object) { o.noRanges = true }, "ignores byte ranges", ""},
		{"503 bursts", func(o *object) { o.fail503 = 3 }, "", ""},
		{"always 503", func(o *object) { o.fail503 = 1 << 30 }, "503 Service Unavailable (gave up after 5 tries)", ""},
		{"connections dropping mid-body", func(o *object) { o.dropAt = 2 }, "", ""},
		{"slow server", func(o *object) { o.delay = 100 * time.Millisecond }, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, srv := serve(t, 1<<20)
			tc.fault(o)
			start := time.Now()
			f, err := Open(srv.URL, small(Options{}))
			if tc.openErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.openErr) {
					t.Fatalf("open: %v, want %q", err, tc.openErr)
				}
				if time.Since(start) > 10*time.Second {
					t.Fatalf("refusing took %v", time.Since(start))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, 200<<10)
			if _, err := f.ReadAt(buf, 100); err != nil || !bytes.Equal(buf, o.data[100:100+len(buf)]) {
				t.Fatalf("read: %v", err)
			}
		})
	}
}

// TestServerThatNeverAnswers: a server that takes the connection and
// sends nothing fails the open, or a read, after Options.Timeout, retries
// included, rather than after every try's own timeout.
func TestServerThatNeverAnswers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		holdAt int64 // ranges from here are never answered
	}{{"at open", 0}, {"on a read", 512 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			o, srv := serve(t, 1<<20)
			o.hold, o.holdAt = make(chan struct{}), tc.holdAt
			t.Cleanup(func() { close(o.hold) }) // before the server closes
			const limit = time.Second
			start := time.Now()
			f, err := Open(srv.URL, small(Options{Timeout: limit}))
			if err == nil {
				defer f.Close()
				_, err = f.ReadAt(make([]byte, 4096), 600<<10)
			}
			took := time.Since(start)
			if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "the limit for one fetch is 1s") {
				t.Fatalf("error %v, want a timeout", err)
			}
			if took > 10*limit {
				t.Errorf("gave up after %v with a limit of %v", took, limit)
			}
		})
	}
}

// TestObjectChanging: once the object is another, every read fails, and
// none returns bytes of the new one.
func TestObjectChanging(t *testing.T) {
	for _, etag := range []string{`"v1"`, `W/"weak"`} {
		t.Run(etag, func(t *testing.T) {
			o, srv := serve(t, 1<<20)
			o.etag = etag
			f := mustOpen(t, srv.URL, small(Options{}))
			buf := make([]byte, 4096)
			if _, err := f.ReadAt(buf, 0); err != nil {
				t.Fatal(err)
			}
			o.mu.Lock()
			o.data = bytes.Repeat([]byte{0xee}, len(o.data))
			o.etag = `"v2"`
			o.mu.Unlock()
			for _, off := range []int64{512 << 10, 0, 900 << 10} {
				if _, err := f.ReadAt(buf, off); off != 0 && !errors.Is(err, ErrChanged) {
					t.Fatalf("read at %d after the change: %v", off, err)
				}
			}
		})
	}
}

// TestSlowReadsDoNotBlockOthers: a read that waits on the network leaves
// the others alone.
func TestSlowReadsDoNotBlockOthers(t *testing.T) {
	o, srv := serve(t, 2<<20)
	f := mustOpen(t, srv.URL, small(Options{}))
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	o.hold, o.holdAt = make(chan struct{}), 1<<20
	o.mu.Unlock()
	stuck := make(chan error, 1)
	go func() {
		_, err := f.ReadAt(make([]byte, 4096), 1<<20)
		stuck <- err
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	for _, off := range []int64{0, 512 << 10} { // cached, and not yet fetched
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("other reads waited %v behind a held one", d)
	}
	close(o.hold)
	if err := <-stuck; err != nil {
		t.Fatal(err)
	}
}

func TestRedirects(t *testing.T) {
	o, same := serve(t, 1<<20)
	_, other := serve(t, 1<<20)
	mux := http.NewServeMux()
	mux.Handle("/real", o)
	mux.HandleFunc("/here", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/real", http.StatusFound) })
	mux.HandleFunc("/away", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, other.URL, http.StatusFound) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	_ = same
	if f, err := Open(srv.URL+"/here", Options{}); err != nil {
		t.Fatalf("redirect on the same origin: %v", err)
	} else {
		f.Close()
	}
	start := time.Now()
	if _, err := Open(srv.URL+"/away", Options{}); !errors.Is(err, ErrOtherOrigin) || !strings.Contains(err.Error(), "redirected to "+other.URL) {
		t.Fatalf("redirect to another origin: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("a refused redirect was tried again")
	}
}

func TestCacheIsBounded(t *testing.T) {
	_, srv := serve(t, 8<<20)
	f := mustOpen(t, srv.URL, Options{BlockSize: 64 << 10, CacheSize: 1 << 20})
	buf := make([]byte, 256<<10)
	for off := int64(0); off < f.Size(); off += int64(len(buf)) {
		if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if used := f.sh.cache.Used(); used > 1<<20 {
			t.Fatalf("cache holds %d bytes, over its 1 MiB", used)
		}
	}
}

func TestResolveReference(t *testing.T) {
	base, _ := url.Parse("https://images.example:8443/vms/top.qcow2?sig=secret")
	tests := []struct{ name, want, err string }{
		{"base.qcow2", "https://images.example:8443/vms/base.qcow2", ""},
		{"../bases/base.qcow2", "https://images.example:8443/bases/base.qcow2", ""},
		{"odd?name#x.qcow2", "https://images.example:8443/vms/odd%3Fname%23x.qcow2", ""},
		{"https://images.example:8443/other/base.qcow2", "https://images.example:8443/other/base.qcow2", ""},
		{"/var/lib/images/base.qcow2", "", "absolute path"},
		{"https://169.254.169.254/latest/meta-data", "", "another origin"},
		{"http://images.example:8443/vms/base.qcow2", "", "another origin"},
		{"file:/etc/passwd", "", "not a relative name"},
		{"nbd:localhost:10809", "", "not a relative name"},
		{"", "", "empty"},
		{"a\x1b]0;x\a", "", "control characters"},
	}
	for _, tc := range tests {
		u, err := ResolveReference(base, tc.name)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: %v, want an error saying %q", tc.name, err, tc.err)
		case tc.err == "" && (err != nil || u.String() != tc.want):
			t.Errorf("%q: %v, %v; want %s", tc.name, u, err, tc.want)
		}
	}
}

// TestErrorsKeepSecretsOut: whatever fails (the connection, TLS, a
// timeout, a redirect, a short body, a status, the URL itself, the
// caller's context), no error and no trace names the URL's query or
// password: in a presigned URL the query is the credential.
func TestErrorsKeepSecretsOut(t *testing.T) {
	const secret = "Sig-s3cr3t"
	withSecrets := func(base, path string) string {
		u, err := url.Parse(base)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword("user", "pw-"+secret)
		return u.String() + path + "?X-Amz-Signature=" + secret + "&X-Amz-Credential=" + secret
	}
	refused := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // nothing listens there now
		return withSecrets("http://"+addr, "/d.qcow2")
	}
	served := func(t *testing.T, h http.Handler, tls bool) string {
		srv := httptest.NewUnstartedServer(h)
		if tls {
			srv.StartTLS()
		} else {
			srv.Start()
		}
		t.Cleanup(srv.Close)
		return withSecrets(srv.URL, "/d.qcow2")
	}
	// held holds the answers for ranges from at on until the test ends.
	held := func(t *testing.T, at int64) string {
		o, _ := serve(t, 1<<20)
		o.hold, o.holdAt = make(chan struct{}), at
		u := served(t, o, false)
		t.Cleanup(func() { close(o.hold) }) // before the server closes
		return u
	}
	status := func(code int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", code) })
	}
	tests := []struct {
		name string
		url  func(t *testing.T) string
		want string // in the error
		// Only where the limit is the test: TLS under s390x's emulation
		// takes seconds.
		timeout time.Duration
	}{
		{"connection refused", refused, "connection refused", 0},
		{"unknown certificate authority", func(t *testing.T) string { return served(t, status(200), true) }, "certificate", 0},
		{"timeout at open", func(t *testing.T) string { return held(t, 0) }, "no complete answer in time", 500 * time.Millisecond},
		{"timeout on a read", func(t *testing.T) string { return held(t, 512<<10) }, "no complete answer in time", 500 * time.Millisecond},
		{"redirect to another origin", func(t *testing.T) string {
			away := withSecrets("http://127.0.0.2:9", "/x")
			return served(t, http.RedirectHandler(away, http.StatusFound), false)
		}, "another origin than the image's", 0},
		{"short bodies", func(t *testing.T) string {
			o, _ := serve(t, 1<<20)
			o.dropAt = 1 << 30
			return served(t, o, false)
		}, "unexpected EOF", 0},
		{"status 403", func(t *testing.T) string { return served(t, status(403), false) }, "403 Forbidden", 0},
		{"status 500", func(t *testing.T) string { return served(t, status(500), false) }, "500 Internal Server Error", 0},
		{"a URL that does not parse", func(t *testing.T) string { return "http://127.0.0.1:1/%zz?sig=" + secret }, "does not parse", 0},
		{"the caller's context ends", func(t *testing.T) string { return held(t, 512<<10) }, "context canceled", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var traced []string
			var mu sync.Mutex
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			timeout := cmp.Or(tc.timeout, 30*time.Second)
			opts := small(Options{Timeout: timeout, Retries: 1, Context: ctx,
				Trace: func(name string, _, _ int64, _ int, _ time.Duration, err error) {
					mu.Lock()
					defer mu.Unlock()
					traced = append(traced, fmt.Sprint(name, err))
				}})
			u := tc.url(t)
			if strings.HasPrefix(tc.name, "the caller's") {
				time.AfterFunc(200*time.Millisecond, cancel)
			}
			f, err := Open(u, opts)
			if err == nil {
				defer f.Close()
				_, err = f.ReadAt(make([]byte, 4096), 600<<10)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, text := range append(traced, err.Error()) {
				if strings.Contains(text, secret) {
					t.Errorf("the secret is in %q", text)
				}
			}
		})
	}
}

// TestContextStopsStalledReads: once Options.Context ends, a read that
// waits on a server that never answers fails at once with its cause,
// and Close does not wait for the stalled fetch either.
func TestContextStopsStalledReads(t *testing.T) {
	o, srv := serve(t, 1<<20)
	o.hold, o.holdAt = make(chan struct{}), 512<<10
	t.Cleanup(func() { close(o.hold) })
	ctx, cancel := context.WithCancel(context.Background())
	f, err := Open(srv.URL, small(Options{Context: ctx, Timeout: time.Minute}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.ReadAt(make([]byte, 4096), 600<<10)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("read after the context ended: %v", err)
	}
	f.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("the read and Close took %v after the context ended", took)
	}
	if _, err := f.ReadAt(make([]byte, 10), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after: %v", err)
	}
}
