package main

import (
	"bytes"
	"io"
	"testing"
)

// The commands that read an image without mounting it (info, export,
// hash, check) run here, in the test's process, through the command line
// as main runs it; the integration package runs the built binary only
// where it must (mounts, signals, terminals).

// qcowmount runs a command line in this process as main runs it, and
// returns what it wrote to stdout and stderr together, and its exit code.
func qcowmount(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := qcowmountTo(t, &out, &out, args...)
	return out.String(), code
}

// qcowmountTo runs a command line in this process with stdout and stderr
// where the test says, and returns its exit code.
func qcowmountTo(t *testing.T, stdout, stderr io.Writer, args ...string) int {
	t.Helper()
	app := newApp()
	app.Writer, app.ErrWriter = stdout, stderr
	return run(app, append([]string{"qcowmount"}, args...))
}
