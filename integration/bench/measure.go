package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/qcowmount/qcowmount/integration/proc"
)

// result is one tool's figures on one image.
type result struct {
	tool    string
	peer    bool
	ready   time.Duration
	seqMiBs float64
	iops    float64
	rssMiB  float64
	err     error
}

// best merges two runs of one tool: the best speed and mount time, the
// highest peak memory. A failed run counts only if every run failed.
func best(a, b result, first bool) result {
	switch {
	case first || a.err != nil:
		return b
	case b.err != nil:
		return a
	}
	a.ready = min(a.ready, b.ready)
	a.seqMiBs = max(a.seqMiBs, b.seqMiBs)
	a.iops = max(a.iops, b.iops)
	a.rssMiB = max(a.rssMiB, b.rssMiB)
	return a
}

// measure runs the sequential and the random test on fresh mounts.
func measure(t tool, img benchImage, work string, seconds int) (result, error) {
	r := result{tool: t.name, peer: t.peer}
	for _, f := range []string{img.path, img.raw} {
		if err := warm(f); err != nil {
			return r, err
		}
	}
	dir, err := os.MkdirTemp(work, "mnt")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)

	// Sequential, whole disk, as dd does it by hand.
	start := time.Now()
	m, err := t.mount(img, dir)
	if err != nil {
		return r, err
	}
	r.ready = time.Since(start)
	start = time.Now()
	err = sh("dd", "if="+m.file, "of=/dev/null", "bs=1M")
	elapsed := time.Since(start)
	rss := proc.PeakRSS(m.pid)
	if stopErr := m.stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return r, err
	}
	st, err := os.Stat(img.raw)
	if err != nil {
		return r, err
	}
	r.seqMiBs = float64(st.Size()) / (1 << 20) / elapsed.Seconds()

	// Random 4 KiB reads, O_DIRECT so that each reaches the tool.
	if m, err = t.mount(img, dir); err != nil {
		return r, err
	}
	out, err := exec.Command("fio", "--name=random", "--filename="+m.file, "--readonly", "--rw=randread",
		"--bs=4k", "--ioengine=psync", "--direct=1", "--numjobs=4", "--time_based",
		"--runtime="+strconv.Itoa(seconds), "--group_reporting", "--output-format=json").Output()
	rss = max(rss, proc.PeakRSS(m.pid))
	if stopErr := m.stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return r, fmt.Errorf("fio: %v", err)
	}
	var report struct {
		Jobs []struct {
			Read struct {
				IOPS float64 `json:"iops"`
			} `json:"read"`
			Error int `json:"error"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &report); err != nil || len(report.Jobs) == 0 || report.Jobs[0].Error != 0 {
		return r, fmt.Errorf("fio report: %v: %.300s", err, out)
	}
	r.iops = report.Jobs[0].Read.IOPS
	r.rssMiB = float64(rss) / 1024
	return r, nil
}

// warm reads a file so that it is in the page cache.
func warm(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}

// formatTable prints the figures as a Markdown table, with our ratio to the
// best peer on each measure.
func formatTable(img benchImage, results []result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n", img.name)
	b.WriteString("| tool | mount ready | sequential | random 4 KiB | peak RSS |\n|---|---:|---:|---:|---:|\n")
	var ours, bestSeq, bestIOPS float64
	var oursIOPS float64
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(&b, "| %s | failed: %v | | | |\n", r.tool, r.err)
			continue
		}
		fmt.Fprintf(&b, "| %s | %d ms | %.0f MiB/s | %.0f IOPS | %.0f MiB |\n",
			r.tool, r.ready.Milliseconds(), r.seqMiBs, r.iops, r.rssMiB)
		switch {
		case strings.Contains(r.tool, "ours"):
			ours, oursIOPS = r.seqMiBs, r.iops
		case r.peer:
			bestSeq, bestIOPS = max(bestSeq, r.seqMiBs), max(bestIOPS, r.iops)
		}
	}
	if ours > 0 && bestSeq > 0 {
		fmt.Fprintf(&b, "\nqcowmount / best peer: sequential %.2fx, random %.2fx\n", ours/bestSeq, oursIOPS/bestIOPS)
	}
	return b.String()
}
