package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/encryption"
	"golang.org/x/term"
)

// Passphrases come from key files (--key-file [IMAGE=]FILE, their exact
// bytes), from standard input (--password-stdin, one line), or from a
// prompt with echo off when standard input is a terminal. They never
// appear in arguments, the environment or the log. The background process
// asks the command that started it for each one over a pipe (remoteKeys),
// so that it holds the passphrases only while deriving the keys.

// maxPassphrase bounds what a key file or standard input may hold.
const maxPassphrase = 64 << 10

// promptTries is how often a terminal user may retype a passphrase.
const promptTries = 3

// keyFile is one --key-file: for the image named (any image when empty).
type keyFile struct {
	image string // as given
	abs   string // image made absolute, to compare with the chain's paths
	path  string
}

// localKeys answers passphrase requests in the process that holds the
// user's files and terminal.
type localKeys struct {
	files     []keyFile
	stdin     bool
	stdinPass []byte
	stdinRead bool
	terminal  bool // ask at a prompt when nothing else answers
	in        *os.File
	out       io.Writer
	// lastFile is the key file last used for each image, for hints.
	lastFile map[string]string
}

func newLocalKeys(o imageOptions, prompt bool) (*localKeys, error) {
	k := &localKeys{stdin: o.passwordStdin, in: os.Stdin, out: os.Stderr, lastFile: map[string]string{}}
	for _, arg := range o.keyFiles.Value() {
		kf := keyFile{path: arg}
		// IMAGE=FILE, unless the whole argument names a file.
		if image, path, ok := strings.Cut(arg, "="); ok && image != "" {
			if _, err := os.Stat(arg); err != nil {
				kf = keyFile{image: image, path: path}
				if abs, err := filepath.Abs(image); err == nil {
					kf.abs = abs
				}
			}
		}
		if kf.path == "" {
			return nil, usageError{fmt.Errorf("--key-file %q: no file named", arg)}
		}
		k.files = append(k.files, kf)
	}
	k.terminal = prompt && len(k.files) == 0 && !k.stdin && term.IsTerminal(int(os.Stdin.Fd()))
	return k, nil
}

// fileFor picks the key file for an image: one naming it, else one for
// any image.
func (k *localKeys) fileFor(r qcow2.KeyRequest) (keyFile, bool) {
	for _, f := range k.files {
		if f.image != "" && (f.image == r.Name || f.abs == r.Path || sameFile(f.abs, r.Path)) {
			return f, true
		}
	}
	for _, f := range k.files {
		if f.image == "" {
			return f, true
		}
	}
	return keyFile{}, false
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// passphrase answers one request: nil when there is none (more).
func (k *localKeys) passphrase(r qcow2.KeyRequest) ([]byte, error) {
	if f, ok := k.fileFor(r); ok {
		if r.Tries > 0 {
			return nil, nil
		}
		b, err := readLimited(f.path)
		if err != nil {
			return nil, usageError{fmt.Errorf("--key-file %s: %w", f.path, err)}
		}
		k.lastFile[r.Name] = f.path
		return b, nil
	}
	if k.stdin {
		if r.Tries > 0 {
			return nil, nil
		}
		if !k.stdinRead {
			k.stdinRead = true
			b, err := io.ReadAll(io.LimitReader(k.in, maxPassphrase+1))
			if err != nil {
				return nil, fmt.Errorf("--password-stdin: %w", err)
			}
			if len(b) > maxPassphrase {
				return nil, usageError{fmt.Errorf("--password-stdin: more than %d bytes", maxPassphrase)}
			}
			line, _, _ := bytes.Cut(b, []byte("\n"))
			k.stdinPass = bytes.TrimSuffix(line, []byte("\r"))
		}
		return k.stdinPass, nil
	}
	if !k.terminal || r.Tries >= promptTries {
		return nil, nil
	}
	if r.Tries > 0 {
		fmt.Fprintf(k.out, "qcowmount: no key slot of %s opens with this passphrase; try again\n", printable(r.Name))
	}
	fmt.Fprintf(k.out, "Passphrase for %s (%s): ", printable(r.Name), r.Method)
	b, err := term.ReadPassword(int(k.in.Fd()))
	fmt.Fprintln(k.out)
	if err != nil {
		return nil, fmt.Errorf("reading the passphrase: %w", err)
	}
	return b, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPassphrase+1))
	if err == nil && len(b) > maxPassphrase {
		err = fmt.Errorf("more than %d bytes: not a passphrase", maxPassphrase)
	}
	return b, err
}

// keyError gives a passphrase or key derivation error its exit code and
// says what the user can do about it.
func keyError(err error) error {
	var pe *qcow2.PassphraseError
	var le *encryption.KDFLimitError
	switch {
	case errors.As(err, &pe) && pe.Missing:
		return exitError{exitKey, fmt.Errorf("%w: give it with --key-file FILE (-o key_file=FILE), --password-stdin, or at a terminal's prompt", err)}
	case errors.As(err, &pe):
		return exitError{exitKey, err}
	case errors.As(err, &le):
		return exitError{exitKey, fmt.Errorf("%w: pass --max-kdf-time with a longer time if you trust the image", err)}
	}
	return err
}

// explain is keyError, plus the newline hint where a key file's
// passphrase opened no key slot.
func (k *localKeys) explain(err error) error {
	err = keyError(err)
	var pe *qcow2.PassphraseError
	if errors.As(err, &pe) && !pe.Missing {
		if hint := k.newlineHint(); hint != "" {
			return exitError{exitKey, fmt.Errorf("%w%s", err, hint)}
		}
	}
	return err
}

// newlineHint is for a passphrase that opened no key slot: a key file
// that ends with a newline (echo pass > file) is the usual cause.
func (k *localKeys) newlineHint() string {
	for _, f := range k.lastFile {
		if b, err := readLimited(f); err == nil && bytes.HasSuffix(b, []byte("\n")) {
			return fmt.Sprintf(" (the key file %s ends with a newline, which is part of the passphrase: write it with printf '%%s')", f)
		}
	}
	return ""
}

// The background process asks the starting command for passphrases on
// its ready pipe, one line each: "key " and the request as JSON. The
// answer comes back on a second pipe as a frame: a status byte (0 none,
// 1 a passphrase, 2 an error), a big-endian u32 length, and the bytes.
const (
	keyRequestPrefix = "key "
	keyNone          = 0
	keyGiven         = 1
	keyFailed        = 2
)

// remoteKeys asks the starting command.
type remoteKeys struct {
	ready   io.Writer
	answers *bufio.Reader
}

func (rk *remoteKeys) passphrase(r qcow2.KeyRequest) ([]byte, error) {
	req, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(rk.ready, "%s%s\n", keyRequestPrefix, req); err != nil {
		return nil, fmt.Errorf("asking for the passphrase: %w", err)
	}
	var head [5]byte
	if _, err := io.ReadFull(rk.answers, head[:]); err != nil {
		return nil, fmt.Errorf("waiting for the passphrase: %w", err)
	}
	n := binary.BigEndian.Uint32(head[1:])
	if n > maxPassphrase+4096 {
		return nil, fmt.Errorf("passphrase answer of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rk.answers, body); err != nil {
		return nil, fmt.Errorf("waiting for the passphrase: %w", err)
	}
	switch head[0] {
	case keyGiven:
		return body, nil
	case keyFailed:
		return nil, errors.New(string(body))
	}
	return nil, nil
}

// answerKeyRequest serves one request line from the background process.
func answerKeyRequest(line string, keys *localKeys, w io.Writer) error {
	var r qcow2.KeyRequest
	status, body := byte(keyNone), []byte(nil)
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, keyRequestPrefix)), &r); err != nil {
		status, body = keyFailed, []byte("bad passphrase request: "+err.Error())
	} else if pass, err := keys.passphrase(r); err != nil {
		status, body = keyFailed, []byte(err.Error())
	} else if pass != nil {
		status, body = keyGiven, pass
	}
	frame := binary.BigEndian.AppendUint32([]byte{status}, uint32(len(body)))
	_, err := w.Write(append(frame, body...))
	clear(frame)
	return err
}
