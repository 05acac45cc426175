package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/urfave/cli/v2"
)

// check's exit codes are qemu-img check's, not the other commands'.
const (
	checkClean       = 0
	checkFailed      = 1 // the check could not be done
	checkCorruptions = 2
	checkLeaks       = 3 // leaks and no corruptions
)

// checkOptions are check's flags.
type checkOptions struct {
	image  imageOptions
	json   bool
	output string
}

func checkCommand() *cli.Command {
	o := checkOptions{image: defaultImageOptions()}
	return &cli.Command{
		Name:  "check",
		Usage: "audit an image's metadata without changing it, as qemu-img check does, and list what an analyst should know",
		Description: "Exit codes, as qemu-img check's: 0 no errors, 1 the check could not be done, 2 corruptions, 3 leaked clusters only.\n" +
			"The image's passphrase is not needed: check reads metadata only.",
		ArgsUsage: "IMAGE",
		Flags: slices.Concat(o.image.flags(), []cli.Flag{
			&cli.BoolFlag{Name: "json", Destination: &o.json, Usage: "print JSON with qemu-img check's keys, plus problems and findings"},
			&cli.StringFlag{Name: "output", Destination: &o.output, Usage: "`FORMAT`: json or human, as qemu-img check --output"},
		}),
		// A mistake on the command line must not read as "corruptions" (2).
		OnUsageError: func(_ *cli.Context, err error, _ bool) error { return exitError{checkFailed, err} },
		Action: action("check", func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			return runCheck(ctx, o, args, stdout, stderr)
		}),
	}
}

// runCheck audits the image args names, reporting on stdout (problems on
// stderr, as qemu-img), and exits as qemu-img check exits.
func runCheck(ctx context.Context, o checkOptions, args []string, stdout, stderr io.Writer) error {
	code, err := check(ctx, o, args, stdout, stderr)
	if err != nil {
		return exitError{checkFailed, err}
	}
	if code != checkClean {
		return quietExit(code)
	}
	return nil
}

func check(ctx context.Context, o checkOptions, args []string, stdout, stderr io.Writer) (int, error) {
	asJSON, err := jsonOutput(o.json, o.output)
	if err != nil {
		return 0, err
	}
	if len(args) != 1 {
		return 0, fmt.Errorf("check takes one IMAGE, got %d arguments (see qcowmount check --help)", len(args))
	}
	// The image is checked even when its backing or data file does not
	// open; that it does not is a finding.
	img, err := openForDescribing(ctx, o.image, args[0], stderr)
	if err != nil {
		return 0, err
	}
	defer img.Close()
	res, err := img.Check()
	if err != nil {
		return 0, err
	}
	if !isURL(args[0]) {
		res.Filename = args[0]
	}
	out := bufio.NewWriter(stdout)
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "    ")
		err = enc.Encode(res)
	} else {
		for _, p := range res.Problems {
			fmt.Fprintln(stderr, printable(p))
		}
		writeCheck(out, res)
	}
	if err == nil {
		err = out.Flush()
	}
	if err != nil {
		return 0, err
	}
	switch {
	case res.CheckErrors > 0:
		return checkFailed, nil
	case res.Corruptions > 0:
		return checkCorruptions, nil
	case res.Leaks > 0:
		return checkLeaks, nil
	}
	return checkClean, nil
}

// writeCheck prints the result as qemu-img check does, then the findings.
func writeCheck(w io.Writer, r *qcow2.CheckResult) {
	if r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0 {
		fmt.Fprintln(w, "No errors were found on the image.")
	}
	if r.Corruptions > 0 {
		fmt.Fprintf(w, "\n%d errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
	}
	if r.Leaks > 0 {
		fmt.Fprintf(w, "\n%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", r.Leaks)
	}
	if r.CheckErrors > 0 {
		fmt.Fprintf(w, "\n%d internal errors have occurred during the check.\n", r.CheckErrors)
	}
	if r.TotalClusters != 0 && r.AllocatedClusters != 0 {
		a := float64(r.AllocatedClusters)
		fmt.Fprintf(w, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n", r.AllocatedClusters, r.TotalClusters,
			a*100/float64(r.TotalClusters), float64(r.FragmentedClusters)*100/a, float64(r.CompressedClusters)*100/a)
	}
	if r.ImageEndOffset != 0 {
		fmt.Fprintf(w, "Image end offset: %d\n", r.ImageEndOffset)
	}
	if len(r.Findings) > 0 {
		fmt.Fprintln(w, "\nFindings:")
	}
	for _, f := range r.Findings {
		level := "note"
		if f.Warning {
			level = "warning"
		}
		fmt.Fprintf(w, "  %s: %s\n", level, printable(f.Message))
	}
}
