package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/qcowmount/qcowmount/fusefs"
	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/guest"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
)

func mountAction(c *cli.Context) error {
	if c.NArg() != 2 {
		if c.NArg() == 0 {
			cli.ShowAppHelp(c)
		}
		return fmt.Errorf("need IMAGE and MOUNTPOINT, got %d arguments (options go before them; see --help)", c.NArg())
	}
	if c.Bool("foreground") {
		return serve(c, nil)
	}
	if ready := readyPipe(); ready != nil {
		return serve(c, ready)
	}
	return startDaemon()
}

// serve opens the image, mounts it and serves until unmounted. ready, when
// not nil, is the pipe to the command that started this background process:
// it gets "ok" once the mount is usable, or the error that stopped it.
func serve(c *cli.Context, ready *os.File) (err error) {
	image, mountpoint := c.Args().Get(0), c.Args().Get(1)
	// Catch signals from the start: one that arrives while mounting still
	// unmounts once the mount is up.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	log, err := newLogger(c, ready != nil)
	if err != nil {
		return reportReady(ready, err)
	}
	defer log.Sync() //nolint:errcheck

	if path := c.String("cpu-profile"); path != "" {
		stop, err := startCPUProfile(path)
		if err != nil {
			return reportReady(ready, err)
		}
		defer stop()
	}
	server, img, err := mount(c, image, mountpoint, log)
	if err != nil {
		return reportReady(ready, err)
	}
	defer img.Close()
	log.Info("mounted", zap.String("image", img.Path()), zap.String("mountpoint", mountpoint),
		zap.Int64("size", img.Size()), zap.Int("pid", os.Getpid()))
	if err := reportReady(ready, nil); err != nil {
		log.Warn("could not tell the starting command that the mount is ready", zap.Error(err))
	}
	go unmountOnSignal(sigs, server, mountpoint, log)
	server.Wait()
	log.Info("unmounted", zap.String("mountpoint", mountpoint))
	return nil
}

// mount checks the mountpoint, opens the image and mounts it.
func mount(c *cli.Context, image, mountpoint string, log *zap.Logger) (*fuse.Server, *qcow2.Image, error) {
	if err := checkMountpoint(mountpoint); err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, nil, fmt.Errorf("/dev/fuse is missing: load the fuse module or install fuse3 (%v)", err)
	}
	img, err := qcow2.Open(image, imageOptions(c))
	if err != nil {
		return nil, nil, err
	}
	// The caches are most of our memory: keep the heap near them instead
	// of letting the garbage collector double it.
	debug.SetMemoryLimit(img.CacheBudget() + memoryHeadroom)
	for _, w := range img.Warnings() {
		log.Warn(w, zap.String("image", img.Path()))
	}
	st, err := os.Stat(img.Path())
	if err != nil {
		img.Close()
		return nil, nil, err
	}
	server, err := fusefs.Mount(mountpoint, diskFiles(img, !c.Bool("no-partitions"), log), fusefs.Options{
		Source:       img.Path(),
		ModTime:      st.ModTime(),
		MountOptions: splitOptions(c.StringSlice("o")),
		Log:          log,
		Debug:        c.Bool("fuse-debug"),
	})
	if err != nil {
		img.Close()
		return nil, nil, fmt.Errorf("mounting on %s: %w", mountpoint, err)
	}
	return server, img, nil
}

// diskFiles lists the mount's files: disk.raw and, with partitions, one
// per partition and per linear LVM volume found in the guest. What cannot
// be read there (a damaged table, a striped volume) is logged and left
// out; disk.raw is always served.
func diskFiles(img *qcow2.Image, partitions bool, log *zap.Logger) []fusefs.File {
	files := []fusefs.File{{Name: fusefs.DiskName, Disk: img}}
	if !partitions {
		return files
	}
	layout, err := guest.Scan(img)
	if err != nil {
		log.Warn("cannot read the guest's partition table; serving disk.raw alone", zap.Error(err))
		return files
	}
	for _, p := range layout.Problems {
		log.Warn(p)
	}
	if layout.Table == "" && len(layout.Volumes) == 0 {
		log.Info("no partition table in the guest disk: disk.raw alone", zap.String("file_system", layout.FS.Type))
	}
	for _, p := range layout.Partitions {
		files = append(files, fusefs.File{Name: p.FileName(), Disk: p.View(img)})
	}
	for _, v := range layout.Volumes {
		if v.Unreadable == "" {
			files = append(files, fusefs.File{Name: v.FileName(), Disk: v.View(img)})
		}
	}
	return files
}

// startCPUProfile profiles the process until the returned function runs.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// splitOptions accepts both -o a,b and -o a -o b.
func splitOptions(opts []string) []string {
	var out []string
	for _, o := range opts {
		for _, s := range strings.Split(o, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func checkMountpoint(mountpoint string) error {
	st, err := os.Stat(mountpoint)
	if err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("mountpoint %s is not a directory", mountpoint)
	}
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	mounted, err := isMountpoint(abs)
	if err != nil {
		return err
	}
	if mounted {
		return fmt.Errorf("%s is already a mount point: unmount it first (fusermount -u %s)", mountpoint, mountpoint)
	}
	return nil
}

// isMountpoint reports whether dir is listed in /proc/self/mountinfo.
func isMountpoint(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == dir {
			return true, nil
		}
	}
	return false, s.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) the kernel
// writes in mountinfo paths.
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountOnSignal unmounts on SIGINT or SIGTERM. While the kernel refuses
// because the mount is busy (a loop device still attached), it says what to
// detach and keeps serving, retrying until the unmount goes through.
func unmountOnSignal(sigs <-chan os.Signal, server *fuse.Server, mountpoint string, log *zap.Logger) {
	<-sigs
	for attempt := 0; ; attempt++ {
		err := server.Unmount()
		if err == nil {
			return
		}
		if attempt == 0 {
			log.Warn("cannot unmount yet: the mount is busy; still serving, will unmount once it is free",
				zap.String("mountpoint", mountpoint), zap.Strings("detach_first", holders(mountpoint)), zap.Error(err))
		}
		select {
		case <-sigs:
		case <-time.After(time.Second):
		}
	}
}

// holders lists the loop devices whose backing file is one of the mount's
// files (disk.raw, a partition, a volume), the usual reason an unmount is
// refused.
func holders(mountpoint string) []string {
	abs, _ := filepath.Abs(mountpoint)
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && filepath.Dir(strings.TrimSpace(string(b))) == abs {
			dev := filepath.Base(filepath.Dir(filepath.Dir(f)))
			out = append(out, "losetup -d /dev/"+dev)
		}
	}
	if len(out) == 0 {
		out = append(out, "whatever holds its files open (see fuser -m "+mountpoint+")")
	}
	return out
}

// memoryHeadroom is what the process needs beside its caches: FUSE request
// buffers, decompression buffers, the runtime.
const memoryHeadroom = 48 << 20

var errNotReady = errors.New("background process exited before the mount was ready")
