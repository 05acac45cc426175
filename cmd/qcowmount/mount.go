//go:build !windows

package main

import (
	"bufio"
	"context"
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

// mountAction mounts the image the arguments name, as o says: in the
// background (startDaemon), or in this process with -f, or, in the
// background process, serving.
func mountAction(o *mountOptions) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() != 2 {
			if c.NArg() == 0 {
				cli.ShowAppHelp(c)
			}
			return usageError{fmt.Errorf("need IMAGE and MOUNTPOINT, got %d arguments (see qcowmount --help)", c.NArg())}
		}
		// -o options first: they set flags (key_file, ...) that both the
		// starting command and the server use.
		fuseOpts, err := splitOptions(c)
		opts, args := *o, c.Args().Slice()
		if ready := readyPipe(); ready != nil {
			answers := keyAnswers()
			if err == nil && answers == nil {
				err = errors.New("started without the passphrase pipe")
			}
			if err != nil {
				return reportReady(ready, err)
			}
			defer answers.Close()
			return serve(opts, args, ready, fuseOpts, &remoteKeys{ready: ready, answers: bufio.NewReader(answers)})
		}
		if err != nil {
			return err
		}
		keys, err := newLocalKeys(opts.image, true)
		if err != nil {
			return err
		}
		if opts.foreground {
			return serve(opts, args, nil, fuseOpts, keys)
		}
		// Flags first, MOUNTPOINT last: ps shows the server by its mountpoint.
		return startDaemon(interspersed(c.App, os.Args)[1:], keys)
	}
}

// passphraser answers the reader's passphrase requests: from the user's
// files and terminal (localKeys), or by asking the starting command
// (remoteKeys).
type passphraser interface {
	passphrase(qcow2.KeyRequest) ([]byte, error)
}

// serve opens the image, mounts it and serves until unmounted. ready, when
// not nil, is the pipe to the command that started this background process:
// it gets "ok" once the mount is usable, or the error that stopped it.
func serve(o mountOptions, args []string, ready *os.File, fuseOpts []string, keys passphraser) (err error) {
	image := args[0]
	mountpoint, err := filepath.Abs(args[1])
	if err != nil {
		return reportReady(ready, err)
	}
	// Signals are caught from the start. Until the mount is ready, one
	// ends the opening (a remote image's fetches stop) and nothing stays
	// mounted; so does the starting command going away (timeout, Ctrl-C,
	// kill), which would never learn of the mount. After that, a signal
	// unmounts.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	opening, abandon := context.WithCancelCause(context.Background())
	defer abandon(nil)
	stopWatching, err := watchOpening(sigs, ready, abandon)
	if err != nil {
		return reportReady(ready, err)
	}
	// Until the mount: the watch ends before the pipe it polls is closed.
	fail := func(err error) error {
		stopWatching()
		return reportReady(ready, err)
	}
	log, err := newMountLog(o, ready != nil, mountpoint)
	if err != nil {
		return fail(err)
	}
	clean := false
	defer func() { log.close(clean) }()

	if path := o.cpuProfile; path != "" {
		stop, err := startCPUProfile(path)
		if err != nil {
			return fail(err)
		}
		defer stop()
	}
	pidfile := o.pidfile
	if pidfile != "" {
		if pidfile, err = filepath.Abs(pidfile); err == nil {
			err = writePidfile(pidfile)
		}
		if err != nil {
			return fail(fmt.Errorf("--pidfile: %w", err))
		}
		defer os.Remove(pidfile)
	}
	server, img, err := mount(opening, o, image, mountpoint, fuseOpts, keys, log.Logger)
	stopWatching()
	if cause := context.Cause(opening); cause != nil {
		// Whatever mount did, it was told to stop.
		mounted := err == nil
		if mounted {
			server.Unmount()
			img.Close()
		}
		log.Warn("not mounted", zap.String("mountpoint", mountpoint), zap.Error(cause))
		if mounted && ready == nil && errors.Is(cause, errInterrupted) {
			return nil // in the foreground, as a signal after the mount
		}
		err = cause
		if errors.Is(cause, errInterrupted) {
			err = exitError{exitInterrupted, cause}
		}
	}
	if err != nil {
		return reportReady(ready, err)
	}
	defer func() {
		// An overlay's last writes become durable here: say if they did not.
		if cerr := img.Close(); cerr != nil {
			log.Error("closing the image", zap.Error(cerr))
			if err == nil {
				err = quietExit(exitFailure)
			}
		}
	}()
	// Every path is absolute by now: let go of the caller's directory.
	if err := os.Chdir("/"); err != nil {
		log.Warn("cannot move to /", zap.Error(err))
	}
	log.Info("mounted", zap.String("image", img.Path()), zap.String("mountpoint", mountpoint),
		zap.Int64("size", img.Size()), zap.Int("pid", os.Getpid()))
	// The user sees the image's warnings, not only the log.
	notes := []string{log.note}
	if img.writes != nil {
		notes = append(notes, "writes go to "+img.writes.Path())
	}
	for _, w := range img.Warnings() {
		notes = append(notes, "warning: "+printable(w))
	}
	if err := reportReady(ready, nil, notes...); err != nil {
		// It went away between the watch and now: it never learnt of
		// the mount, and nobody would unmount it.
		log.Warn("the starting command is gone: unmounting", zap.String("mountpoint", mountpoint), zap.Error(err))
		server.Unmount()
		return quietExit(exitFailure)
	}
	go unmountOnSignal(sigs, server, mountpoint, log.Logger)
	server.Wait()
	log.Info("unmounted", zap.String("mountpoint", mountpoint))
	clean = true
	return nil
}

// errInterrupted ends an opening that a signal stopped.
var errInterrupted = errors.New("interrupted before the mount was ready")

// watchOpening ends opening, with its cause, at SIGINT or SIGTERM, or
// once the command that started this process (at the other end of ready)
// is gone. stop ends the watch; a signal that comes after is left in sigs.
func watchOpening(sigs chan os.Signal, ready *os.File, abandon context.CancelCauseFunc) (stop func(), err error) {
	done := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case sig := <-sigs:
			abandon(fmt.Errorf("%w (%v)", errInterrupted, sig))
		case <-done:
		}
	}()
	stopStarter := func() {}
	if ready != nil {
		if stopStarter, err = watchStarter(ready, func() { abandon(errStarterGone) }); err != nil {
			close(done)
			<-watched
			return nil, err
		}
	}
	return func() {
		stopStarter()
		close(done)
		<-watched
	}, nil
}

// mount checks the mountpoint, opens the image and mounts it.
func mount(ctx context.Context, o mountOptions, image, mountpoint string, fuseOpts []string, keys passphraser, log *zap.Logger) (*fuse.Server, *openedImage, error) {
	if err := checkMountpoint(mountpoint); err != nil {
		return nil, nil, mountError{err}
	}
	if err := checkFUSEDevice(); err != nil {
		return nil, nil, mountError{err}
	}
	opts, err := o.image.qcow2Options()
	if err != nil {
		return nil, nil, err
	}
	opts.Passphrase = keys.passphrase
	img, err := openImage(ctx, o.image, image, opts, log)
	if err != nil {
		if lk, ok := keys.(*localKeys); ok {
			err = lk.explain(err)
		} else {
			err = keyError(err) // the starting command adds what only it knows
		}
		return nil, nil, imageError{err}
	}
	if img.writes, err = openOverlay(o.overlay, o.image, image, img, log); err != nil {
		img.Close()
		return nil, nil, err
	}
	// The caches are most of our memory: keep the heap near them instead
	// of letting the garbage collector double it.
	debug.SetMemoryLimit(img.cacheBudget() + memoryHeadroom + readersHeadroom*img.LargestCluster())
	for _, w := range img.Warnings() {
		log.Warn(w, zap.String("image", img.Path()))
	}
	var disk fusefs.Disk = img.Image
	if img.writes != nil {
		disk = img.writes
	}
	files := diskFiles(disk, !o.noPartitions, log)
	if err := context.Cause(ctx); err != nil {
		img.Close()
		return nil, nil, err
	}
	server, err := fusefs.Mount(mountpoint, files, fusefs.Options{
		Source:       img.Path(),
		ModTime:      img.modTime,
		MountOptions: fuseOpts,
		Log:          log,
		Debug:        o.fuseDebug,
		Writable:     img.writes != nil,
	})
	if err != nil {
		img.Close()
		return nil, nil, mountError{fmt.Errorf("mounting on %s: %w", shellQuote(mountpoint), err)}
	}
	return server, img, nil
}

// diskFiles lists the mount's files: disk.raw and, with partitions, one
// per partition and per linear LVM volume found in the guest as it is at
// mount time. What cannot be read there (a damaged table, a striped
// volume) is logged and left out; disk.raw is always served.
func diskFiles(img fusefs.Disk, partitions bool, log *zap.Logger) []fusefs.File {
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
	f, err := openOwnFile(path, false, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// checkMountpoint fails, naming the fix, unless mountpoint is a directory
// that nothing is mounted on.
func checkMountpoint(mountpoint string) error {
	st, err := os.Stat(mountpoint)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("mountpoint %s does not exist: create it with mkdir -p %s", shellQuote(mountpoint), shellQuote(mountpoint))
	case err != nil:
		return fmt.Errorf("mountpoint: %w", err)
	case !st.IsDir():
		return fmt.Errorf("mountpoint %s is a %s, not a directory", shellQuote(mountpoint), fileKind(st.Mode()))
	}
	real := mountpoint
	if r, err := filepath.EvalSymlinks(mountpoint); err == nil {
		real = r
	}
	mounted, err := isMountpoint(real)
	if err != nil {
		return err
	}
	if mounted {
		return fmt.Errorf("%s is already a mount point: unmount it first (qcowmount umount %s)", shellQuote(mountpoint), shellQuote(mountpoint))
	}
	return nil
}

// explainFailure adds fusermount's own reason, which it prints on stderr,
// to a failed mount's message, with what to do about it.
func explainFailure(msg, stderr string) error {
	var reasons []string
	for _, line := range strings.Split(stderr, "\n") {
		// "/usr/bin/fusermount3: failed to open /dev/fuse: ..."
		prog, reason, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if ok && strings.HasPrefix(filepath.Base(prog), "fusermount") {
			reasons = append(reasons, filepath.Base(prog)+": "+reason)
		}
	}
	if len(reasons) == 0 {
		return errors.New(strings.TrimSpace(msg))
	}
	reason := strings.Join(reasons, "; ")
	hints := []struct{ match, fix string }{
		{"failed to open /dev/fuse", "make /dev/fuse usable by your user (as root: chmod 0666 /dev/fuse), or mount as root"},
		{"user_allow_other", "add user_allow_other to /etc/fuse.conf, or mount without -o allow_other"},
		{"unknown option", "that -o option is neither qcowmount's, mount(8)'s nor FUSE's (see qcowmount --help)"},
		{"not permitted", "you may only mount on a directory you own or may write to"},
	}
	for _, h := range hints {
		if strings.Contains(reason, h.match) {
			reason += ": " + h.fix
			break
		}
	}
	// go-fuse reports fusermount's wait status ("exited with code 256"),
	// which says nothing: fusermount's reason replaces it.
	if i := strings.Index(msg, "fusermount exited"); i >= 0 {
		msg = msg[:i]
	}
	return errors.New(strings.TrimSpace(msg) + " " + reason)
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
				zap.String("mountpoint", mountpoint), zap.Strings("release_first", holders(mountpoint)), zap.Error(err))
		}
		select {
		case <-sigs:
		case <-time.After(time.Second):
		}
	}
}

// The memory limit is the caches' budget and what reads need beside
// them: memoryHeadroom for the runtime and FUSE's request buffers (up to
// 1 MiB for each request in flight), and readersHeadroom of the chain's
// largest clusters for the reads in flight, each of which may hold one
// compressed, one decompressed and one being decoded (qcow2 keeps as many
// spare). Below what the reads hold, the garbage collector runs without
// pause and reads slow down; above it, go-fuse's pools of request buffers,
// live until a collection, let the heap grow to the limit. The figures
// that chose these are in docs/speed.md (Memory).
const (
	memoryHeadroom  = 24 << 20
	readersHeadroom = 32
)
