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

// sameServer opens the backing and data files a remote image names, on
// the server it came from: a qcow2.Resolver for remote chains.
type sameServer struct{ opts remote.Options }

func (s sameServer) Resolve(from, name, what string) (qcow2.File, int64, string, error) {
	base, err := url.Parse(from) // from is a name Resolve or Open gave: the URL
	if err != nil {
		return nil, 0, "", err
	}
	u, err := remote.ResolveReference(base, name)
	if err != nil {
		return nil, 0, "", fmt.Errorf("%s %q: %w", what, name, err)
	}
	f, err := remote.Open(u.String(), s.opts)
	if err != nil {
		return nil, 0, "", err
	}
	return f, f.Size(), f.Name(), nil
}

// Open a qcow2 image over HTTP and read it through qcow2.New, with its
// backing file fetched from beside it: only the ranges read are fetched.
func Example_chain() {
	srv := httptest.NewServer(http.FileServer(http.Dir("../../testdata/images/tiny")))
	defer srv.Close()

	opts := remote.Options{}
	top, err := remote.Open(srv.URL+"/v3-top.qcow2", opts)
	if err != nil {
		log.Fatal(err)
	}
	defer top.Close()
	img, err := qcow2.New(top, top.Size(), qcow2.Options{Name: top.Name(), Resolver: sameServer{opts}})
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
