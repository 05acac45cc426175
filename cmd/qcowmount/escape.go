package main

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// printable escapes what a terminal would act on or hide in text from
// the image: control characters and escape sequences, line and paragraph
// separators (a forged line), format characters such as the bidi
// override U+202E (text that reads other than it is), other invisible
// runes, and bytes that are not UTF-8. It leaves backslashes alone, so
// that names already quoted with %q in an error read the same.
func printable(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case !strconv.IsPrint(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// escapingEncoder passes every message and text field through printable
// before the console encoder writes it: log lines carry text from images
// (names, warnings, errors), and zap writes a console message as it is.
type escapingEncoder struct{ zapcore.Encoder }

func (e escapingEncoder) Clone() zapcore.Encoder { return escapingEncoder{e.Encoder.Clone()} }

// AddString escapes fields added with Logger.With.
func (e escapingEncoder) AddString(key, value string) { e.Encoder.AddString(key, printable(value)) }

func (e escapingEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	ent.Message = printable(ent.Message)
	escaped := make([]zapcore.Field, len(fields))
	for i, f := range fields {
		switch {
		case f.Type == zapcore.StringType:
			f.String = printable(f.String)
		case f.Type == zapcore.ErrorType && f.Interface != nil:
			f = zap.String(f.Key, printable(f.Interface.(error).Error()))
		case f.Type == zapcore.StringerType && f.Interface != nil:
			f = zap.String(f.Key, printable(f.Interface.(fmt.Stringer).String()))
		}
		escaped[i] = f
	}
	return e.Encoder.EncodeEntry(ent, escaped)
}
