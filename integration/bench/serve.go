package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/qcowmount/qcowmount/fusefs"
)

// rawFile is a raw disk file as a fusefs.Disk.
type rawFile struct {
	*os.File
	size int64
}

func (r rawFile) Size() int64 { return r.size }

// HostRange lets fusefs splice every read, as it does for the runs of an
// uncompressed image: the ceiling is the best our FUSE layer can do.
func (r rawFile) HostRange(off int64, n int) (*os.File, int64, bool) {
	return r.File, off, off >= 0 && n > 0 && off+int64(n) <= r.size
}

// serveRawFile serves a raw file with our FUSE layer until unmounted: the
// ceiling, what FUSE allows when there is no image format to read.
func serveRawFile(path, mountpoint string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	server, err := fusefs.Mount(mountpoint, []fusefs.File{{Name: fusefs.DiskName, Disk: rawFile{f, st.Size()}}}, fusefs.Options{Source: path, ModTime: st.ModTime()})
	if err != nil {
		return err
	}
	serveUntilSignalled(server)
	return nil
}

// serveUntilSignalled serves until the mount is unmounted, or a signal
// asks for it.
func serveUntilSignalled(server *fuse.Server) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sigs; server.Unmount() }()
	server.Wait()
}
