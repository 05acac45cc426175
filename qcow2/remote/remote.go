// Package remote reads a file over HTTP(S) as an io.ReaderAt, with range
// requests: only the blocks that are read are fetched, into a bounded
// cache, with readahead that grows while reads are sequential, several
// requests in flight, retries with backoff, and timeouts. It refuses a
// server that ignores byte ranges rather than download a whole image, and
// once the object changes (ETag, Last-Modified, length) every read fails
// instead of mixing two versions. It knows nothing of what the file holds;
// with package qcow2 it reads an image where it lies:
//
//	f, err := remote.Open("https://example.com/disk.qcow2", remote.Options{})
//	if err != nil {
//		return err
//	}
//	defer f.Close()
//	img, err := qcow2.New(f, f.Size(), qcow2.Options{Name: f.Name()})
//
// A remote image's backing file is opened through a qcow2.Resolver; the
// chain Example shows one that stays on the image's server, with
// ResolveReference.
//
// Open fails with the server's answer where it refuses (a status, no
// range support); reads fail with an error that wraps ErrChanged once the
// object changed, ErrTimeout when no answer came in Options.Timeout, the
// cause of Options.Context once it ends (context.Canceled), ErrClosed
// after Close, and otherwise the network's error. No error names the URL
// with its query or password: in a presigned URL the query is the
// credential, so errors name it as Name does.
package remote

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/internal/lru"
)

// retryDelay is the backoff before a second try, doubling for each next.
var retryDelay = 50 * time.Millisecond

// Defaults for Options.
const (
	DefaultBlockSize   = 256 << 10
	DefaultCacheSize   = 64 << 20
	DefaultMaxInFlight = 8
	DefaultRetries     = 4
	DefaultTimeout     = 60 * time.Second
)

const (
	// maxReadahead is the most readahead fetches at once, for all the
	// streams it follows together: 8 requests of maxBlocksPerRequest
	// default blocks, enough to keep a distant server's link busy
	// (docs/speed.md, Remote).
	maxReadahead        = 32 << 20
	maxBlocksPerRequest = 16
)

// Options control fetching. The zero value works.
type Options struct {
	// Header is sent with every request (an Authorization token).
	Header http.Header
	// CAFile adds the certificates in a PEM file to the system's.
	CAFile string
	// BlockSize is the unit of fetching and caching; CacheSize bounds
	// the blocks kept; MaxInFlight the requests at once; Retries how
	// often a request that failed on the network or with 5xx is tried
	// again. 0 means the default.
	BlockSize   int64
	CacheSize   int64
	MaxInFlight int
	Retries     int
	// Timeout bounds one fetch, its retries included: the probe at
	// open, or one run of blocks a read waits for. A server that accepts
	// connections and never answers fails a read after this long. 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Trace, when set, is told of every request: the byte range, the
	// HTTP status (0 for none), how long it took, and its error.
	Trace func(name string, start, end int64, status int, took time.Duration, err error)
	// Context, when set, bounds the file's life: once it ends, fetches
	// under way stop and reads fail with its cause, at once, however
	// the server is doing (an interrupted command).
	Context context.Context
}

// ErrChanged is wrapped by every read once the object on the server is
// no longer the one opened.
var ErrChanged = errors.New("the remote object changed since it was opened")

// ErrOtherOrigin is wrapped by the refusal of a redirect, or of a backing
// or data file name, that leads off the image's origin (scheme, host and
// port): a stranger's image must not make us reach other hosts.
var ErrOtherOrigin = errors.New("another origin than the image's: refused")

// ErrClosed is wrapped by the error of a read of a closed file, and of
// fetches that Close stopped.
var ErrClosed = errors.New("the remote file is closed")

// File is a remote file opened for reading. It is safe for concurrent use.
type File struct {
	url    *url.URL // as given, query (a presigned signature) included
	name   string   // without the query, for messages
	size   int64
	etag   string
	mtime  string
	client *http.Client
	opts   Options
	id     uint32  // its blocks' key in the shared cache
	sh     *shared // what it shares with the files opened from it
	// ctx ends with Options.Context or at Close; every fetch runs in it.
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	inflight map[int64]*fetch // blocks being fetched, by index
	changed  atomic.Pointer[error]
	ahead    sync.WaitGroup

	fetched  atomic.Int64 // bytes received
	requests atomic.Int64
}

// shared is what a file and those opened from it (OpenReference: the
// images of one chain) share, so that a chain fetches within one budget,
// however deep: the cache of blocks, the requests in flight, the spare
// buffers, and readahead's streams.
type shared struct {
	cache *lru.Cache[blockKey, *block] // read with Read only: buffers are reused
	spare sync.Pool                    // block buffers nothing holds any more
	sem   chan struct{}                // a place per request in flight
	ids   atomic.Uint32
	ra    struct {
		sync.Mutex
		streams [maxStreams]stream
		reads   uint64 // ReadAt calls so far: the streams' clock
	}
}

// blockKey names a block in the shared cache: which file, which block.
type blockKey struct {
	file  uint32
	index int64
}

// block is a cached block's bytes, never changed once cached. The cache
// holds one reference and every Pin one more; the buffer is reused only
// when the last goes, so a pinned block outlives its eviction.
type block struct {
	buf  []byte
	refs atomic.Int32
}

// release drops a reference.
func (sh *shared) release(b *block) {
	if b.refs.Add(-1) == 0 {
		sh.spare.Put(&b.buf)
	}
}

func newShared(opts Options) *shared {
	sh := &shared{sem: make(chan struct{}, opts.MaxInFlight)}
	sh.cache = lru.NewRecycling[blockKey](opts.CacheSize, sh.release)
	return sh
}

// maxStreams is how many sequential readers readahead follows at once,
// for all the files of a chain: a mount's readers, each its own stream in
// each image of the chain it reaches, or export's reads in flight.
const maxStreams = 16

// liveReads is how many reads ago a stream last read and still shares
// the readahead budget.
const liveReads = 64

// stream is one sequential reader of one file as readahead follows it.
type stream struct {
	file    *File
	next    int64  // the end of its furthest read
	window  int64  // its last readahead's size, bytes
	reached int64  // where its readahead has fetched up to
	used    uint64 // the read that last continued it
}

// fetch is one request for a run of blocks, first to last; readers of
// those blocks wait on done.
type fetch struct {
	first, last int64
	done        chan struct{}
	err         error
}

// Open checks that the server answers byte ranges for rawURL and returns
// the file. TLS is verified (against the system's CAs and opts.CAFile);
// redirects are followed within the URL's origin only.
func Open(rawURL string, opts Options) (*File, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse's error quotes the whole URL, query included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("the image URL does not parse: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%s: only http:// and https:// URLs are read", redact(u))
	}
	opts = opts.withDefaults()
	client, err := newClient(u, opts)
	if err != nil {
		return nil, err
	}
	return open(u, opts, client, newShared(opts))
}

// OpenReference opens the file that name, a backing or data file name
// that f's image records, refers to (by ResolveReference's rules), with
// f's options, sharing f's cache, requests in flight and readahead: the
// files of one chain, opened one from another, fetch within the budget of
// one. Closing f does not close it.
func (f *File) OpenReference(name string) (*File, error) {
	u, err := ResolveReference(f.url, name)
	if err != nil {
		return nil, err
	}
	client, err := newClient(u, f.opts)
	if err != nil {
		return nil, err
	}
	return open(u, f.opts, client, f.sh)
}

// withDefaults fills in what is 0 with the defaults.
func (o Options) withDefaults() Options {
	if o.BlockSize <= 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.CacheSize <= 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.Retries <= 0 {
		o.Retries = DefaultRetries
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	return o
}

// open is Open with its options complete, its client made and what it
// shares given: the fuzz target hands it a client whose transport answers
// from fuzzed bytes.
func open(u *url.URL, opts Options, client *http.Client, sh *shared) (*File, error) {
	parent := opts.Context
	if parent == nil {
		parent = context.Background()
	}
	f := &File{
		url: u, name: redact(u), client: client, opts: opts,
		id: sh.ids.Add(1), sh: sh,
		inflight: map[int64]*fetch{},
	}
	f.ctx, f.cancel = context.WithCancelCause(parent)
	if err := f.probe(); err != nil {
		f.cancel(ErrClosed)
		return nil, err
	}
	return f, nil
}

// redact is a URL as messages show it: without its query, which for a
// presigned object-store URL is a credential, and without a password.
func redact(u *url.URL) string {
	c := *u
	c.RawQuery, c.ForceQuery, c.Fragment = "", false, ""
	if c.User != nil {
		c.User = url.User(c.User.Username())
	}
	return c.String()
}

// withoutSecrets is err with the URL that Go's HTTP client quotes in its
// errors (`Get "URL": cause`, the URL of a redirect included) as redact
// shows it. Every error of a request passes through it, so that none
// that leaves the package, however wrapped, names a query or password.
func withoutSecrets(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	shown := "the URL"
	if u, perr := url.Parse(ue.URL); perr == nil {
		shown = redact(u)
	}
	clean := &url.Error{Op: ue.Op, URL: shown, Err: ue.Err}
	if ue == err {
		return clean
	}
	// Wrapped further: keep the chain for errors.Is, not the text.
	return fmt.Errorf("%w", clean)
}

func newClient(origin *url.URL, opts Options) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Half the time for one fetch: a server that hangs once is asked
	// again before the fetch's time runs out.
	tr.ResponseHeaderTimeout = opts.Timeout / 2
	tr.MaxIdleConnsPerHost = opts.MaxInFlight
	tr.Proxy = nil // a stranger's image must not be fetched through whatever the environment names
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", opts.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if !sameOrigin(req.URL, origin) {
				return fmt.Errorf("redirected to %s: %w", redact(req.URL), ErrOtherOrigin)
			}
			if len(via) >= 5 {
				return errors.New("more than 5 redirects")
			}
			return nil
		},
	}, nil
}

func sameOrigin(a, b *url.URL) bool {
	return a.Scheme == b.Scheme && strings.EqualFold(a.Host, b.Host)
}

// probe learns the size and version of the object from a one-byte range.
func (f *File) probe() error {
	ctx, cancel := context.WithTimeout(f.ctx, f.opts.Timeout)
	defer cancel()
	resp, err := f.do(ctx, 0, 0)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f.etag, f.mtime = resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	_, _, total, err := contentRange(resp)
	if err != nil {
		return fmt.Errorf("%s: %w", f.name, err)
	}
	f.size = total
	return nil
}

// do sends a range request for bytes [start, end], trying again after a
// network error or a 5xx until ctx ends, and returns a 206 response.
func (f *File) do(ctx context.Context, start, end int64) (*http.Response, error) {
	var lastErr error
	for try := 0; try <= f.opts.Retries; try++ {
		if try > 0 {
			select {
			case <-time.After(retryDelay << try):
			case <-ctx.Done():
				return nil, f.ended(start, end, lastErr)
			}
		}
		begun := time.Now()
		resp, err := f.request(ctx, start, end)
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		if f.opts.Trace != nil {
			f.opts.Trace(f.name, start, end, status, time.Since(begun), err)
		}
		f.requests.Add(1)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, f.ended(start, end, lastErr)
		case err != nil:
			lastErr = fmt.Errorf("%s: bytes %d-%d: %w", f.name, start, end, err)
			// Trying again cannot change a certificate or a redirect.
			var cert *tls.CertificateVerificationError
			if errors.As(err, &cert) || errors.Is(err, ErrOtherOrigin) {
				return nil, lastErr
			}
			continue
		case status == http.StatusPartialContent:
			return resp, nil
		}
		resp.Body.Close()
		switch {
		case status == http.StatusOK:
			return nil, fmt.Errorf("%s: the server ignores byte ranges (it answered a range request with the whole file, status 200): refusing to download it whole", f.name)
		case status == http.StatusPreconditionFailed:
			return nil, f.markChanged("the server says its ETag is no longer " + f.etag)
		case status >= 500 || status == http.StatusTooManyRequests:
			lastErr = fmt.Errorf("%s: bytes %d-%d: %s", f.name, start, end, resp.Status)
			continue
		default:
			return nil, fmt.Errorf("%s: bytes %d-%d: %s", f.name, start, end, resp.Status)
		}
	}
	return nil, fmt.Errorf("%w (gave up after %d tries)", lastErr, f.opts.Retries+1)
}

// ErrTimeout is wrapped by the error of a fetch that did not finish
// within Options.Timeout.
var ErrTimeout = errors.New("no complete answer in time")

// ended is the error of a fetch whose context ended: the file's (the
// caller's Context, or Close), or the fetch's own time limit.
func (f *File) ended(start, end int64, last error) error {
	if cause := context.Cause(f.ctx); cause != nil {
		return fmt.Errorf("%s: bytes %d-%d: %w", f.name, start, end, cause)
	}
	err := fmt.Errorf("%s: bytes %d-%d: %w (the limit for one fetch is %v)", f.name, start, end, ErrTimeout, f.opts.Timeout)
	if last != nil {
		err = fmt.Errorf("%w; last error: %v", err, last)
	}
	return err
}

func (f *File) request(ctx context.Context, start, end int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url.String(), nil)
	if err != nil {
		return nil, withoutSecrets(err)
	}
	for k, vs := range f.opts.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, end))
	// Compression would make the ranges those of the compressed body.
	req.Header.Set("Accept-Encoding", "identity")
	if strings.HasPrefix(f.etag, `"`) {
		req.Header.Set("If-Match", f.etag) // a strong ETag: the server checks
	}
	resp, err := f.client.Do(req)
	return resp, withoutSecrets(err)
}

// contentRange parses a 206 response's Content-Range.
func contentRange(resp *http.Response) (start, end, total int64, err error) {
	cr := resp.Header.Get("Content-Range")
	spec, ok := strings.CutPrefix(cr, "bytes ")
	rng, size, ok2 := strings.Cut(spec, "/")
	first, last, ok3 := strings.Cut(rng, "-")
	if !ok || !ok2 || !ok3 {
		return 0, 0, 0, fmt.Errorf("bad Content-Range %q", cr)
	}
	nums := make([]int64, 3)
	for i, s := range []string{first, last, size} {
		if nums[i], err = strconv.ParseInt(s, 10, 64); err != nil || nums[i] < 0 {
			return 0, 0, 0, fmt.Errorf("bad Content-Range %q (the length must be known)", cr)
		}
	}
	if nums[0] > nums[1] || nums[1] >= nums[2] {
		return 0, 0, 0, fmt.Errorf("bad Content-Range %q", cr)
	}
	return nums[0], nums[1], nums[2], nil
}

// markChanged records that the object changed; every later read fails.
func (f *File) markChanged(why string) error {
	err := fmt.Errorf("%s: %w (%s): unmount and mount it again", f.name, ErrChanged, why)
	f.changed.CompareAndSwap(nil, &err)
	return *f.changed.Load()
}

// Name is the URL without its query, for messages.
func (f *File) Name() string { return f.name }

// URL is the URL as given, query included: keep it out of messages.
func (f *File) URL() *url.URL { return f.url }

// Size is the object's length when opened.
func (f *File) Size() int64 { return f.size }

// ModTime is the server's Last-Modified, or the zero time.
func (f *File) ModTime() time.Time {
	t, _ := http.ParseTime(f.mtime)
	return t
}

// MemoryBudget is the most memory the file and those opened from it hold
// together: their cache, and the blocks of the requests in flight, which
// enter the cache only when full.
func (f *File) MemoryBudget() int64 {
	return f.opts.CacheSize + int64(f.opts.MaxInFlight)*maxBlocksPerRequest*f.opts.BlockSize
}

// Fetched reports the bytes received and the requests sent so far.
func (f *File) Fetched() (bytes, requests int64) { return f.fetched.Load(), f.requests.Load() }

// Close stops the file's fetches under way, readahead included, and
// waits for them; the file reads nothing after.
func (f *File) Close() error {
	f.cancel(ErrClosed)
	f.ahead.Wait()
	f.client.CloseIdleConnections()
	return nil
}

// ReadAt reads from the remote file, fetching the blocks it lacks.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", f.name, off)
	}
	if off >= f.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > f.size-off {
		p, eof = p[:f.size-off], io.EOF
	}
	n := 0
	err := f.blocks(off, len(p), func(part []byte, _ *block) { n += copy(p[n:], part) })
	return n, cmp.Or(err, eof)
}

// Pin lends the bytes of [off, off+n), which must lie inside the file,
// straight from the cache: no copy. The slices stay as they are, even if
// the cache evicts their blocks, until release is called (once); their
// memory is then reused.
func (f *File) Pin(off int64, n int) (bufs [][]byte, release func(), err error) {
	if off < 0 || n < 0 || off+int64(n) > f.size {
		return nil, nil, fmt.Errorf("%s: bytes %d-%d lie outside the file (%d bytes)", f.name, off, off+int64(n)-1, f.size)
	}
	var pinned []*block
	err = f.blocks(off, n, func(part []byte, b *block) {
		b.refs.Add(1)
		pinned = append(pinned, b)
		bufs = append(bufs, part)
	})
	release = func() {
		for _, b := range pinned {
			f.sh.release(b)
		}
		pinned = nil
	}
	if err != nil {
		release()
		return nil, nil, err
	}
	return bufs, release, nil
}

// blocks fetches the blocks of [off, off+n), which lies inside the file,
// and calls each with the part of each block in the range and the block,
// in order, under the cache's lock (an evicted block's buffer is reused
// unless pinned); then readahead follows the read.
func (f *File) blocks(off int64, n int, each func(part []byte, b *block)) error {
	if err := f.load(off, int64(n)); err != nil {
		return err
	}
	bs := f.opts.BlockSize
	for pos, end := off, off+int64(n); pos < end; {
		idx := pos / bs
		ok := f.sh.cache.Read(blockKey{f.id, idx}, func(b *block) {
			part := b.buf[pos-idx*bs : min(end-idx*bs, int64(len(b.buf)))]
			each(part, b)
			pos += int64(len(part))
		})
		if !ok {
			// Evicted between load and here by other readers: fetch it
			// again, alone.
			if err := f.load(pos, 1); err != nil {
				return err
			}
		}
	}
	f.readahead(off, int64(n))
	return nil
}

// load makes sure the blocks of [off, off+n) are in the cache: it fetches
// runs of missing blocks at once, and waits for those others fetch.
func (f *File) load(off, n int64) error {
	if err := f.changed.Load(); err != nil {
		return *err
	}
	if cause := context.Cause(f.ctx); cause != nil {
		return fmt.Errorf("%s: %w", f.name, cause)
	}
	mine, waits := f.claim(off, n)
	var wg sync.WaitGroup
	for _, r := range mine {
		wg.Go(func() { f.fetchRun(r) })
	}
	wg.Wait()
	var errs []error
	for _, r := range mine {
		errs = append(errs, r.err)
	}
	for _, w := range waits {
		<-w.done
		errs = append(errs, w.err)
	}
	return errors.Join(errs...)
}

// claim takes on the blocks of [off, off+n) that are neither cached nor
// being fetched, as runs of at most maxBlocksPerRequest blocks for the
// caller to fetch, and returns the fetches of others it would wait for.
func (f *File) claim(off, n int64) (mine []*fetch, waits []*fetch) {
	bs := f.opts.BlockSize
	first, last := off/bs, (off+n-1)/bs
	f.mu.Lock()
	defer f.mu.Unlock()
	for idx := first; idx <= last; idx++ {
		if _, ok := f.sh.cache.Get(blockKey{f.id, idx}); ok {
			continue
		}
		if w, ok := f.inflight[idx]; ok {
			if !slices.Contains(waits, w) {
				waits = append(waits, w)
			}
			continue
		}
		if k := len(mine) - 1; k >= 0 && mine[k].last == idx-1 && idx-mine[k].first < maxBlocksPerRequest {
			mine[k].last = idx
		} else {
			mine = append(mine, &fetch{first: idx, last: idx, done: make(chan struct{})})
		}
		f.inflight[idx] = mine[len(mine)-1]
	}
	return mine, waits
}

// fetchRun fetches a run of blocks in one request into the cache.
func (f *File) fetchRun(fe *fetch) {
	defer func() {
		f.mu.Lock()
		for idx := fe.first; idx <= fe.last; idx++ {
			delete(f.inflight, idx)
		}
		f.mu.Unlock()
		close(fe.done)
	}()
	bs := f.opts.BlockSize
	start, end := fe.first*bs, min((fe.last+1)*bs, f.size)-1
	select {
	case f.sh.sem <- struct{}{}:
	case <-f.ctx.Done():
		fe.err = f.ended(start, end, nil)
		return
	}
	blocks, err := f.get(start, end)
	<-f.sh.sem
	if err != nil {
		fe.err = err
		return
	}
	for i, buf := range blocks {
		b := &block{buf: buf}
		b.refs.Store(1)
		f.sh.cache.Add(blockKey{f.id, fe.first + int64(i)}, b, int64(len(buf)))
	}
}

// blockBuf returns a buffer of n bytes, at most a block, for a block.
func (f *File) blockBuf(n int64) []byte {
	if b, ok := f.sh.spare.Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, f.opts.BlockSize)
}

// get fetches bytes [start, end], from a block's start, and checks that
// the server sent them, of the object that was opened. It returns them as
// blocks.
func (f *File) get(start, end int64) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(f.ctx, f.opts.Timeout)
	defer cancel()
	for try := 0; ; try++ {
		resp, err := f.do(ctx, start, end)
		if err != nil {
			return nil, err
		}
		buf, err := f.body(resp, start, end)
		resp.Body.Close()
		if err != nil && ctx.Err() != nil {
			return nil, f.ended(start, end, nil)
		}
		// A connection that drops mid-body is tried again, as a failed
		// request is.
		if err != nil && errors.Is(err, io.ErrUnexpectedEOF) && try < f.opts.Retries {
			continue
		}
		return buf, err
	}
}

func (f *File) body(resp *http.Response, start, end int64) ([][]byte, error) {
	s, e, total, err := contentRange(resp)
	// A server may leave the validators out of a 206: compare those sent.
	etag, mtime := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s: %w", f.name, err)
	case total != f.size:
		return nil, f.markChanged(fmt.Sprintf("its length is now %d, not %d", total, f.size))
	case etag != "" && etag != f.etag:
		return nil, f.markChanged(fmt.Sprintf("its ETag is now %s, not %s", etag, f.etag))
	case mtime != "" && mtime != f.mtime:
		return nil, f.markChanged(fmt.Sprintf("it was modified at %s", mtime))
	case s != start || e != end:
		return nil, fmt.Errorf("%s: asked for bytes %d-%d, the server sent %d-%d", f.name, start, end, s, e)
	}
	var blocks [][]byte
	for pos := start; pos <= end; pos += f.opts.BlockSize {
		b := f.blockBuf(min(f.opts.BlockSize, end+1-pos))
		n, err := io.ReadFull(resp.Body, b)
		f.fetched.Add(int64(n))
		if err != nil {
			for _, b := range append(blocks, b) {
				f.sh.spare.Put(&b)
			}
			return nil, fmt.Errorf("%s: bytes %d-%d: %w", f.name, start, end, err)
		}
		blocks = append(blocks, b)
	}
	return blocks, nil
}

// readahead follows sequential readers, as the kernel's does: a read
// that continues a stream (starting near where it has read up to, so
// that reads in flight together may arrive out of order) and comes
// within half a window of where its readahead has reached fetches the
// next window, twice as large, in the background, in runs of up to
// maxBlocksPerRequest blocks. The window grows with what the reader
// consumes, not with how often it reads; the streams that read lately,
// in every file of the chain, share maxReadahead and half the cache. A
// read that continues no stream starts one, in place of the stream read
// least lately. The errors of readahead are the next read's to meet, if
// it needs those bytes.
func (f *File) readahead(off, n int64) {
	end := off + n
	ra := &f.sh.ra
	ra.Lock()
	defer ra.Unlock()
	ra.reads++
	now := ra.reads
	oldest, live := 0, 0
	for i, c := range ra.streams {
		if c.window > 0 && c.used+liveReads >= now {
			live++
		}
		if c.used < ra.streams[oldest].used {
			oldest = i
		}
	}
	st := f.continues(off)
	if st == nil {
		ra.streams[oldest] = stream{file: f, next: end, reached: end, used: now}
		return
	}
	st.used = now
	st.next = max(st.next, end)
	from := max(st.reached, st.next)
	if st.window > 0 && from-st.next >= st.window/2 || from >= f.size || f.ctx.Err() != nil || f.changed.Load() != nil {
		return
	}
	// What is fetched ahead must outlast its wait: half the cache at
	// most, shared by the streams reading.
	limit := max(min(maxReadahead, f.opts.CacheSize/2)/int64(max(live, 1)), f.opts.BlockSize)
	st.window = min(max(2*st.window, f.opts.BlockSize), limit)
	st.reached = from + st.window
	mine, _ := f.claim(from, min(st.window, f.size-from))
	for _, r := range mine {
		f.ahead.Go(func() { f.fetchRun(r) })
	}
}

// continues returns the stream of f that a read from off continues: one
// that has read up to within its window (or a request's worth of blocks)
// of off, on either side; nil if none has. It is called with the
// streams' lock held.
func (f *File) continues(off int64) *stream {
	for i := range f.sh.ra.streams {
		st := &f.sh.ra.streams[i]
		slack := max(st.window, maxBlocksPerRequest*f.opts.BlockSize)
		if st.file == f && off >= st.next-slack && off <= st.next+slack {
			return st
		}
	}
	return nil
}

// ResolveReference returns the URL that name, a backing or data file
// name recorded in the image at base, refers to: relative to base, on
// base's origin (scheme, host and port). An absolute path, another
// origin, or any other protocol is refused: a remote image must never make
// us open local files or reach other hosts (a cloud's metadata address).
func ResolveReference(base *url.URL, name string) (*url.URL, error) {
	switch {
	case name == "":
		return nil, errors.New("empty name")
	case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return nil, fmt.Errorf("name %q has control characters", name)
	case strings.HasPrefix(name, "/"):
		return nil, fmt.Errorf("%q is an absolute path: a remote image may name only files beside it, on %s", name, redact(&url.URL{Scheme: base.Scheme, Host: base.Host}))
	}
	if colon := strings.IndexByte(name, ':'); colon >= 0 && !strings.Contains(name[:colon], "/") {
		u, err := url.Parse(name)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("%q is not a relative name or an http(s) URL", name)
		}
		if !sameOrigin(u, base) {
			return nil, fmt.Errorf("%q lies on %w (%s)", redact(u), ErrOtherOrigin, redact(&url.URL{Scheme: base.Scheme, Host: base.Host}))
		}
		return u, nil
	}
	// The whole name is a path: '?' and '#' in it are not a query.
	return base.ResolveReference(&url.URL{Path: name}), nil
}
