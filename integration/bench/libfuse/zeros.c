// The smallest libfuse server: one read-only file of zeros, "zeros", served
// by libfuse 3's low-level API and its multi-threaded loop with their
// defaults. The bench's -ceiling runs it against the same file served by
// go-fuse, to show what each FUSE library costs per request.
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

static const off_t size = 64LL << 30;
static const double forever = 86400;
static char zeros[1 << 20];

static void fill(struct stat *st, fuse_ino_t ino)
{
	memset(st, 0, sizeof *st);
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = size;
	}
}

static void zeros_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	if (parent != FUSE_ROOT_ID || strcmp(name, "zeros") != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof e);
	e.ino = 2;
	e.attr_timeout = e.entry_timeout = forever;
	fill(&e.attr, e.ino);
	fuse_reply_entry(req, &e);
}

static void zeros_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	(void)fi;
	if (ino != FUSE_ROOT_ID && ino != 2) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill(&st, ino);
	fuse_reply_attr(req, &st, forever);
}

static void zeros_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != 2)
		fuse_reply_err(req, EISDIR);
	else if ((fi->flags & O_ACCMODE) != O_RDONLY)
		fuse_reply_err(req, EROFS);
	else
		fuse_reply_open(req, fi);
}

static void zeros_read(fuse_req_t req, fuse_ino_t ino, size_t n, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	if (off >= size)
		n = 0;
	else if ((off_t)n > size - off)
		n = size - off;
	if (n > sizeof zeros)
		n = sizeof zeros;
	fuse_reply_buf(req, zeros, n);
}

static const struct fuse_lowlevel_ops ops = {
	.lookup = zeros_lookup,
	.getattr = zeros_getattr,
	.open = zeros_open,
	.read = zeros_read,
};

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct fuse_loop_config config = {.clone_fd = 0, .max_idle_threads = 10};
	struct fuse_session *se;
	int rc = 1;

	if (fuse_parse_cmdline(&args, &opts) != 0 || opts.mountpoint == NULL)
		return 2;
	se = fuse_session_new(&args, &ops, sizeof ops, NULL);
	if (se == NULL)
		return 1;
	if (fuse_set_signal_handlers(se) == 0) {
		if (fuse_session_mount(se, opts.mountpoint) == 0) {
			rc = fuse_session_loop_mt(se, &config) != 0;
			fuse_session_unmount(se);
		}
		fuse_remove_signal_handlers(se);
	}
	fuse_session_destroy(se);
	return rc;
}
