//go:build !windows

package main

import (
	"fmt"
	"io"
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
		if !c.Bool("wait") {
			sayHolders(os.Stderr, mnt, "is busy; release it first:")
			fmt.Fprintf(os.Stderr, "(or run qcowmount umount --wait %s to unmount once it is free)\n", printable(shellQuote(mnt)))
			return quietExit(exitBusy)
		}
		if !told {
			sayHolders(os.Stderr, mnt, "is busy; waiting. To release it:")
			told = true
		}
		time.Sleep(time.Second)
	}
}

// sayHolders writes what holds mnt, a command a line, after a first line
// that names mnt and says what; each line escaped for the terminal.
func sayHolders(w io.Writer, mnt, what string) {
	fmt.Fprintf(w, "qcowmount: %s %s\n", printable(shellQuote(mnt)), what)
	for _, h := range holders(mnt) {
		fmt.Fprintf(w, "    %s\n", printable(h))
	}
}
