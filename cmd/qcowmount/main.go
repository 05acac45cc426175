// Command qcowmount mounts a qcow2 image with FUSE as a directory holding
// one read-only file, disk.raw: the guest disk, byte for byte what
// `qemu-img convert -O raw` would write.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "qcowmount:", printable(err.Error()))
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:      "qcowmount",
		Usage:     "mount a qcow2 image read-only as MOUNTPOINT/disk.raw",
		UsageText: "qcowmount [options] IMAGE MOUNTPOINT\nqcowmount info [--json] [--backing-chain] IMAGE",
		Version:   version,
		Description: "Mounts IMAGE with FUSE and returns once MOUNTPOINT/disk.raw is readable, leaving a\n" +
			"background process serving it. Unmount with `fusermount -u MOUNTPOINT` or by\n" +
			"sending SIGTERM to that process (it waits until nothing, such as a loop device,\n" +
			"holds the mount).",
		Flags:                mountFlags(),
		Action:               mountAction,
		Commands:             []*cli.Command{infoCommand()},
		HideHelpCommand:      true,
		EnableBashCompletion: false,
		ExitErrHandler:       func(*cli.Context, error) {}, // main prints errors once
	}
}
