package qcow2

import (
	"errors"
	"fmt"
)

// FormatError reports a field of the image that breaks the format or one
// of QEMU's limits. Offset is where the field lies in the image file, or -1
// when the problem is not tied to one place.
type FormatError struct {
	Field  string
	Offset int64
	Msg    string
}

func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("%s: %s", e.Field, e.Msg)
	}
	return fmt.Sprintf("%s at offset %#x: %s", e.Field, e.Offset, e.Msg)
}

func formatErr(field string, off int64, format string, args ...any) error {
	return &FormatError{Field: field, Offset: off, Msg: fmt.Sprintf(format, args...)}
}

// UnsupportedError reports a valid feature this reader does not handle.
type UnsupportedError struct {
	Feature string
}

func (e *UnsupportedError) Error() string {
	return "unsupported feature: " + e.Feature
}

// ErrUnsafePath is wrapped by errors about backing or data file names that
// the path policy refuses.
var ErrUnsafePath = errors.New("refused by path policy")
