package main

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/qcowmount/qcowmount/fusefs"
	"github.com/qcowmount/qcowmount/integration/internal/proc"
)

// zerosSize is the size of the file of zeros the ceiling servers serve:
// large enough that a few seconds of random 4 KiB reads seldom land on a
// page the kernel has cached.
const zerosSize = 64 << 30

//go:embed libfuse/zeros.c
var zerosC []byte

// gofusePatches change go-fuse the ways proposed upstream for what a
// request costs (gofuse-patches/README.md); only the ceiling experiment
// builds with them.
//
//go:embed gofuse-patches/*.patch
var gofusePatches embed.FS

// patchedServers are fusefs's zero server built against go-fuse with
// each set of patches, by name.
var patchedServers = []struct{ name, patches string }{
	{"fusefs, go-fuse patched: one reader blocked", "readers"},
	{"fusefs, go-fuse patched: buffers without a lock", "buffers"},
	{"fusefs, go-fuse patched: both", "readers buffers"},
}

// zeroServers are the FUSE servers of the ceiling experiment, each
// serving one file of zeros with nothing behind it: what a request costs
// in the FUSE library alone, and in our layer on top of go-fuse, as it
// is and with the patches (patched holds the programs built with them).
func zeroServers(self, libfuse string, patched []string) []tool {
	serve := func(args ...string) func(benchImage, string) (*mounted, error) {
		return func(_ benchImage, dir string) (*mounted, error) {
			cmd := exec.Command(args[0], append(args[1:], dir)...)
			return processMount(cmd, filepath.Join(dir, "zeros"), func() error { return sh("fusermount3", "-u", dir) })
		}
	}
	tools := []tool{
		{name: "go-fuse, smallest server", mount: serve(self, "-serve-zeros", "go-fuse")},
		{name: "libfuse 3, smallest server", mount: serve(libfuse, "-f", "-o", "ro")},
		{name: "our FUSE layer (fusefs)", mount: serve(self, "-serve-zeros", "fusefs")},
		{name: "go-fuse raw API, fusefs's options", mount: serve(self, "-serve-zeros", "raw")},
	}
	for i, p := range patchedServers {
		tools = append(tools, tool{name: p.name, mount: serve(patched[i], "-serve-zeros", "fusefs")})
	}
	return tools
}

// buildPatched builds this program in work against a copy of the go-fuse
// that go.mod names, with the patches named applied: a module file beside
// it replaces go-fuse for this build alone. It runs where make runs it,
// in the repository's root.
func buildPatched(work, patches string) (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/hanwen/go-fuse/v2").Output()
	if err != nil {
		return "", fmt.Errorf("go list go-fuse: %v", err)
	}
	dir := filepath.Join(work, "go-fuse-"+strings.ReplaceAll(patches, " ", "+"))
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	// CopyFS makes the files writable, where the module cache's are not.
	if err := os.CopyFS(dir, os.DirFS(strings.TrimSpace(string(out)))); err != nil {
		return "", err
	}
	for _, p := range strings.Fields(patches) {
		patch, err := gofusePatches.ReadFile("gofuse-patches/" + p + ".patch")
		if err != nil {
			return "", err
		}
		apply := exec.Command("git", "apply", "-")
		apply.Dir, apply.Stdin = dir, bytes.NewReader(patch)
		if out, err := apply.CombinedOutput(); err != nil {
			return "", fmt.Errorf("applying %s.patch: %v: %s", p, err, out)
		}
	}
	for _, f := range []string{"mod", "sum"} {
		b, err := os.ReadFile("go." + f)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(dir+"."+f, b, 0o644); err != nil {
			return "", err
		}
	}
	if err := sh("go", "mod", "edit", "-modfile", dir+".mod", "-replace", "github.com/hanwen/go-fuse/v2="+dir); err != nil {
		return "", err
	}
	bin := dir + ".bench"
	return bin, sh("go", "build", "-modfile", dir+".mod", "-o", bin, "./integration/bench")
}

// ceilingFigures runs fio's random 4 KiB reads against each zero server,
// taking turns, and tables the best IOPS of each with the server's CPU time
// and context switches per read (O_DIRECT and a file this size make every
// read one request).
func ceilingFigures(work string, o options, runs int) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	libfuse := filepath.Join(work, "zeros-libfuse")
	src := libfuse + ".c"
	if err := os.WriteFile(src, zerosC, 0o644); err != nil {
		return "", err
	}
	flags, err := exec.Command("pkg-config", "--cflags", "--libs", "fuse3").Output()
	if err != nil {
		return "", fmt.Errorf("pkg-config fuse3 (package libfuse3-dev): %v", err)
	}
	if err := sh("gcc", append([]string{"-O2", "-o", libfuse, src}, strings.Fields(string(flags))...)...); err != nil {
		return "", err
	}
	var patched []string
	for _, p := range patchedServers {
		bin, err := buildPatched(work, p.patches)
		if err != nil {
			return "", fmt.Errorf("go-fuse with %s: %w", p.patches, err)
		}
		patched = append(patched, bin)
	}
	servers := zeroServers(self, libfuse, patched)
	type cell struct {
		iops, cpuUsec, switches float64
		err                     error
	}
	best := map[[2]int]cell{}
	for run := 1; run <= runs; run++ {
		for w, wl := range randomWorkloads {
			for s, srv := range servers {
				fmt.Fprintf(os.Stderr, "ceiling, run %d of %d: %s: %s ...\n", run, runs, wl.name, srv.name)
				c := cell{}
				c.iops, c.cpuUsec, c.switches, c.err = zerosOnce(srv, wl.direct, wl.jobs, o)
				if old, ok := best[[2]int{w, s}]; !ok || old.err != nil || (c.err == nil && c.iops > old.iops) {
					best[[2]int{w, s}] = c
				}
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "#### FUSE ceiling: one file of zeros, nothing behind it\n\n%s, `make bench-ceiling` (%s). "+
		"IOPS of fio's random 4 KiB psync reads for %d s, best of %d runs taking turns, then the server's CPU time (µs) and context switches per read in that run.\n\n| measure |", measuredOn(), invocation(), o.seconds, runs)
	for _, srv := range servers {
		fmt.Fprintf(&b, " %s |", srv.name)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(servers)) + "\n")
	for w, wl := range randomWorkloads {
		fmt.Fprintf(&b, "| %s |", wl.name)
		for s := range servers {
			c := best[[2]int{w, s}]
			if c.err != nil {
				fmt.Fprintf(&b, " failed: %s |", strings.ReplaceAll(c.err.Error(), "|", "/"))
				continue
			}
			fmt.Fprintf(&b, " %.0f (%.1f µs, %.2f) |", c.iops, c.cpuUsec, c.switches)
		}
		b.WriteString("\n")
	}
	return b.String(), nil
}

// zerosOnce mounts a zero server afresh and runs one fio job on it.
func zerosOnce(srv tool, direct bool, jobs int, o options) (iops, cpuUsec, switches float64, err error) {
	dir, err := os.MkdirTemp(o.work, "zeros")
	if err != nil {
		return 0, 0, 0, err
	}
	defer os.RemoveAll(dir)
	m, err := srv.mount(benchImage{}, dir)
	if err != nil {
		return 0, 0, 0, err
	}
	before, err := proc.UsageOf(m.pid)
	var reads int64
	if err == nil {
		iops, reads, err = fioRun(m.file, "randread", direct, jobs, o.seconds)
	}
	after, usageErr := proc.UsageOf(m.pid)
	if err == nil {
		err = usageErr
	}
	if stopErr := m.stop(); err == nil {
		err = stopErr
	}
	if err == nil && reads == 0 {
		err = fmt.Errorf("fio read nothing from %s", m.file)
	}
	if err != nil {
		return 0, 0, 0, err
	}
	return iops, float64((after.CPU - before.CPU).Microseconds()) / float64(reads), float64(after.Switches-before.Switches) / float64(reads), nil
}

// serveZeros serves a file of zeros at mountpoint until unmounted.
func serveZeros(how, mountpoint string) error {
	server, err := mountZeros(how, mountpoint)
	if err != nil {
		return err
	}
	serveUntilSignalled(server)
	return nil
}

// mountZeros mounts the file "zeros" with go-fuse alone ("go-fuse"),
// through our fusefs layer ("fusefs"), or on go-fuse's raw API with
// fusefs's mount options and replies ("raw"): fusefs's node tree against
// no tree at all.
func mountZeros(how, mountpoint string) (*fuse.Server, error) {
	switch how {
	case "go-fuse":
		return fs.Mount(mountpoint, &zeroDir{}, &fs.Options{MountOptions: fuse.MountOptions{Options: []string{"ro"}}})
	case "fusefs":
		return fusefs.Mount(mountpoint, []fusefs.File{{Name: "zeros", Disk: zeroDisk{}}}, fusefs.Options{Source: "zeros"})
	case "raw":
		server, err := fuse.NewServer(&rawZeros{RawFileSystem: fuse.NewDefaultRawFileSystem()}, mountpoint, &fuse.MountOptions{
			Options: []string{"ro"}, MaxWrite: 1 << 20, MaxReadAhead: 1 << 20, MaxBackground: 12, DirectMount: true,
		})
		if err != nil {
			return nil, err
		}
		go server.Serve()
		return server, server.WaitMount()
	}
	return nil, fmt.Errorf("no zero server %q", how)
}

// rawZeros serves the file "zeros" (node 2) in the root (node 1) on
// go-fuse's raw API, answering reads as fusefs does: zeroDisk's bytes
// in the request's buffer, as a vector.
type rawZeros struct{ fuse.RawFileSystem }

const rawZerosNode = 2

func (rawZeros) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if header.NodeId != fuse.FUSE_ROOT_ID || name != "zeros" {
		return fuse.ENOENT
	}
	out.NodeId = rawZerosNode
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = zerosSize
	out.SetEntryTimeout(time.Hour)
	out.SetAttrTimeout(time.Hour)
	return fuse.OK
}

func (rawZeros) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	switch in.NodeId {
	case fuse.FUSE_ROOT_ID:
		out.Mode = syscall.S_IFDIR | 0o555
	case rawZerosNode:
		out.Mode = syscall.S_IFREG | 0o444
		out.Size = zerosSize
	default:
		return fuse.ENOENT
	}
	out.SetTimeout(time.Hour)
	return fuse.OK
}

func (rawZeros) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.NodeId != rawZerosNode {
		return fuse.EACCES
	}
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

func (rawZeros) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	n, _ := zeroDisk{}.ReadAt(buf[:max(0, min(int64(len(buf)), zerosSize-int64(in.Offset)))], int64(in.Offset))
	return fuse.ReadResultVector([][]byte{buf[:n]}), fuse.OK
}

// zeroDisk is a fusefs.Disk of zeros.
type zeroDisk struct{}

func (zeroDisk) Size() int64 { return zerosSize }

func (zeroDisk) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}

// zeroDir is go-fuse's smallest tree: a root holding the file "zeros".
type zeroDir struct{ fs.Inode }

func (d *zeroDir) OnAdd(ctx context.Context) {
	d.AddChild("zeros", d.NewPersistentInode(ctx, &zeroFile{}, fs.StableAttr{}), false)
}

type zeroFile struct{ fs.Inode }

var zeros = make([]byte, 1<<20)

func (*zeroFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = zerosSize
	return 0
}

func (*zeroFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, 0
}

func (*zeroFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n := max(0, min(int64(len(dest)), zerosSize-off))
	return fuse.ReadResultData(zeros[:n]), 0
}
