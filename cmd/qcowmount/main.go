// Command qcowmount mounts a qcow2 image with FUSE as a directory holding
// the guest disk, disk.raw, byte for byte what `qemu-img convert -O raw`
// would write, and a file per partition and LVM volume inside it.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// version and commit are set at build time with -ldflags "-X
// main.version=... -X main.commit=..." (make build, make dist); a plain go
// build takes the commit from Go's build information where it has one.
var version, commit = "dev", ""

// Exit codes, as the README and the man page list them.
const (
	exitFailure = 1 // anything not below
	exitUsage   = 2 // the command line is wrong
	exitImage   = 3 // the image or its chain cannot be opened
	exitMount   = 4 // the mount cannot be made (mountpoint, FUSE, fusermount)
	exitBusy    = 5 // umount: the mount is busy
	exitKey     = 6 // an encrypted image's passphrase is missing or wrong
)

// usageError, imageError and mountError say which exit code an error
// gets; exitError carries one from the background process.
type (
	usageError struct{ error }
	imageError struct{ error }
	mountError struct{ error }
	exitError  struct {
		code int
		error
	}
)

func (e usageError) Unwrap() error { return e.error }
func (e imageError) Unwrap() error { return e.error }
func (e mountError) Unwrap() error { return e.error }
func (e exitError) Unwrap() error  { return e.error }

// quietExit is the error of a background process whose starting command
// has already been told what went wrong.
type quietExit int

func (q quietExit) Error() string { return fmt.Sprintf("exit %d", int(q)) }

func exitCode(err error) int {
	var (
		u usageError
		i imageError
		m mountError
		x exitError
		q quietExit
	)
	switch {
	case err == nil:
		return 0
	case errors.As(err, &q):
		return int(q)
	case errors.As(err, &x):
		return x.code
	case errors.As(err, &u):
		return exitUsage
	case errors.As(err, &i):
		return exitImage
	case errors.As(err, &m):
		return exitMount
	}
	return exitFailure
}

func main() {
	os.Exit(run(newApp(), os.Args))
}

// run runs the command line args with app, says on its ErrWriter what
// went wrong, if anything, and returns the exit code.
func run(app *cli.App, args []string) int {
	err := app.Run(interspersed(app, args))
	var q quietExit
	if err != nil && !errors.As(err, &q) {
		fmt.Fprintln(app.ErrWriter, "qcowmount:", printable(strings.TrimSpace(withHint(err).Error())))
	}
	return exitCode(err)
}

func newApp() *cli.App {
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Aliases: []string{"V"}, Usage: "print the version"}
	usage := func(c *cli.Context, err error, _ bool) error { return usageError{err} }
	mount := defaultMountOptions()
	app := &cli.App{
		Writer:    os.Stdout,
		ErrWriter: os.Stderr,
		Name:      "qcowmount",
		Usage:     "mount a qcow2 image read-only: the guest disk, its partitions and LVM volumes as files",
		UsageText: "qcowmount [options] IMAGE MOUNTPOINT [options]\n" +
			"qcowmount info [--json] [--backing-chain] IMAGE\n" +
			"qcowmount export [--partition N | --volume VG/LV] IMAGE OUT|-\n" +
			"qcowmount hash [--algo LIST] [--json] IMAGE\n" +
			"qcowmount check [--json] IMAGE\n" +
			"qcowmount umount [--wait] MOUNTPOINT\n" +
			"mount -t fuse.qcowmount IMAGE MOUNTPOINT -o ro[,OPTIONS]",
		Version: version,
		Description: "Mounts IMAGE with FUSE and returns once MOUNTPOINT/disk.raw is readable, leaving a\n" +
			"background process serving it, with p1.raw, p2.raw, ... for the guest's partitions\n" +
			"and VG-LV.raw for its LVM volumes. Unmount with `qcowmount umount MOUNTPOINT`.\n" +
			"Without FUSE, export writes the guest disk (or one partition or volume) as raw,\n" +
			"hash prints its checksums, and check audits the image as qemu-img check does.\n\n" +
			"Exit codes: 0 success, 1 other failures, 2 usage, 3 the image or its chain cannot\n" +
			"be opened, 4 the mount cannot be made, 5 umount: the mount is busy, 6 an encrypted\n" +
			"image's passphrase is missing or opens no key slot, 130 interrupted. check exits as\n" +
			"qemu-img check: 0 clean, 1 could not check, 2 corruptions, 3 leaks only.",
		Flags:          mount.flags(),
		Action:         mountAction(&mount),
		Commands:       []*cli.Command{infoCommand(), exportCommand(), hashCommand(), checkCommand(), umountCommand(), versionCommand(), completionCommand(), manCommand()},
		OnUsageError:   usage,
		ExitErrHandler: func(*cli.Context, error) {}, // main prints errors once
	}
	for _, cmd := range app.Commands {
		if cmd.OnUsageError == nil {
			cmd.OnUsageError = usage
		}
	}
	return app
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version",
		Action: func(c *cli.Context) error {
			fmt.Println(versionLine())
			fmt.Println("Licensed under the Apache License, Version 2.0.")
			return nil
		},
	}
}

// versionLine names the version, the commit it was built from (with
// "+changes" when the tree had uncommitted ones), the Go that built it
// and the platform.
func versionLine() string {
	c := commit
	if info, ok := debug.ReadBuildInfo(); ok && c == "" {
		var modified string
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				c = s.Value[:min(12, len(s.Value))]
			case "vcs.modified":
				modified = s.Value
			}
		}
		if c != "" && modified == "true" {
			c += "+changes"
		}
	}
	if c == "" {
		c = "unknown"
	}
	return fmt.Sprintf("qcowmount version %s (commit %s, %s, %s/%s)", version, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
