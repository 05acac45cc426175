package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The commands without FUSE, against what people run instead: export
// against qemu-img convert -O raw (its default, and with 16 coroutines and
// out-of-order writes), hash against qemu-img convert followed by
// sha256sum, with sha256sum of the raw file for reference.

// What a timed command is to the ratio: ours (the one compared), a
// variant of ours, a peer, or a reference that is neither.
type role int

const (
	roleOurs role = iota
	roleVariant
	rolePeer
	roleReference
)

// commandRun is one timed command line.
type commandRun struct {
	name string
	role role
	args func(img benchImage, out string) [][]string // commands run one after the other
}

// qemuImage is how qemu-img names an image, with its passphrase.
func qemuImage(img benchImage) []string {
	if img.keyFile == "" {
		return []string{img.path}
	}
	return []string{"--object", "secret,id=s0,file=" + img.keyFile, "--image-opts", "driver=qcow2,file.filename=" + img.path + ",encrypt.key-secret=s0"}
}

func ourImage(img benchImage) []string {
	if img.keyFile == "" {
		return []string{img.path}
	}
	return []string{"--key-file", img.keyFile, img.path}
}

func exportRuns(binary string) []commandRun {
	return []commandRun{
		{"qcowmount export", roleOurs, func(img benchImage, out string) [][]string {
			return [][]string{append(append([]string{binary, "export", "--no-progress"}, ourImage(img)...), out)}
		}},
		{"qemu-img convert", rolePeer, func(img benchImage, out string) [][]string {
			return [][]string{append(append([]string{"qemu-img", "convert", "-O", "raw"}, qemuImage(img)...), out)}
		}},
		{"qemu-img convert -m 16 -W", rolePeer, func(img benchImage, out string) [][]string {
			return [][]string{append(append([]string{"qemu-img", "convert", "-m", "16", "-W", "-O", "raw"}, qemuImage(img)...), out)}
		}},
	}
}

func hashRuns(binary string) []commandRun {
	return []commandRun{
		{"qcowmount hash (disk)", roleOurs, func(img benchImage, _ string) [][]string {
			return [][]string{append([]string{binary, "hash", "--no-progress", "--no-partitions"}, ourImage(img)...)}
		}},
		{"qcowmount hash (disk and partitions)", roleVariant, func(img benchImage, _ string) [][]string {
			return [][]string{append([]string{binary, "hash", "--no-progress"}, ourImage(img)...)}
		}},
		{"qemu-img convert, then sha256sum", rolePeer, func(img benchImage, out string) [][]string {
			return [][]string{append(append([]string{"qemu-img", "convert", "-O", "raw"}, qemuImage(img)...), out), {"sha256sum", out}}
		}},
		{"sha256sum of the raw disk (no qcow2 at all)", roleReference, func(img benchImage, _ string) [][]string {
			return [][]string{{"sha256sum", img.raw}}
		}},
	}
}

// commandFigures times each command on each image, best of runs, the
// commands taking turns; outputs go to work and are removed after each run.
func commandFigures(images []benchImage, binary, work string, runs int) (string, error) {
	var b strings.Builder
	b.WriteString("#### Without FUSE: export and hash\n\n")
	fmt.Fprintf(&b, "Seconds for the whole disk, best of %d runs taking turns, images in the page cache, output to a file in %s (removed after each run, `sync` before each). "+
		"The ratio is the best peer's time over ours, above 1 when we are faster.\n\n", runs, work)
	out := filepath.Join(work, "command.out")
	for _, group := range [][]commandRun{exportRuns(binary), hashRuns(binary)} {
		b.WriteString("| image |")
		for _, r := range group {
			b.WriteString(" " + r.name + " |")
		}
		b.WriteString(" ratio |\n|---|" + strings.Repeat("---:|", len(group)+1) + "\n")
		for _, img := range images {
			if err := warmImage(img); err != nil {
				return "", err
			}
			best := make([]float64, len(group))
			for run := 1; run <= runs; run++ {
				for i, r := range group {
					fmt.Fprintf(os.Stderr, "%s, run %d of %d: %s ...\n", img.name, run, runs, r.name)
					secs, err := timeCommands(r.args(img, out), out)
					if err != nil {
						return "", err
					}
					if best[i] == 0 || secs < best[i] {
						best[i] = secs
					}
				}
			}
			fmt.Fprintf(&b, "| %s |", img.name)
			ourBest, peerBest := 0.0, 0.0
			for i, r := range group {
				fmt.Fprintf(&b, " %.2f |", best[i])
				switch {
				case r.role == rolePeer && (peerBest == 0 || best[i] < peerBest):
					peerBest = best[i]
				case r.role == roleOurs:
					ourBest = best[i]
				}
			}
			fmt.Fprintf(&b, " %.2fx |\n", peerBest/ourBest)
		}
		b.WriteString("\n")
	}
	return b.String(), nil
}

// errTooLong is timeCommandsWithin's error when the limit ran out.
var errTooLong = errors.New("did not finish in time")

// timeCommands runs the command lines in turn and returns the seconds
// they took together; what they wrote to out is removed afterwards.
func timeCommands(cmds [][]string, out string) (float64, error) {
	return timeCommandsWithin(cmds, out, 0)
}

// timeCommandsWithin is timeCommands that kills the commands and fails
// with errTooLong once they have run for limit, if limit is not 0.
func timeCommandsWithin(cmds [][]string, out string, limit time.Duration) (float64, error) {
	defer os.Remove(out)
	if err := exec.Command("sync").Run(); err != nil {
		return 0, err
	}
	ctx := context.Background()
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	start := time.Now()
	for _, c := range cmds {
		cmd := exec.CommandContext(ctx, c[0], c[1:]...)
		// Stopped, it is stopped with whatever it started, and its
		// output is not waited for.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = time.Second
		if out, err := cmd.CombinedOutput(); err != nil {
			if ctx.Err() != nil {
				err = errTooLong
			}
			return 0, fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	return time.Since(start).Seconds(), nil
}
