package qcow2

import (
	"fmt"
)

// FormatError reports a field of the image that breaks the format or one
// of QEMU's limits. Path is the image file of the chain it lies in (the
// error's text starts with it already); Offset is where the field lies in
// that file, or -1 when the problem is not tied to one place; Err is the
// cause, where there is one (a decoder's error for a corrupt compressed
// cluster).
type FormatError struct {
	Path   string
	Field  string
	Offset int64
	Msg    string
	Err    error
}

func (e *FormatError) Error() string {
	s := e.Field
	if e.Offset >= 0 {
		s += fmt.Sprintf(" at offset %#x", e.Offset)
	}
	s += ": " + e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *FormatError) Unwrap() error { return e.Err }

// inFile prefixes err with the image file it is about (a FormatError
// names it already as Path: the text starts with it too).
func inFile(path string, err error) error {
	return fmt.Errorf("%s: %w", path, err)
}

// formatErr is a FormatError in the image file at path.
func formatErr(path, field string, off int64, format string, args ...any) error {
	return &FormatError{Path: path, Field: field, Offset: off, Msg: fmt.Sprintf(format, args...)}
}

// formatErr is a FormatError in the image's file.
func (img *Image) formatErr(field string, off int64, format string, args ...any) error {
	return formatErr(img.path, field, off, format, args...)
}

// UnsupportedError reports a valid feature this reader does not handle.
type UnsupportedError struct {
	Feature string
}

func (e *UnsupportedError) Error() string {
	return "unsupported feature: " + e.Feature
}
