package main

import (
	"fmt"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/encryption"
	"github.com/urfave/cli/v2"
)

// imageFlags choose how an image and its chain are opened; mount and info
// share them.
func imageFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "snapshot", Aliases: []string{"s"}, Usage: "read internal snapshot `ID|NAME` instead of the current state"},
		&cli.BoolFlag{Name: "no-backing", Usage: "read the top image alone: unallocated clusters read as zeros"},
		&cli.StringFlag{Name: "backing-dir", Usage: "also allow backing and data files beneath `DIR` (by default only beneath the image's own directory)"},
		&cli.BoolFlag{Name: "allow-any-backing-path", Usage: "trust the image: open backing and data files wherever it says they are"},
		&cli.BoolFlag{Name: "allow-devices", Usage: "allow backing and data files that are block devices"},
		&cli.BoolFlag{Name: "force-share", Aliases: []string{"U"}, Usage: "open images that another process (a running VM) may be writing; reads may be inconsistent"},
		&cli.StringSliceFlag{Name: "key-file", Usage: "read the passphrase of encrypted images from `[IMAGE=]FILE` (its exact bytes); IMAGE= for one image of a chain, by its path or backing file name"},
		&cli.BoolFlag{Name: "password-stdin", Usage: "read the passphrase of encrypted images from standard input (one line)"},
		&cli.BoolFlag{Name: "debug", Usage: "log debug messages (a remote image's range requests among them): a mount to its log, the other commands to standard error"},
		&cli.DurationFlag{Name: "max-kdf-time", Value: encryption.DefaultMaxKDFTime, Usage: "bound trying a passphrase on all LUKS key slots together to `DURATION` here; slots that do not fit are not tried (hostile images ask for hours)"},
	}, remoteFlags()...)
}

func imageOptions(c *cli.Context) (qcow2.Options, error) {
	opts := qcow2.Options{
		Snapshot:     c.String("snapshot"),
		NoBacking:    c.Bool("no-backing"),
		BackingDir:   c.String("backing-dir"),
		AllowAnyPath: c.Bool("allow-any-backing-path"),
		AllowDevices: c.Bool("allow-devices"),
		ForceShare:   c.Bool("force-share"),
		MaxKDFTime:   c.Duration("max-kdf-time"),
	}
	if opts.MaxKDFTime <= 0 {
		return opts, usageError{fmt.Errorf("--max-kdf-time %v: must be positive", opts.MaxKDFTime)}
	}
	var err error
	if opts.L2CacheSize, err = cacheSizeFlag(c, "l2-cache-size"); err != nil {
		return opts, err
	}
	opts.ClusterCacheSize, err = cacheSizeFlag(c, "cluster-cache-size")
	return opts, err
}

// cacheSizeFlag reads a cache budget flag: 0 when it is not set (the
// default), a usage error outside minCacheSize..maxCacheSize.
func cacheSizeFlag(c *cli.Context, name string) (int64, error) {
	if !c.IsSet(name) {
		return 0, nil
	}
	n, err := parseSize(c.String(name))
	if err == nil && (n < minCacheSize || n > maxCacheSize) {
		err = fmt.Errorf("%d bytes is outside %s..%s", n, humanSize(minCacheSize), humanSize(maxCacheSize))
	}
	if err != nil {
		return 0, usageError{fmt.Errorf("--%s: %w", name, err)}
	}
	return n, nil
}

// Cache budgets a user may ask for: below a few KiB nothing is cached,
// and above a TiB it is surely a typo.
const (
	minCacheSize = 4 << 10
	maxCacheSize = 1 << 40
)

func mountFlags() []cli.Flag {
	return append(imageFlags(),
		&cli.BoolFlag{Name: "foreground", Aliases: []string{"f"}, Usage: "stay in the foreground, logging to stderr"},
		&cli.StringSliceFlag{Name: "o", Usage: "mount `OPTIONS`, comma separated: allow_other, default_permissions, uid=N, gid=N; our flags as keys (snapshot=NAME, backing_dir=DIR, force_share, log_file=F, ...); mount(8)'s (nofail, _netdev, noauto, user, ro, ...) are ignored"},
		&cli.BoolFlag{Name: "no-partitions", Usage: "serve disk.raw alone: no file per partition or LVM volume"},
		&cli.BoolFlag{Name: "fuse-debug", Usage: "log every FUSE request"},
		&cli.StringFlag{Name: "log-file", Usage: "background process logs to `FILE` (default: syslog)"},
		&cli.StringFlag{Name: "cpu-profile", Usage: "write a Go CPU profile of the serving process to `FILE` until unmount"},
		&cli.StringFlag{Name: "l2-cache-size", Value: "32M", Usage: "`SIZE` of L2 tables cached for the whole chain (bytes, or with K, M, G)"},
		&cli.StringFlag{Name: "cluster-cache-size", Usage: "`SIZE` of decompressed clusters cached, in bytes or with K, M, G (default: 8 of the chain's largest clusters, 4M to 16M)"},
		&cli.StringFlag{Name: "pidfile", Usage: "write the serving process's pid to `FILE` (removed at unmount)"},
	)
}
