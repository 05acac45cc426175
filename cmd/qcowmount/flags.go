package main

import (
	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/urfave/cli/v2"
)

// imageFlags choose how an image and its chain are opened; mount and info
// share them.
func imageFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "snapshot", Aliases: []string{"s"}, Usage: "read internal snapshot `ID|NAME` instead of the current state"},
		&cli.BoolFlag{Name: "no-backing", Usage: "read the top image alone: unallocated clusters read as zeros"},
		&cli.StringFlag{Name: "backing-dir", Usage: "also allow backing and data files beneath `DIR` (by default only beneath the image's own directory)"},
		&cli.BoolFlag{Name: "allow-any-backing-path", Usage: "trust the image: open backing and data files wherever it says they are"},
		&cli.BoolFlag{Name: "allow-devices", Usage: "allow backing and data files that are block devices"},
		&cli.BoolFlag{Name: "force-share", Aliases: []string{"U"}, Usage: "open images that another process (a running VM) may be writing; reads may be inconsistent"},
	}
}

func imageOptions(c *cli.Context) qcow2.Options {
	return qcow2.Options{
		Snapshot:         c.String("snapshot"),
		NoBacking:        c.Bool("no-backing"),
		BackingDir:       c.String("backing-dir"),
		AllowAnyPath:     c.Bool("allow-any-backing-path"),
		AllowDevices:     c.Bool("allow-devices"),
		ForceShare:       c.Bool("force-share"),
		L2CacheSize:      c.Int64("l2-cache-size"),
		ClusterCacheSize: c.Int64("cluster-cache-size"),
	}
}

func mountFlags() []cli.Flag {
	return append(imageFlags(),
		&cli.BoolFlag{Name: "foreground", Aliases: []string{"f"}, Usage: "stay in the foreground, logging to stderr"},
		&cli.StringSliceFlag{Name: "o", Usage: "FUSE mount `OPTIONS`, comma separated: allow_other, default_permissions, uid=N, gid=N, ..."},
		&cli.BoolFlag{Name: "no-partitions", Usage: "serve disk.raw alone: no file per partition or LVM volume"},
		&cli.BoolFlag{Name: "debug", Usage: "log debug messages"},
		&cli.BoolFlag{Name: "fuse-debug", Usage: "log every FUSE request"},
		&cli.StringFlag{Name: "log-file", Usage: "background process logs to `FILE` (default: syslog)"},
		&cli.StringFlag{Name: "cpu-profile", Usage: "write a Go CPU profile of the serving process to `FILE` until unmount"},
		&cli.Int64Flag{Name: "l2-cache-size", Value: qcow2.DefaultL2CacheSize, Usage: "`BYTES` of L2 tables cached for the whole chain"},
		&cli.Int64Flag{Name: "cluster-cache-size", Value: qcow2.DefaultClusterCacheSize, Usage: "`BYTES` of decompressed clusters cached"},
	)
}
