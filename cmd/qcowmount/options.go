package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/encryption"
	"github.com/qcowmount/qcowmount/qcow2/remote"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Each command's flags fill an options struct (their Destination), and the
// command is a function of it, of its arguments and of the streams it
// writes (runInfo, runExport, runHash, runCheck), which tests call in the
// process. No helper sees the command line's parser.

// imageOptions choose how an image argument and its chain are opened;
// every command that reads an image takes them.
type imageOptions struct {
	snapshot      string
	noBacking     bool
	backingDir    string
	anyPath       bool
	devices       bool
	forceShare    bool
	keyFiles      cli.StringSlice // [IMAGE=]FILE
	passwordStdin bool
	maxKDFTime    time.Duration
	debug         bool
	// Cache budgets, which only a mount's flags set ("": the default).
	l2CacheSize, clusterCacheSize string
	// Remote images.
	caFile, headerFile, remoteCacheSize string
	remoteTimeout                       time.Duration
}

// defaultImageOptions are the options no flag changed.
func defaultImageOptions() imageOptions {
	return imageOptions{maxKDFTime: encryption.DefaultMaxKDFTime, remoteCacheSize: "64M", remoteTimeout: remote.DefaultTimeout}
}

// flags are the image flags, filling o.
func (o *imageOptions) flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "snapshot", Aliases: []string{"s"}, Destination: &o.snapshot, Usage: "read internal snapshot `ID|NAME` instead of the current state"},
		&cli.BoolFlag{Name: "no-backing", Destination: &o.noBacking, Usage: "read the top image alone: unallocated clusters read as zeros"},
		&cli.StringFlag{Name: "backing-dir", Destination: &o.backingDir, Usage: "also allow backing and data files beneath `DIR` (by default only beneath the image's own directory)"},
		&cli.BoolFlag{Name: "allow-any-backing-path", Destination: &o.anyPath, Usage: "trust the image: open backing and data files wherever it says they are"},
		&cli.BoolFlag{Name: "allow-devices", Destination: &o.devices, Usage: "allow backing and data files that are block devices"},
		&cli.BoolFlag{Name: "force-share", Aliases: []string{"U"}, Destination: &o.forceShare, Usage: "open images that another process (a running VM) may be writing; reads may be inconsistent"},
		&cli.StringSliceFlag{Name: "key-file", Destination: &o.keyFiles, Usage: "read the passphrase of encrypted images from `[IMAGE=]FILE` (its exact bytes); IMAGE= for one image of a chain, by its path or backing file name"},
		&cli.BoolFlag{Name: "password-stdin", Destination: &o.passwordStdin, Usage: "read the passphrase of encrypted images from standard input (one line)"},
		&cli.BoolFlag{Name: "debug", Destination: &o.debug, Usage: "log debug messages (a remote image's range requests among them): a mount to its log, the other commands to standard error"},
		&cli.DurationFlag{Name: "max-kdf-time", Value: o.maxKDFTime, Destination: &o.maxKDFTime, Usage: "bound trying a passphrase on all LUKS key slots together to `DURATION` here; slots that do not fit are not tried (hostile images ask for hours)"},
		&cli.StringFlag{Name: "ca-file", Destination: &o.caFile, Usage: "for https:// images, also trust the certificates in PEM `FILE` (a private CA)"},
		&cli.StringFlag{Name: "header-file", Destination: &o.headerFile, Usage: "send the HTTP headers in `FILE` (Name: value, one a line) with every request for a remote image, e.g. an Authorization token"},
		&cli.StringFlag{Name: "remote-cache-size", Value: o.remoteCacheSize, Destination: &o.remoteCacheSize, Usage: "`SIZE` of a remote image's fetched bytes kept in memory, for its whole chain"},
		&cli.DurationFlag{Name: "remote-timeout", Value: o.remoteTimeout, Destination: &o.remoteTimeout, Usage: "give up a remote read (one fetch, retries included) after `DURATION`: EIO for that read in a mount"},
	}
}

// qcow2Options are the reader's options these flags ask for.
func (o *imageOptions) qcow2Options() (qcow2.Options, error) {
	opts := qcow2.Options{
		Snapshot:     o.snapshot,
		NoBacking:    o.noBacking,
		BackingDir:   o.backingDir,
		AllowAnyPath: o.anyPath,
		AllowDevices: o.devices,
		ForceShare:   o.forceShare,
		MaxKDFTime:   o.maxKDFTime,
	}
	if opts.MaxKDFTime <= 0 {
		return opts, usageError{fmt.Errorf("--max-kdf-time %v: must be positive", opts.MaxKDFTime)}
	}
	var err error
	if opts.L2CacheSize, err = cacheSize("l2-cache-size", o.l2CacheSize); err != nil {
		return opts, err
	}
	opts.ClusterCacheSize, err = cacheSize("cluster-cache-size", o.clusterCacheSize)
	return opts, err
}

// remoteOptions are the remote reader's options these flags ask for; its
// fetches end with ctx, and with log at the debug level each request is
// logged.
func (o *imageOptions) remoteOptions(ctx context.Context, log *zap.Logger) (remote.Options, error) {
	ro := remote.Options{CAFile: o.caFile, Timeout: o.remoteTimeout, Context: ctx}
	if ro.Timeout <= 0 {
		return ro, usageError{fmt.Errorf("--remote-timeout %v: must be positive", ro.Timeout)}
	}
	var err error
	if ro.CacheSize, err = cacheSize("remote-cache-size", o.remoteCacheSize); err != nil {
		return ro, err
	}
	if o.headerFile != "" {
		if ro.Header, err = readHeaderFile(o.headerFile); err != nil {
			return ro, usageError{err}
		}
	}
	if log != nil && log.Core().Enabled(zapcore.DebugLevel) {
		ro.Trace = func(name string, start, end int64, status int, took time.Duration, err error) {
			log.Debug("http range request", zap.String("url", name), zap.Int64("start", start), zap.Int64("end", end),
				zap.Int("status", status), zap.Duration("took", took), zap.Error(err))
		}
	}
	return ro, nil
}

// cacheSize reads a cache budget flag's value: 0 for "" (the default), a
// usage error outside minCacheSize..maxCacheSize.
func cacheSize(flag, value string) (int64, error) {
	if value == "" {
		return 0, nil
	}
	n, err := parseSize(value)
	if err == nil && (n < minCacheSize || n > maxCacheSize) {
		err = fmt.Errorf("%d bytes is outside %s..%s", n, humanSize(minCacheSize), humanSize(maxCacheSize))
	}
	if err != nil {
		return 0, usageError{fmt.Errorf("--%s: %w", flag, err)}
	}
	return n, nil
}

// Cache budgets a user may ask for: below a few KiB nothing is cached,
// and above a TiB it is surely a typo.
const (
	minCacheSize = 4 << 10
	maxCacheSize = 1 << 40
)

// progressOptions say whether a long command shows a progress bar.
type progressOptions struct{ force, never bool }

func (o *progressOptions) flags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "progress", Aliases: []string{"p"}, Destination: &o.force, Usage: "show a progress bar even when standard error is not a terminal"},
		&cli.BoolFlag{Name: "no-progress", Destination: &o.never, Usage: "show no progress bar, even on a terminal"},
	}
}

// partOptions choose what of the guest disk a command reads: the whole
// disk, one partition, or one LVM volume.
type partOptions struct {
	partition    int
	partitionSet bool // --partition given, whatever its number
	volume       string
}

func (o *partOptions) flags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "partition", Destination: &o.partition, Usage: "read partition `N` of the guest disk (as p<N>.raw in a mount)",
			Action: func(*cli.Context, int) error { o.partitionSet = true; return nil }},
		&cli.StringFlag{Name: "volume", Destination: &o.volume, Usage: "read LVM logical volume `VG/LV` (or VG-LV, as its file in a mount, or LV where the name is unique)"},
	}
}

// mountOptions are the flags of a mount (the command without a name).
type mountOptions struct {
	image        imageOptions
	foreground   bool
	options      cli.StringSlice // -o
	noPartitions bool
	fuseDebug    bool
	logFile      string
	cpuProfile   string
	pidfile      string
	overlay      overlayOptions
}

func defaultMountOptions() mountOptions {
	o := mountOptions{image: defaultImageOptions()}
	o.image.l2CacheSize = "32M"
	return o
}

func (o *mountOptions) flags() []cli.Flag {
	return slices.Concat(o.image.flags(), o.overlay.flags(), []cli.Flag{
		&cli.BoolFlag{Name: "foreground", Aliases: []string{"f"}, Destination: &o.foreground, Usage: "stay in the foreground, logging to stderr"},
		&cli.StringSliceFlag{Name: "o", Destination: &o.options, Usage: "mount `OPTIONS`, comma separated: allow_other, default_permissions, uid=N, gid=N; our flags as keys (snapshot=NAME, backing_dir=DIR, force_share, log_file=F, ...); mount(8)'s (nofail, _netdev, noauto, user, ro, ...) are ignored"},
		&cli.BoolFlag{Name: "no-partitions", Destination: &o.noPartitions, Usage: "serve disk.raw alone: no file per partition or LVM volume"},
		&cli.BoolFlag{Name: "fuse-debug", Destination: &o.fuseDebug, Usage: "log every FUSE request"},
		&cli.StringFlag{Name: "log-file", Destination: &o.logFile, Usage: "background process logs to `FILE` (default: syslog)"},
		&cli.StringFlag{Name: "cpu-profile", Destination: &o.cpuProfile, Usage: "write a Go CPU profile of the serving process to `FILE` until unmount"},
		&cli.StringFlag{Name: "l2-cache-size", Value: o.image.l2CacheSize, Destination: &o.image.l2CacheSize, Usage: "`SIZE` of L2 tables cached for the whole chain (bytes, or with K, M, G)"},
		&cli.StringFlag{Name: "cluster-cache-size", Destination: &o.image.clusterCacheSize, Usage: "`SIZE` of decompressed clusters cached, in bytes or with K, M, G (default: 8 of the chain's largest clusters, 4M to 16M)"},
		&cli.StringFlag{Name: "pidfile", Destination: &o.pidfile, Usage: "write the serving process's pid to `FILE` (removed at unmount)"},
	})
}
