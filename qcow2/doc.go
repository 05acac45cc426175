// Package qcow2 reads QEMU disk images (qcow2 v2 and v3, and the old qcow
// format) as the guest disk they describe: an io.ReaderAt over the bytes
// that `qemu-img convert -O raw` would write. It reads backing chains,
// external data files, compressed (zlib, zstd) and encrypted (LUKS,
// legacy AES) clusters, extended L2 entries and internal snapshots, and
// treats every image as a stranger's: each field is checked against
// QEMU's own limits before it is used.
//
// The shortest use opens a local image, with its backing chain, and reads
// the guest disk like any io.ReaderAt:
//
//	img, err := qcow2.Open("disk.qcow2", qcow2.Options{})
//	if err != nil {
//		return err
//	}
//	defer img.Close()
//	mbr := make([]byte, 512)
//	_, err = img.ReadAt(mbr, 0)
//
// New reads an image from any io.ReaderAt (memory, an object in a store,
// an HTTP server through package remote), with Options.Resolver to open
// the backing and data files it names. An Image is safe for concurrent
// use. Info, Snapshots and Chain describe it as `qemu-img info` does;
// Check audits the file as `qemu-img check` does; Allocation tells data
// from holes, for tools that copy sparsely.
//
// # Errors
//
// Callers can tell the failures apart with errors.As and errors.Is:
//
//   - *FormatError: a field breaks the format or one of QEMU's limits. It
//     names the file of the chain, the field and its offset in that file,
//     and unwraps to its cause where there is one. Open and New return it
//     for the header and tables; ReadAt for a damaged table or compressed
//     cluster met while reading, for those bytes only.
//   - *UnsupportedError: a valid feature this reader does not handle;
//     Feature names it. Open and New.
//   - *PassphraseError: an encrypted image could not be unlocked (Open and
//     New). Missing is set when no passphrase was given; otherwise it
//     unwraps to *encryption.WrongPassphraseError, or to
//     *encryption.KDFLimitError when no key slot could be tried in time.
//   - ErrNoKey: ReadAt of encrypted data in an image opened with
//     Options.AllowLocked and no passphrase.
//   - ErrUnsafePath: Open and New refuse a backing or data file name
//     that the path rules keep out (see Options.BackingDir).
//   - ErrLocked: Open finds the image's write lock held by QEMU.
//   - Anything else is the host's error as the os and io packages give it
//     (fs.ErrNotExist, a *fs.PathError wrapping EIO): an I/O error is never
//     reported as a damaged image. ReadAt returns io.EOF at the end of the
//     disk, as io.ReaderAt says.
package qcow2
