package hostfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// openFlags open image files. O_NONBLOCK: opening a FIFO must not wait
// for a writer before we can refuse it; it changes nothing for files and
// block devices.
const openFlags = os.O_RDONLY | syscall.O_NONBLOCK

// A stranger's image names its backing and data files, and could name any
// file the serving user can read (/etc/shadow as a raw backing file). So a
// chain opens those files only beneath its roots: the directory of the
// image it was opened for, and Options.BackingDir. The check holds for the
// file actually opened, not for its name: each open goes through an
// os.Root, which refuses any path, symlinks included, that leaves the
// root, whatever changes between our look at the name and the open.
//
// A pathPolicy keeps a chain's files to those roots.
type pathPolicy struct {
	any   bool       // Options.AllowAnyPath: no roots
	roots []confined // tried in order
}

type confined struct {
	dir  string // with symlinks resolved
	root *os.Root
}

// newPolicy allows the directory of topImage and opts.BackingDir, or,
// with opts.AllowAnyPath, anything. Close lets go of the directories.
func newPolicy(topImage string, opts Options) (*pathPolicy, error) {
	p := &pathPolicy{any: opts.AllowAnyPath}
	if p.any {
		return p, nil
	}
	dirs := []string{filepath.Dir(topImage)}
	if opts.BackingDir != "" {
		dirs = append(dirs, opts.BackingDir)
	}
	for _, d := range dirs {
		real, err := filepath.EvalSymlinks(d)
		if err == nil {
			real, err = filepath.Abs(real)
		}
		if err != nil {
			p.close()
			return nil, fmt.Errorf("backing directory: %w", err)
		}
		root, err := os.OpenRoot(real)
		if err != nil {
			p.close()
			return nil, fmt.Errorf("backing directory: %w", err)
		}
		p.roots = append(p.roots, confined{real, root})
	}
	return p, nil
}

// close lets go of the allowed directories.
func (p *pathPolicy) close() {
	for _, r := range p.roots {
		r.root.Close()
	}
	p.roots = nil
}

// describe names the directories files may come from, for errors.
func (p *pathPolicy) describe() string {
	dirs := make([]string, len(p.roots))
	for i, r := range p.roots {
		dirs[i] = r.dir
	}
	return strings.Join(dirs, " or ")
}

// open opens path, a backing or data file, read-only if the policy allows
func (p *pathPolicy) open(path string) (*os.File, error) {
	if p.any {
		return os.OpenFile(path, openFlags, 0)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, err
	}
	for _, r := range p.roots {
		rel, ok := inside(r.dir, real)
		if !ok {
			continue
		}
		// The name may have changed since EvalSymlinks (a symlink that
		// flips): the root still refuses whatever leads out of it.
		f, err := r.root.OpenFile(rel, openFlags, 0)
		if err != nil {
			if errIsEscape(err) {
				return nil, fmt.Errorf("%s leads outside %s: %w", path, r.dir, ErrOutside)
			}
			return nil, err
		}
		return f, nil
	}
	return nil, fmt.Errorf("%s lies outside %s: %w", real, p.describe(), ErrOutside)
}

// inside reports whether path lies in dir (both absolute, clean), and the
// path relative to dir.
func inside(dir, path string) (string, bool) {
	rel, err := filepath.Rel(dir, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return "", false
	}
	return rel, true
}

// errIsEscape is true for os.Root's refusal of a path that leaves it (the
// os package does not export that error).
func errIsEscape(err error) bool {
	var pe *os.PathError
	return errors.As(err, &pe) && pe.Err.Error() == "path escapes from parent"
}
