package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

// interspersed puts the flags that follow IMAGE and MOUNTPOINT in front
// of them, as urfave/cli v2 wants them: `qcowmount IMAGE MNT -o
// allow_other` is what people type, and what mount.fuse3 runs for
// `mount -t fuse.qcowmount`. Flags before a command's name are the
// command's too (`qcowmount --debug info URL`): a command refuses those
// it does not take rather than ignore them. `--` ends the flags; what
// follows it stays an argument.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	head, rest, flags := args[:1], args[1:], app.Flags
	if i := firstArgument(app.Flags, args[1:]); i >= 0 {
		if cmd := app.Command(args[1+i]); cmd != nil {
			head = []string{args[0], args[1+i]}
			rest = append(append([]string{}, args[1:1+i]...), args[2+i:]...)
			flags = cmd.Flags
		}
	}
	takesValue := valueFlags(flags)
	var named, positional []string
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		switch {
		case a == "--":
			positional = append(positional, rest[i+1:]...)
			i = len(rest)
		case len(a) > 1 && a[0] == '-':
			named = append(named, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && takesValue[name] && i+1 < len(rest) {
				named = append(named, rest[i+1])
				i++
			}
		default:
			positional = append(positional, a)
		}
	}
	out := append(append([]string{}, head...), named...)
	if len(positional) > 0 {
		out = append(append(out, "--"), positional...)
	}
	return out
}

// valueFlags says, by name, which flags take a value.
func valueFlags(flags []cli.Flag) map[string]bool {
	takesValue := map[string]bool{}
	for _, f := range flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	return takesValue
}

// firstArgument is the index in args of the first one that is neither
// one of flags nor a flag's value; -1 if there is none before `--`.
func firstArgument(flags []cli.Flag, args []string) int {
	takesValue := valueFlags(flags)
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return -1
		case len(a) > 1 && a[0] == '-':
			if name := strings.TrimLeft(a, "-"); !strings.Contains(name, "=") && takesValue[name] {
				i++
			}
		default:
			return i
		}
	}
	return -1
}

// ownOptions are our flags given as -o keys, as fstab and mount(8) give
// them: `-o snapshot=NAME,backing_dir=DIR,force_share`.
var ownOptions = map[string]string{
	"snapshot":               "snapshot",
	"backing_dir":            "backing-dir",
	"allow_any_backing_path": "allow-any-backing-path",
	"allow_devices":          "allow-devices",
	"no_backing":             "no-backing",
	"no_partitions":          "no-partitions",
	"force_share":            "force-share",
	"log_file":               "log-file",
	"pidfile":                "pidfile",
	"l2_cache_size":          "l2-cache-size",
	"cluster_cache_size":     "cluster-cache-size",
	"debug":                  "debug",
	"fuse_debug":             "fuse-debug",
	"key_file":               "key-file",
	"max_kdf_time":           "max-kdf-time",
	"ca_file":                "ca-file",
	"header_file":            "header-file",
	"remote_cache_size":      "remote-cache-size",
	"remote_timeout":         "remote-timeout",
	"overlay":                "overlay",
	"temp_overlay":           "temp-overlay",
	"overlay_plaintext":      "overlay-plaintext",
}

// ignoredOptions are meant for mount(8) or its helper, not for the file
// system: accepted and dropped. (A FUSE mount made by fusermount is nodev
// and nosuid anyway, and there is nothing to execute or write.)
var ignoredOptions = map[string]bool{
	"defaults": true, "auto": true, "noauto": true, "nofail": true, "_netdev": true,
	"user": true, "nouser": true, "users": true, "owner": true, "group": true,
	"dev": true, "nodev": true, "suid": true, "nosuid": true, "exec": true, "noexec": true,
	"rw": true, "ro": true, "sync": true, "async": true,
	"atime": true, "noatime": true, "relatime": true, "norelatime": true, "strictatime": true,
}

// splitOptions takes the -o options (comma separated, and repeated):
// ours set the flags they name, mount(8)'s are dropped, and the rest are
// returned for FUSE.
func splitOptions(c *cli.Context) ([]string, error) {
	var fuseOpts []string
	for _, o := range c.StringSlice("o") {
		for _, s := range strings.Split(o, ",") {
			s = strings.TrimSpace(s)
			key, val, hasVal := strings.Cut(s, "=")
			switch {
			case s == "" || ignoredOptions[key] || strings.HasPrefix(key, "x-") || strings.HasPrefix(key, "comment"):
			case ownOptions[key] != "":
				flag := ownOptions[key]
				if !hasVal {
					val = "true"
				}
				if err := c.Set(flag, val); err != nil {
					return nil, usageError{fmt.Errorf("-o %s: %v", s, err)}
				}
			default:
				fuseOpts = append(fuseOpts, s)
			}
		}
	}
	return fuseOpts, nil
}

// parseSize reads a size in bytes with an optional unit: 65536, 64K,
// 64KiB, 32M, 1G (powers of 1024).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	shift := 0
	for _, u := range []struct {
		suffixes []string
		shift    int
	}{{[]string{"KiB", "K", "k"}, 10}, {[]string{"MiB", "M"}, 20}, {[]string{"GiB", "G"}, 30}, {[]string{"TiB", "T"}, 40}} {
		for _, suf := range u.suffixes {
			if strings.HasSuffix(t, suf) {
				t, shift = strings.TrimSuffix(t, suf), u.shift
			}
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n > (1<<62)>>shift {
		return 0, fmt.Errorf("%q is not a size (bytes, or a number with K, M, G or T)", s)
	}
	return n << shift, nil
}
