package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/qcowmount/qcowmount/qcow2/overlay"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
)

// overlayOptions say where a mount's writes go: nowhere (read-only, the
// default), a qcow2 overlay file, or a temporary one.
type overlayOptions struct {
	file      string
	temp      bool
	plaintext bool
}

func (o *overlayOptions) flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "overlay", Destination: &o.file, Usage: "take writes into `FILE`, a qcow2 overlay whose backing file is the image (created if missing, continued if it is one); the image is never written"},
		&cli.BoolFlag{Name: "temp-overlay", Destination: &o.temp, Usage: "take writes into an unlinked temporary overlay in $TMPDIR (or /var/tmp), gone at unmount"},
		&cli.BoolFlag{Name: "overlay-plaintext", Destination: &o.plaintext, Usage: "let the overlay of an encrypted image hold the guest's writes unencrypted (it is 0600)"},
	}
}

func (o overlayOptions) wanted() bool { return o.file != "" || o.temp }

// openOverlay opens the overlay o asks for over img (opened from arg as
// opened says), or nil for a read-only mount. What cannot be an overlay
// is a usage error; a file that is not one of this image, an image error.
func openOverlay(o overlayOptions, opened imageOptions, arg string, img *openedImage, log *zap.Logger) (*overlay.Overlay, error) {
	if !o.wanted() {
		return nil, nil
	}
	if o.file != "" && o.temp {
		return nil, usageError{errors.New("--overlay and --temp-overlay: give one of them")}
	}
	if opened.forceShare {
		return nil, usageError{errors.New("an overlay with --force-share: the image may change under the overlay, which would then hold a mix of old and new; mount without --force-share once nothing writes the image")}
	}
	if o.file != "" && opened.snapshot != "" {
		return nil, usageError{errors.New("--overlay with --snapshot: QEMU cannot open an internal snapshot as a backing file; --temp-overlay takes writes over a snapshot")}
	}
	if o.file != "" && opened.noBacking {
		return nil, usageError{errors.New("--overlay with --no-backing: QEMU would read the overlay over the whole chain, not the top image alone; --temp-overlay takes writes over it")}
	}
	if o.file != "" {
		a, err1 := os.Stat(o.file)
		b, err2 := os.Stat(img.Path())
		if err1 == nil && err2 == nil && os.SameFile(a, b) {
			return nil, usageError{errors.New("--overlay names the image itself, which is never written: name a new file")}
		}
	}
	info, err := img.Info()
	if err != nil {
		return nil, imageError{err}
	}
	if !o.plaintext {
		for _, l := range img.Chain() {
			if li, err := l.Info(); err == nil && li.Encrypted {
				return nil, usageError{errors.New("the image is encrypted, and the overlay would hold the guest's writes unencrypted: add --overlay-plaintext to accept that")}
			}
		}
	}
	backing := overlay.Backing{Name: img.Path(), Format: info.Format}
	if isURL(arg) {
		u, err := url.Parse(arg)
		if err != nil {
			return nil, usageError{errors.New("the image's URL does not parse")}
		}
		if u.User != nil || u.RawQuery != "" {
			if o.file != "" {
				return nil, usageError{errors.New("--overlay over a URL with a password or a query: the overlay would keep them as its backing file name; use --temp-overlay")}
			}
			u.User, u.RawQuery = nil, "" // a temporary overlay's name for it is never read
		}
		backing.Name = u.String()
	}
	var ov *overlay.Overlay
	flag := "--overlay"
	if o.temp {
		flag = "--temp-overlay"
		dir := os.Getenv("TMPDIR")
		if dir == "" {
			dir = "/var/tmp"
		}
		ov, err = overlay.Temp(dir, img, backing, overlay.Options{})
	} else {
		var path string
		if path, err = filepath.Abs(o.file); err == nil {
			ov, err = overlay.Open(path, img, backing, overlay.Options{})
		}
	}
	if err != nil {
		return nil, imageError{fmt.Errorf("%s: %w", flag, err)}
	}
	log.Info("writes go to the overlay", zap.String("overlay", ov.Path()))
	return ov, nil
}
