package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// errNoFUSE is what the mount commands say on a system without FUSE.
var errNoFUSE = errors.New("mounting needs FUSE, which Windows does not have: info, check, export and hash work here; to mount, use Linux, macOS (macFUSE) or FreeBSD")

func mountAction(*mountOptions) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() == 0 {
			return cli.ShowAppHelp(c)
		}
		return errNoFUSE
	}
}

func umountCommand() *cli.Command {
	return &cli.Command{
		Name:      "umount",
		Usage:     "unmount a mounted image (not on Windows: nothing mounts here)",
		ArgsUsage: "MOUNTPOINT",
		Action:    func(*cli.Context) error { return errNoFUSE },
	}
}
