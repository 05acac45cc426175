package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestLogEscapes: text from an image cannot reach a log line raw, in the
// message or in any text field, nor forge a second line.
func TestLogEscapes(t *testing.T) {
	var out bytes.Buffer
	log := zap.New(zapcore.NewCore(escapingEncoder{zapcore.NewConsoleEncoder(zap.NewProductionEncoderConfig())}, zapcore.AddSync(&out), zapcore.DebugLevel))
	evil := "\x1b[2J\u202e\nINFO forged\x9b"
	log.With(zap.String("with", evil)).Warn("volume "+evil, zap.String("name", evil), zap.Error(errors.New(evil)), zap.Stringer("s", stringer(evil)))
	got := out.String()
	if strings.Count(got, "\n") != 1 || strings.ContainsAny(strings.TrimSuffix(got, "\n"), "\x1b\u202e\n") || strings.Contains(got, "\x9b") {
		t.Fatalf("raw guest text in the log line: %q", got)
	}
	if strings.Count(got, `\x1b[2J\u202e\nINFO forged\x9b`) != 1 || strings.Count(got, `\\x1b[2J\\u202e\\nINFO forged\\x9b`) != 4 {
		t.Errorf("not escaped as expected: %s", got)
	}
}

type stringer string

func (s stringer) String() string { return string(s) }
