//go:build !windows

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

func umountCommand() *cli.Command {
	return &cli.Command{
		Name:      "umount",
		Aliases:   []string{"unmount"},
		Usage:     "unmount; when busy, say what holds the mount and how to release it",
		ArgsUsage: "MOUNTPOINT",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "wait", Usage: "keep waiting until the mount is free, then unmount"},
		},
		Action: umountAction,
	}
}

func umountAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError{fmt.Errorf("umount takes one MOUNTPOINT, got %d arguments", c.NArg())}
	}
	mnt, err := filepath.Abs(c.Args().First())
	if err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(mnt); err == nil {
		mnt = real
	}
	mounted, err := isMountpoint(mnt)
	if err != nil {
		return err
	}
	if !mounted {
		return fmt.Errorf("%s is not a mount point", shellQuote(mnt))
	}
	told := false
	for {
		out, err := unmountCommand(mnt).CombinedOutput()
		if err == nil {
			return nil
		}
		reason := strings.TrimSpace(string(out))
		if !strings.Contains(reason, "busy") {
			return fmt.Errorf("unmounting %s: %s", shellQuote(mnt), reason)
		}
		hold := "release it first:\n    " + strings.Join(holders(mnt), "\n    ")
		if !c.Bool("wait") {
			return exitError{exitBusy, fmt.Errorf("%s is busy; %s\n(or run qcowmount umount --wait %s to unmount once it is free)", shellQuote(mnt), hold, shellQuote(mnt))}
		}
		if !told {
			fmt.Fprintf(os.Stderr, "qcowmount: %s is busy; waiting. To %s\n", shellQuote(mnt), hold)
			told = true
		}
		time.Sleep(time.Second)
	}
}
