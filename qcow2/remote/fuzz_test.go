package remote

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// fuzzObject is the object a fuzzed server holds: byte i is i*7+i>>8.
const fuzzObjectSize = 300 << 10

func fuzzObjectByte(i int64) byte { return byte(i*7 + i>>8) }

// scriptedServer answers each request from the next 4 bytes of a script
// (cycling): the status, how the Content-Range is written, how long the
// body is, and which validators come with it. Its honest answer is a
// 206 with the bytes asked for.
type scriptedServer struct {
	mu     sync.Mutex
	script []byte
	n      int
	hung   bool
}

func (s *scriptedServer) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	var b [4]byte
	for i := range b {
		if len(s.script) > 0 {
			b[i] = s.script[(4*s.n+i)%len(s.script)]
		}
	}
	s.n++
	hang := b[0] == 0xfe && !s.hung
	s.hung = s.hung || hang
	s.mu.Unlock()
	var start, end int64
	fmt.Sscanf(req.Header.Get("Range"), "bytes=%d-%d", &start, &end)
	statuses := []int{206, 206, 206, 206, 200, 503, 429, 412, 404, 416, 302, 500}
	status := statuses[int(b[0])%len(statuses)]
	switch b[0] {
	case 0xff:
		return nil, io.ErrUnexpectedEOF // the connection dropped
	case 0xfe:
		if hang { // once: a fetch it hangs costs the whole Timeout
			<-req.Context().Done() // the server never answers
			return nil, req.Context().Err()
		}
	}
	total := int64(fuzzObjectSize)
	switch b[3] % 8 {
	case 1:
		total++ // the object grew
	case 2:
		end = start + int64(b[3]) // another range than asked
	case 3:
		start += int64(b[1])
	}
	body := make([]byte, 0, max(0, end-start+1))
	for i := start; i <= end && i < total; i++ {
		body = append(body, fuzzObjectByte(i))
	}
	// Wrong bytes of the right length cannot be told from the right
	// ones (HTTP has no checksum): the faults are those a reader can see.
	switch b[2] % 4 {
	case 1:
		body = body[:len(body)/2] // cut short
	case 2:
		body = append(body, "and more"...)
	}
	h := http.Header{}
	switch b[1] % 6 {
	case 0, 1, 2:
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, total))
	case 3:
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/*", start, end))
	case 4:
		h.Set("Content-Range", string(s.script[:min(len(s.script), 24)]))
	}
	etags := []string{`"v1"`, `"v1"`, `"v2"`, `W/"v1"`, ""}
	if e := etags[int(b[3]>>3)%len(etags)]; e != "" {
		h.Set("ETag", e)
	}
	if b[3]&0x80 != 0 {
		h.Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
	}
	if status == 302 {
		h.Set("Location", []string{"/moved.qcow2", "http://elsewhere.example/x", "https://fuzz.example/x", "HTTP://FUZZ.EXAMPLE/y"}[b[2]%4])
	}
	return &http.Response{StatusCode: status, Status: fmt.Sprint(status), Header: h, Body: io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: req}, nil
}

// FuzzRemote reads a file from a server whose answers come from fuzzed
// bytes: statuses, Content-Range headers, bodies and validators. A read
// returns no more than asked, and what it returns is the object's bytes:
// never another range, another version or a short body taken as whole.
func FuzzRemote(f *testing.F) {
	retryDelay = 0
	f.Add([]byte{0, 0, 0, 0})                               // an honest server
	f.Add([]byte{0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 1, 0})       // 503, a short body
	f.Add([]byte{0, 0, 0, 0, 0, 3, 0, 8})                   // no length, a changed object
	f.Add([]byte{4, 0, 0, 0})                               // no byte ranges
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 2, 0xff, 0, 0, 0})    // another range, a dropped connection
	f.Add([]byte{0, 4, 0, 0, 'b', 'y', 't', 'e', 's', ' '}) // a Content-Range of junk
	f.Add([]byte{10, 0, 0, 0, 0, 0, 0, 0})                  // redirected on the origin
	f.Add([]byte{10, 0, 1, 0})                              // redirected elsewhere
	f.Add([]byte("../base.qcow2"))                          // names of backing files
	f.Add([]byte("https://fuzz.example:8443/base.qcow2"))
	f.Add([]byte("http://169.254.169.254/latest"))
	f.Add([]byte("/etc/passwd"))
	f.Add([]byte("base\n.qcow2"))
	f.Add([]byte("nbd://fuzz.example/x"))
	f.Add([]byte{0xfe, 0, 0, 0})             // a server that never answers
	f.Add([]byte{5, 0, 0, 0, 0xfe, 0, 0, 0}) // a 503, then no answer
	f.Fuzz(func(t *testing.T, script []byte) {
		u, _ := url.Parse("http://user:secret@fuzz.example/disk.qcow2?signature=secret")
		// The script is also a name an image on the server could give
		// its backing file.
		if ref, err := ResolveReference(u, string(script)); err == nil && !sameOrigin(ref, u) {
			t.Fatalf("%q resolves to %s, off the image's origin", script, ref)
		}
		opts := Options{BlockSize: 16 << 10, CacheSize: 64 << 10, Timeout: 50 * time.Millisecond,
			Header: http.Header{"Authorization": {"Bearer token"}}}.withDefaults()
		client, err := newClient(u, opts) // its redirect policy, over the scripted transport
		if err != nil {
			t.Fatal(err)
		}
		client.Transport = &scriptedServer{script: script}
		file, err := open(u, opts, client, newShared(opts))
		if err != nil {
			return
		}
		defer file.Close()
		if strings.Contains(file.Name(), "secret") || file.URL() != u {
			t.Fatalf("name %q, URL %s", file.Name(), file.URL())
		}
		file.ModTime()
		buf := make([]byte, 40<<10)
		for _, off := range []int64{0, 100 << 10, file.Size() - 1000, 5000, -1, file.Size()} {
			n, err := file.ReadAt(buf, off)
			if n > len(buf) || n < 0 {
				t.Fatalf("ReadAt(%d) = %d bytes of %d", off, n, len(buf))
			}
			if err == nil && int64(n) != min(int64(len(buf)), file.Size()-off) {
				t.Fatalf("ReadAt(%d) = %d bytes and no error", off, n)
			}
			for i := range n {
				if buf[i] != fuzzObjectByte(off+int64(i)) {
					t.Fatalf("ReadAt(%d): byte %d is %#x, the object's is %#x (%v)", off, i, buf[i], fuzzObjectByte(off+int64(i)), err)
				}
			}
			if err != nil && strings.Contains(err.Error(), "panic") {
				t.Fatal(err)
			}
		}
		if got, _ := file.Fetched(); got < 0 || file.MemoryBudget() < opts.CacheSize {
			t.Fatalf("fetched %d bytes, memory budget %d", got, file.MemoryBudget())
		}
	})
}
