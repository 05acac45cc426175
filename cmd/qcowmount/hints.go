package main

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/remote"
)

// The libraries refuse with errors a caller tests with errors.Is and
// name no flags; this table says, in the command line's terms, which
// flag widens each rule, for the message the user reads.
var flagHints = []struct {
	is   func(error) bool
	hint string
}{
	{isErr(qcow2.ErrOutside), "pass --backing-dir DIR for a directory of shared base images, or --allow-any-backing-path to trust the image's paths"},
	{isErr(qcow2.ErrDevice), "pass --allow-devices (with --allow-any-backing-path, as devices lie outside the image's directory) to read it"},
	{isErr(qcow2.ErrLocked), "mount with --force-share to read it anyway, knowing that it may change underneath"},
	{isErr(remote.ErrTimeout), "--remote-timeout DURATION sets the limit"},
	{func(err error) bool {
		var unknown x509.UnknownAuthorityError
		return errors.As(err, &unknown)
	}, "if you trust the server, pass --ca-file FILE with the certificate (PEM) of the authority that signed its certificate"},
}

func isErr(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

// withHint adds to err what the user can pass to widen the rule that
// refused, if err is such a refusal.
func withHint(err error) error {
	if err == nil {
		return nil
	}
	for _, h := range flagHints {
		if h.is(err) {
			return hinted{err, h.hint}
		}
	}
	return err
}

// hinted is an error with advice after it; it unwraps to the error, so
// that exit codes still see what it is.
type hinted struct {
	error
	hint string
}

func (h hinted) Error() string { return fmt.Sprintf("%s (%s)", h.error.Error(), h.hint) }
func (h hinted) Unwrap() error { return h.error }
