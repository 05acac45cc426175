package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/overlay"
	"github.com/qcowmount/qcowmount/qcow2/remote"
	"go.uber.org/zap"
)

// Image arguments that are http:// or https:// URLs are read with range
// requests (qcow2/remote); their backing and data files resolve against
// the URL, on its origin only.

func isURL(arg string) bool {
	return strings.HasPrefix(arg, "http://") || strings.HasPrefix(arg, "https://")
}

// openedImage is an image argument opened: the image, and for a remote
// one its top file (which qcow2.New leaves to its caller) and the rest.
type openedImage struct {
	*qcow2.Image
	modTime time.Time
	top     *remote.File
	remotes *remoteFiles
	writes  *overlay.Overlay // a mount's overlay, closed (made durable) first
}

func (o *openedImage) Close() error {
	var werr error
	if o.writes != nil {
		werr = o.writes.Close()
	}
	err := errors.Join(werr, o.Image.Close())
	if o.top != nil {
		o.top.Close()
	}
	return err
}

// cacheBudget is the most the caches hold: the chain's, and the fetched
// blocks of its remote files, which share one budget, in their cache or
// in flight.
func (o *openedImage) cacheBudget() int64 {
	n := o.CacheBudget()
	if o.writes != nil {
		n += qcow2.DefaultL2CacheSize // the overlay's tables
	}
	if o.top != nil {
		n += o.top.MemoryBudget()
	}
	return n
}

// fetched sums what the chain's remote files fetched.
func (o *openedImage) fetched() (bytes, requests int64) {
	if o.remotes == nil {
		return 0, 0
	}
	o.remotes.mu.Lock()
	defer o.remotes.mu.Unlock()
	for _, f := range o.remotes.all {
		b, r := f.Fetched()
		bytes, requests = bytes+b, requests+r
	}
	return bytes, requests
}

// openImage opens an image argument: a local path, or a URL, whose
// fetches end with ctx.
func openImage(ctx context.Context, flags imageOptions, arg string, opts qcow2.Options, log *zap.Logger) (*openedImage, error) {
	if !isURL(arg) {
		img, err := qcow2.Open(arg, opts)
		if err != nil {
			return nil, err
		}
		o := &openedImage{Image: img}
		if st, err := os.Stat(img.Path()); err == nil {
			o.modTime = st.ModTime()
		}
		return o, nil
	}
	ropts, err := flags.remoteOptions(ctx, log)
	if err != nil {
		return nil, err
	}
	top, err := remote.Open(arg, ropts)
	if err != nil {
		return nil, err
	}
	res := newRemoteFiles(top)
	opts.Name, opts.Resolver = top.Name(), res
	img, err := qcow2.New(top, top.Size(), opts)
	if err != nil {
		top.Close()
		return nil, err
	}
	o := &openedImage{Image: img, modTime: top.ModTime(), top: top, remotes: res}
	if o.modTime.IsZero() {
		o.modTime = time.Now()
	}
	return o, nil
}

// readHeaderFile reads "Name: value" lines; blank lines and lines
// starting with # are skipped.
func readHeaderFile(path string) (http.Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--header-file: %w", err)
	}
	defer f.Close()
	h := http.Header{}
	s := bufio.NewScanner(f)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("--header-file %s: line %d is not \"Name: value\"", path, n)
		}
		h.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("--header-file %s: %w", path, err)
	}
	return h, nil
}

// remoteFiles opens the backing and data files a remote image names
// from the file that names them (remote.File.OpenReference: on its
// origin, within the chain's one budget). The chain closes what it
// opened; all keeps every file, top first, for the counts.
type remoteFiles struct {
	mu     sync.Mutex
	byName map[string]*remote.File // by name (the URL without its query)
	all    []*remote.File
}

func newRemoteFiles(top *remote.File) *remoteFiles {
	return &remoteFiles{byName: map[string]*remote.File{top.Name(): top}, all: []*remote.File{top}}
}

func (r *remoteFiles) Resolve(from, name, what string) (qcow2.File, int64, string, error) {
	r.mu.Lock()
	base := r.byName[from]
	r.mu.Unlock()
	if base == nil {
		return nil, 0, "", fmt.Errorf("%s: not a remote file of this chain", from)
	}
	f, err := base.OpenReference(name)
	if err != nil {
		return nil, 0, "", err
	}
	r.mu.Lock()
	r.byName[f.Name()] = f
	r.all = append(r.all, f)
	r.mu.Unlock()
	return f, f.Size(), f.Name(), nil
}
