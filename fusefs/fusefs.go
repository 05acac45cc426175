// Package fusefs serves a guest disk over FUSE as a directory holding
// disk.raw and, beside it, a file per partition and volume. Each file is
// a Disk (bytes and a size: a *qcow2.Image, a guest View), read-only
// unless Options.Writable, where each must be a Writer too:
//
//	server, err := fusefs.Mount("/mnt/q", []fusefs.File{{Name: fusefs.DiskName, Disk: img}},
//		fusefs.Options{Source: "disk.qcow2"})
//	if err != nil {
//		return err
//	}
//	server.Wait() // until unmounted
//
// A failed read is EIO for that read and a line in Options.Log; the mount
// stays up.
package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DiskName is the name of the whole disk's file in the mount.
const DiskName = "disk.raw"

// Disk is what a file serves: bytes and a size.
type Disk interface {
	io.ReaderAt
	Size() int64
}

// Writer is a Disk that takes writes: Sync makes those made so far
// durable.
type Writer interface {
	io.WriterAt
	Sync() error
}

// File is one file of the mount.
type File struct {
	Name string
	Disk Disk
}

// Allocator is implemented by disks that know their holes: lseek's
// SEEK_DATA and SEEK_HOLE find them, and st_blocks counts only the data,
// so that cp --sparse, tar -S and du see a sparse file.
type Allocator interface {
	Allocation(off, limit int64) (data bool, n int64, err error)
}

// spliceMin is the smallest read worth splicing or lending: below it,
// the extra system calls of a splice, or the pinning, cost more than the
// copy they save.
const spliceMin = 64 << 10

// HostRanger is implemented by disks that can tell where a range lies in a
// host file, so that Read splices it to the kernel without a copy.
type HostRanger interface {
	HostRange(off int64, n int) (f *os.File, hostOff int64, ok bool)
}

// PinRanger is implemented by disks that can lend a range's bytes from
// their cache (remote images), so that Read hands them to the kernel
// without a copy; release lets them go once the reply is written. No
// bytes and no error means the range cannot be lent.
type PinRanger interface {
	PinRange(off int64, n int) (bufs [][]byte, release func(), err error)
}

// Options describe the mount.
type Options struct {
	// Source names the image; it shows as the file system in df and
	// /proc/mounts.
	Source string
	// ModTime is the modification time disk.raw reports, usually the image
	// file's.
	ModTime time.Time
	// MountOptions are -o options: allow_other, default_permissions,
	// uid=N and gid=N (the owner disk.raw shows), and whatever else the
	// kernel takes.
	MountOptions []string
	// Log gets one line per failed read; nil discards.
	Log *zap.Logger
	// Debug traces every FUSE request to the log.
	Debug bool
	// Writable mounts read-write: every file's Disk is a Writer, fsync
	// and close(2) make the writes durable. Otherwise a write is EROFS.
	Writable bool
}

// Mount serves files at mountpoint. The file system is up when it
// returns; the caller waits on or unmounts the returned server.
func Mount(mountpoint string, files []File, opts Options) (*fuse.Server, error) {
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	owner := fuse.Owner{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
	access := "ro"
	if opts.Writable {
		access = "rw"
		for _, f := range files {
			if _, ok := f.Disk.(Writer); !ok {
				return nil, fmt.Errorf("%s takes no writes", f.Name)
			}
		}
	}
	mo := fuse.MountOptions{
		FsName:        opts.Source,
		Name:          "qcowmount",
		Options:       []string{access},
		MaxWrite:      1 << 20, // 1 MiB read requests, fewer round trips
		MaxReadAhead:  1 << 20,
		MaxBackground: 12, // as libfuse: more bought no speed, and each holds a buffer
		DirectMount:   true,
		// The kernel may send the pieces of one large O_DIRECT read (a
		// loop device with --direct-io=on) at once, not one after the
		// other, where it offers to. O_TRUNC comes with the open rather
		// than as a truncation after it, so that Open can ignore it as a
		// block device does (dd of=disk.raw opens with it).
		ExtraCapabilities: fuse.CAP_ASYNC_DIO | fuse.CAP_ATOMIC_O_TRUNC,
		Debug:             opts.Debug,
	}
	// go-fuse's own messages go to our log, in its format, not to stderr.
	mo.Logger = zap.NewStdLog(log)
	for _, o := range opts.MountOptions {
		switch key, val, _ := strings.Cut(o, "="); key {
		case "allow_other":
			mo.AllowOther = true
		case "uid", "gid":
			id, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return nil, errors.New("mount option " + o + ": not a number")
			}
			if key == "uid" {
				owner.Uid = uint32(id)
			} else {
				owner.Gid = uint32(id)
			}
		case "ro":
			if opts.Writable {
				return nil, errors.New("mount option ro: the mount takes writes (an overlay); leave ro out, or the overlay")
			}
		case "rw":
			if !opts.Writable {
				return nil, errors.New("mount option rw: the disk is read-only (writes need an overlay: --overlay FILE or --temp-overlay)")
			}
		default:
			mo.Options = append(mo.Options, o)
		}
	}
	root := &rootDir{mtime: opts.ModTime, owner: owner}
	for _, f := range files {
		df := &diskFile{name: f.Name, disk: f.Disk, log: log, mtime: opts.ModTime, owner: owner}
		if opts.Writable {
			df.writer = f.Disk.(Writer)
		}
		root.files = append(root.files, df)
	}
	// The tree never changes: let the kernel cache names and attributes.
	forever := time.Hour * 24 * 365
	server, err := fs.Mount(mountpoint, root, &fs.Options{
		MountOptions: mo,
		EntryTimeout: &forever,
		AttrTimeout:  &forever,
		UID:          owner.Uid,
		GID:          owner.Gid,
	})
	if err != nil {
		return nil, err
	}
	if err := raiseReadahead(mountpoint, mo.MaxReadAhead); err != nil {
		log.Debug("kernel readahead left at its default", zap.Error(err))
	}
	return server, nil
}

// rootDir is the mount's root: a directory of disk files, whose list
// never changes.
type rootDir struct {
	fs.Inode
	files []*diskFile
	mtime time.Time
	owner fuse.Owner
}

var (
	_ fs.NodeOnAdder   = (*rootDir)(nil)
	_ fs.NodeGetattrer = (*rootDir)(nil)
	_ fs.NodeStatfser  = (*rootDir)(nil)
)

func (r *rootDir) OnAdd(ctx context.Context) {
	for i, f := range r.files {
		child := r.NewPersistentInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: uint64(i) + 2})
		r.AddChild(f.name, child, false)
	}
}

func (r *rootDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	out.Owner = r.owner
	setTimes(&out.Attr, r.mtime)
	return 0
}

// Statfs describes a full, read-only file system the size of its files.
func (r *rootDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	out.Bsize = bsize
	out.Frsize = bsize
	for _, f := range r.files {
		out.Blocks += uint64((f.disk.Size() + bsize - 1) / bsize)
	}
	out.Files = uint64(len(r.files)) + 1
	out.NameLen = 255
	return 0
}

// diskFile is a file of the mount: disk.raw, a partition, a volume.
type diskFile struct {
	fs.Inode
	name   string
	disk   Disk
	writer Writer // nil: read-only
	log    *zap.Logger
	mtime  time.Time
	owner  fuse.Owner

	blocksOnce sync.Once
	blocks     uint64 // 512-byte blocks of data, for st_blocks
}

var (
	_ fs.NodeGetattrer = (*diskFile)(nil)
	_ fs.NodeOpener    = (*diskFile)(nil)
	_ fs.NodeReader    = (*diskFile)(nil)
	_ fs.NodeLseeker   = (*diskFile)(nil)
	_ fs.NodeWriter    = (*diskFile)(nil)
	_ fs.NodeFsyncer   = (*diskFile)(nil)
	_ fs.NodeFlusher   = (*diskFile)(nil)
	_ fs.NodeSetattrer = (*diskFile)(nil)
)

func (f *diskFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	if f.writer != nil {
		out.Mode |= 0o200
	}
	out.Size = uint64(f.disk.Size())
	out.Blocks = f.dataBlocks()
	out.Blksize = 4096
	out.Nlink = 1
	out.Owner = f.owner
	setTimes(&out.Attr, f.mtime)
	return 0
}

// dataBlocks counts, once, the 512-byte blocks that hold data rather than
// holes; a disk that cannot tell is all data.
func (f *diskFile) dataBlocks() uint64 {
	f.blocksOnce.Do(func() {
		size := f.disk.Size()
		var data int64
		for off := int64(0); ; {
			start, err := f.next(off, true)
			if err == nil && start == size {
				break
			}
			end := start
			if err == nil {
				end, err = f.next(start, false)
			}
			if err == nil && end <= start {
				err = fmt.Errorf("data at %d ends where it starts", start)
			}
			if err != nil {
				// Count the rest as data: st_blocks is advice, and the
				// read that fails there reports the damage.
				f.log.Warn("cannot tell data from holes", zap.String("file", f.name), zap.Int64("offset", off), zap.Error(err))
				data += size - off
				break
			}
			data, off = data+end-start, end
		}
		f.blocks = uint64(data+511) / 512
	})
	return f.blocks
}

// next returns where the first data (wantData) or hole at or after off
// begins, or the size of the disk where there is none. A disk that cannot
// tell is data to its end.
func (f *diskFile) next(off int64, wantData bool) (int64, error) {
	size := f.disk.Size()
	a, ok := f.disk.(Allocator)
	if !ok {
		if wantData {
			return off, nil
		}
		return size, nil
	}
	for off < size {
		isData, n, err := a.Allocation(off, size-off)
		if err != nil {
			return off, err
		}
		if n <= 0 {
			return off, fmt.Errorf("the disk's allocation at %d makes no progress", off)
		}
		if isData == wantData {
			return off, nil
		}
		off += n
	}
	return size, nil
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the disk's allocation: the
// first data (ENXIO where none is left) or the first hole (the end of the
// file counts as one) at or after off.
func (f *diskFile) Lseek(ctx context.Context, fh fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	size := f.disk.Size()
	if off >= uint64(size) {
		return 0, syscall.ENXIO
	}
	wantData := whence == unix.SEEK_DATA
	pos, err := f.next(int64(off), wantData)
	switch {
	case err != nil:
		f.log.Error("lseek failed", zap.String("file", f.name), zap.Int64("offset", pos), zap.Error(err))
		return 0, syscall.EIO
	case wantData && pos >= size:
		return 0, syscall.ENXIO
	}
	return uint64(pos), 0
}

func (f *diskFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.writer == nil && (flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0) {
		return nil, 0, syscall.EROFS
	}
	// O_TRUNC on a disk that takes writes is ignored, as on a block
	// device. Only this mount changes the disk, through the page cache:
	// keep it across opens.
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// Setattr changes nothing: a disk's size is fixed (ftruncate is EINVAL,
// as on a block device, unless to the size it has), and its times and
// mode are the mount's.
func (f *diskFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if f.writer == nil {
		return syscall.EROFS
	}
	if size, ok := in.GetSize(); ok && int64(size) != f.disk.Size() {
		return syscall.EINVAL
	}
	return f.Getattr(ctx, fh, out)
}

// Write writes to the disk; past its end is ENOSPC, as on a block device.
func (f *diskFile) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if f.writer == nil {
		return 0, syscall.EROFS
	}
	if off >= f.disk.Size() && len(data) > 0 {
		return 0, syscall.ENOSPC
	}
	n, err := f.writer.WriteAt(data[:min(int64(len(data)), f.disk.Size()-off)], off)
	if err != nil {
		f.log.Error("write failed", zap.String("file", f.name), zap.Int64("guest_offset", off), zap.Int("length", len(data)), zap.Error(err))
		if n > 0 {
			return uint32(n), 0
		}
		return 0, syscall.EIO
	}
	return uint32(n), 0
}

// Fsync and Flush (each close(2)) make every write so far durable.
func (f *diskFile) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return f.sync()
}

func (f *diskFile) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	return f.sync()
}

func (f *diskFile) sync() syscall.Errno {
	if f.writer == nil {
		return 0
	}
	if err := f.writer.Sync(); err != nil {
		f.log.Error("sync failed", zap.String("file", f.name), zap.Error(err))
		return syscall.EIO
	}
	return 0
}

func (f *diskFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if hr, ok := f.disk.(HostRanger); ok && len(dest) >= spliceMin && len(dest) <= spliceMax {
		n := int(max(0, min(int64(len(dest)), f.disk.Size()-off)))
		if file, hostOff, ok := hr.HostRange(off, n); ok {
			return fuse.ReadResultFd(file.Fd(), hostOff, n), 0
		}
	}
	if pr, ok := f.disk.(PinRanger); ok && len(dest) >= spliceMin {
		n := int(max(0, min(int64(len(dest)), f.disk.Size()-off)))
		bufs, release, err := pr.PinRange(off, n)
		if err != nil {
			return nil, f.readFailed(off, len(dest), err)
		}
		if bufs != nil {
			return &lentResult{bufs: bufs, release: release}, 0
		}
	}
	n, err := f.disk.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, f.readFailed(off, len(dest), err)
	}
	// A vector goes to the kernel with one writev. go-fuse would try to
	// splice plain data first (take a pipe, grow it, write the header into
	// it) before falling back to writev, on every reply.
	return fuse.ReadResultVector([][]byte{dest[:n]}), 0
}

func (f *diskFile) readFailed(off int64, n int, err error) syscall.Errno {
	f.log.Error("read failed", zap.Int64("guest_offset", off), zap.Int("length", n), zap.Error(err))
	return syscall.EIO
}

// lentResult is a reply made of a disk's lent buffers: go-fuse writes
// them with one writev (it asks for Slices) and then calls Done, which
// lets them go.
type lentResult struct {
	bufs    [][]byte
	release func()
	done    atomic.Bool
}

func (r *lentResult) Size() (n int) {
	for _, b := range r.bufs {
		n += len(b)
	}
	return n
}

func (r *lentResult) Slices() ([][]byte, fuse.Status) { return r.bufs, fuse.OK }

func (r *lentResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	buf = buf[:0]
	for _, b := range r.bufs {
		buf = append(buf, b...)
	}
	return buf, fuse.OK
}

func (r *lentResult) Done() {
	if !r.done.Swap(true) {
		r.release()
	}
}

func setTimes(a *fuse.Attr, t time.Time) {
	a.SetTimes(&t, &t, &t)
}
