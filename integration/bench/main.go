// Command bench measures qcowmount against the tools people use today to
// read a qcow2 image's disk, side by side in one run on one machine:
// qemu-storage-daemon's FUSE export, libqcow's qcowmount, and, as the
// ceiling, a raw copy of the same disk served by our own FUSE layer. It
// prints a table per image and writes it as Markdown. `make bench` runs it.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

func main() {
	work := flag.String("work", "/var/tmp/qcowmount-bench", "directory for the guest disk and images, kept between runs")
	image := flag.String("image", "", "measure this qcow2 image instead of the built ones")
	fill := flag.Int64("fill", 1500, "MiB of files copied from /usr into the guest's ext4 partition")
	seconds := flag.Int("seconds", 4, "duration of each random-read run")
	runs := flag.Int("runs", 3, "runs of each measure; the best one counts, since shared machines are noisy")
	out := flag.String("out", "", "also write the results as Markdown to this file")
	ours := flag.String("qcowmount", "bin/qcowmount", "the qcowmount binary to measure")
	only := flag.String("only", "", "measure only the built images whose name contains this (e.g. LUKS), or only the remote measures (remote), or only the write measures (writes), or only export and hash on every image (commands)")
	trace := flag.Bool("trace", false, "instead of timing, record what the kernel sends each FUSE server during each measure, once: request sizes, requests in flight, time per request (needs the fuse tracepoints of Linux 6.13)")
	ceiling := flag.Bool("ceiling", false, "instead, measure what a request costs in each FUSE library: the smallest go-fuse and libfuse servers of a file of zeros, and our fusefs layer (needs gcc and libfuse3-dev)")
	serveZerosWith := flag.String("serve-zeros", "", "internal: serve a file of zeros at the mountpoint given as argument with go-fuse, fusefs or raw (go-fuse's raw API)")
	serveRaw := flag.String("serve-raw", "", "internal: serve this raw file at the mountpoint given as argument")
	flag.Parse()
	if *serveZerosWith != "" {
		if err := serveZeros(*serveZerosWith, flag.Arg(0)); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *ceiling {
		table, err := ceilingFigures(*work, options{seconds: *seconds, work: *work}, *runs)
		if err == nil {
			err = emit(table, *out)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *serveRaw != "" {
		if err := serveRawFile(*serveRaw, flag.Arg(0)); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*work, *image, *only, *fill<<20, *seconds, *runs, *out, *ours, *trace); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(work, image, only string, fill int64, seconds, runs int, out, ours string, trace bool) error {
	ours, err := filepath.Abs(ours)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	var images []benchImage
	if image != "" {
		img, err := customImage(work, image)
		if err != nil {
			return err
		}
		images = []benchImage{img}
	} else if images, err = buildImages(work, fill); err != nil {
		return err
	}
	remoteImage := images[0] // the data-full uncompressed guest: the remote measures use it
	commandsOnly := only == "commands"
	if commandsOnly {
		only = ""
	}
	images = slices.DeleteFunc(images, func(img benchImage) bool { return !strings.Contains(img.name, only) })
	mountImages := images
	if commandsOnly {
		mountImages = nil
	}
	o := options{seconds: seconds, work: work}
	if trace {
		table, err := traceFigures(mountImages, ours, o)
		if err != nil {
			return err
		}
		return emit(table, out)
	}
	ms := metrics()
	var report strings.Builder
	fmt.Fprintf(&report, "%s, `make bench` (%s).\n\n", measuredOn(), invocation())
	fmt.Fprintf(&report, "Each figure is the best of %d runs on fresh mounts, tools taking turns measure by measure; images in the page cache. "+
		"Sequential: the whole disk in 1 MiB reads, by 1 reader or by 8 readers each reading its eighth. "+
		"Random: fio, 4 KiB, psync, %d s, buffered or O_DIRECT, 1 or 4 jobs. "+
		"Guest: the ext4 partition through a loop device (`losetup -r -o 1MiB`, buffered or `--direct-io=on`, mounted `ro,noload`), the kernel's caches dropped and the image files read back into the page cache, then `tar c` of every file to a pipe, or a read of the first %d files under 16 KiB in path order (all of them where there are fewer); "+
		"through fuse2fs (`-o ro,fakeroot,offset=1MiB`) for the rootless flow. "+
		"The ratio is ours over the best peer, above 1 when we are faster (for times too).\n", runs, seconds, smallFiles)
	for _, img := range mountImages {
		var candidates []tool
		for _, t := range tools(ours, img.raw) {
			if t.reads(img) {
				candidates = append(candidates, t)
			}
		}
		results := make([]figures, len(candidates))
		for i, t := range candidates {
			results[i] = figures{tool: t.name, peer: t.peer, values: map[string]float64{}, errs: map[string]error{}}
		}
		if err := warmImage(img); err != nil {
			return err
		}
		// Tools take turns on each measure, so that a noisy spell on
		// the machine does not fall on one tool only.
		for run := 1; run <= runs; run++ {
			for _, mt := range ms {
				if mt.guest && !img.guest {
					continue
				}
				for i, t := range candidates {
					fmt.Fprintf(os.Stderr, "%s, run %d of %d: %s: %s ...\n", img.name, run, runs, mt.name, t.name)
					measureOnce(t, img, mt, o, &results[i])
				}
			}
		}
		table := formatTable(img, ms, results)
		fmt.Print("\n" + table)
		report.WriteString("\n" + table)
	}
	if len(images) > 0 {
		table, err := commandFigures(images, ours, work, runs)
		if err != nil {
			return err
		}
		fmt.Print("\n" + table)
		report.WriteString("\n" + table)
	}
	if image == "" && strings.Contains("remote", only) && !commandsOnly {
		table, err := remoteFigures(remoteImage, ours, work, runs)
		if err != nil {
			return err
		}
		fmt.Print("\n" + table)
		report.WriteString("\n" + table)
	}
	if image == "" && strings.Contains("writes", only) && !commandsOnly {
		table, err := writeFigures(remoteImage, ours, o, runs)
		if err != nil {
			return err
		}
		fmt.Print("\n" + table)
		report.WriteString("\nWrites: each measure on a fresh overlay of the image (ours `--overlay`, QEMU's `qemu-img create -b` exported writable by qemu-storage-daemon), the image in the page cache. " +
			"Random writes: fio randwrite, 4 KiB, psync, buffered (with a final fsync) or O_DIRECT. Guest: the ext4 partition mounted read-write through a loop device, a tar of /usr/include and /usr/share/doc extracted into it, then unmounted. " +
			"qemu-nbd is not measured: it needs the nbd kernel module, which this machine lacks.\n\n" + table)
	}
	if out != "" {
		return os.WriteFile(out, []byte(report.String()), 0o644)
	}
	return nil
}

// emit prints a table that is the whole report, and writes it to out.
func emit(table, out string) error {
	fmt.Print(table)
	if out == "" {
		return nil
	}
	return os.WriteFile(out, []byte(table), 0o644)
}

// measuredOn says when and on what a table was measured.
func measuredOn() string {
	return fmt.Sprintf("Measured %s on %d cores (%s)", time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), cpuModel())
}

// invocation is the command that produced a table.
func invocation() string {
	return strings.TrimSpace("go run ./integration/bench " + strings.Join(os.Args[1:], " "))
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}
