package remote_test

import (
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/remote"
)

// sameServer opens the backing and data files a remote image names from
// the file that names them (OpenReference): on its server, and within one
// budget of memory and requests for the whole chain. A qcow2.Resolver.
type sameServer map[string]*remote.File // by Name

func (s sameServer) Resolve(from, name, what string) (qcow2.File, int64, string, error) {
	f, err := s[from].OpenReference(name) // from is a name this gave, or the top's
	if err != nil {
		return nil, 0, "", fmt.Errorf("%s %q: %w", what, name, err)
	}
	s[f.Name()] = f
	return f, f.Size(), f.Name(), nil
}

// Open a qcow2 image over HTTP and read it through qcow2.New, with its
// backing file fetched from beside it: only the ranges read are fetched.
func Example_chain() {
	srv := httptest.NewServer(http.FileServer(http.Dir("../../testdata/images/tiny")))
	defer srv.Close()

	top, err := remote.Open(srv.URL+"/v3-top.qcow2", remote.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer top.Close()
	img, err := qcow2.New(top, top.Size(), qcow2.Options{Name: top.Name(), Resolver: sameServer{top.Name(): top}})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close() // and the backing file the resolver opened

	for _, layer := range img.Chain() {
		info, err := layer.Info()
		if err != nil {
			log.Fatal(err)
		}
		u, _ := url.Parse(info.Filename)
		fmt.Println(u.Path, info.Format, info.VirtualSize)
	}
	b := make([]byte, 4)
	if _, err := img.ReadAt(b, 510); err != nil { // the top's bytes, then the base's
		log.Fatal(err)
	}
	fmt.Printf("% x\n", b)
	// Output:
	// /v3-top.qcow2 qcow2 65536
	// /v3-zlib.qcow2 qcow2 65536
	// 88 88 00 00
}
