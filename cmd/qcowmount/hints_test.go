package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/remote"
)

// TestFlagHints: a refusal the libraries make, however wrapped, reads
// with the flag that widens its rule, and keeps its exit code; other
// errors read as they are.
func TestFlagHints(t *testing.T) {
	tests := []struct {
		err  error
		flag string
	}{
		{fmt.Errorf("top.qcow2: backing file %q: /etc/x lies outside /img: %w", "/etc/x", qcow2.ErrOutside), "--backing-dir"},
		{fmt.Errorf("/dev/sda is %w", qcow2.ErrDevice), "--allow-devices"},
		{imageError{fmt.Errorf("vm.qcow2: %w: a VM writes it", qcow2.ErrLocked)}, "--force-share"},
		{fmt.Errorf("url: bytes 0-0: %w", remote.ErrTimeout), "--remote-timeout"},
		{fmt.Errorf("Get: %w", x509.UnknownAuthorityError{}), "--ca-file"},
		{errors.New("something else"), ""},
		{fmt.Errorf("a proc file: %w", qcow2.ErrUnsafePath), ""}, // no flag widens that rule
	}
	for _, tc := range tests {
		got := withHint(tc.err)
		if tc.flag == "" {
			if got.Error() != tc.err.Error() {
				t.Errorf("%v: hinted as %q", tc.err, got)
			}
			continue
		}
		if !strings.Contains(got.Error(), tc.flag) || !strings.HasPrefix(got.Error(), tc.err.Error()) || exitCode(got) != exitCode(tc.err) {
			t.Errorf("%v: %q (exit %d), want it to name %s (exit %d)", tc.err, got, exitCode(got), tc.flag, exitCode(tc.err))
		}
	}
}
