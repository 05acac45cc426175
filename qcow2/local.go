package qcow2

import (
	"github.com/qcowmount/qcowmount/qcow2/internal/hostfile"
)

// ErrUnsafePath is wrapped by errors about backing or data file names that
// the path policy refuses: outside the allowed directories, on a pseudo
// file system, or naming a protocol rather than a file.
var ErrUnsafePath = hostfile.ErrUnsafePath

// ErrOutside is wrapped by the refusal of a backing or data file outside
// the directories the path rules allow (Options.BackingDir and
// AllowAnyPath widen them). It wraps ErrUnsafePath.
var ErrOutside = hostfile.ErrOutside

// ErrDevice is wrapped by the refusal of a backing or data file that is
// a block device (Options.AllowDevices allows them).
var ErrDevice = hostfile.ErrDevice

// ErrLocked is wrapped by the error for an image that another process
// holds in a way that conflicts with reading it consistently.
var ErrLocked = hostfile.ErrLocked

// localFiles is the Resolver of Open: the files of a chain on this
// machine, as hostfile opens them (path policy, file checks, QEMU's
// locks, loops refused).
type localFiles struct{ files *hostfile.Files }

func newLocalFiles(topImage string, opts Options) (*localFiles, error) {
	files, err := hostfile.New(topImage, hostfile.Options{
		AllowAnyPath: opts.AllowAnyPath,
		BackingDir:   opts.BackingDir,
		AllowDevices: opts.AllowDevices,
		ForceShare:   opts.ForceShare,
	})
	if err != nil {
		return nil, err
	}
	return &localFiles{files}, nil
}

// Resolve opens a backing or data file that an image names.
func (l *localFiles) Resolve(from, name, what string) (File, int64, string, error) {
	p, err := resolveReference(from, name, what)
	if err != nil {
		return nil, 0, "", err
	}
	open := l.files.OpenData
	if what == "backing file" {
		open = l.files.OpenBacking
	}
	f, size, err := open(p)
	if err != nil {
		return nil, 0, "", err
	}
	return f, size, p, nil
}
