# qcowmount: build, test, demo, install, bench.
GO      ?= go
PREFIX  ?= /usr/local

# Go. go.mod names the Go qcowmount is built with, and a go of 1.21 or
# later fetches that one by itself (GOTOOLCHAIN) from the Go module proxy.
# Debian 12's golang-go is 1.19, too old to do so: where the go on PATH is
# older than 1.21, or missing, `make go` (run by every target that builds)
# fetches that toolchain module itself, checks it against the SHA-256 sums
# below, and unpacks it into GO_DIR, which comes first on every target's
# PATH. GO_PROXY is where from.
GO_DIR     ?= $(CURDIR)/.go
GO_PROXY   ?= https://proxy.golang.org
GO_VERSION := $(shell sed -n 's/^go //p' go.mod)
export PATH := $(GO_DIR)/bin:$(PATH)
# golang.org/toolchain@v0.0.1-go$(GO_PINNED).linux-ARCH.zip; when go.mod
# names another Go, `make go` says so, with the sums to put here.
GO_PINNED    := 1.26.8
GO_SUM_amd64 := 30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
GO_SUM_arm64 := 02b36b6787b3ac767668f630e2998df45a3b1f9ffee08d1bf3ef6487cd658d99
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo +changes)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# Platforms: the whole command on Linux (amd64, arm64); everything but
# the mount on the rest (the library, info, check, export, hash). The mount
# builds on darwin (macFUSE) and freebsd too; windows has no FUSE.
PLATFORMS := linux/amd64 linux/arm64 linux/s390x darwin/amd64 darwin/arm64 freebsd/amd64 windows/amd64

# Debian packages the tests need: QEMU as the oracle, FUSE, tools to make
# and read guest disks (file systems, LVM, fuse2fs for the rootless flow),
# python3 for C zlib as the deflate decoder's oracle, GNU time for peak
# memory, nginx to serve remote images, b3sum to check hash's BLAKE3,
# cryptsetup to read LUKS headers beside ours, lintian for make deb's package.
TEST_PACKAGES := qemu-utils fuse3 e2fsprogs fdisk dosfstools mtools util-linux fio python3 time \
	xfsprogs btrfs-progs ntfs-3g lvm2 fuse2fs nginx-light b3sum cryptsetup-bin lintian systemd
# ... and what make demo uses: FUSE, fuse2fs for the ext4 partition,
# mtools for the FAT one, sfdisk for the partition table.
DEMO_PACKAGES := fuse3 fuse2fs mtools fdisk
# ... and the peers the benchmark measures us against (qemu-block-extra
# for qemu-img over HTTP; curl for the transport alone).
BENCH_PACKAGES := qemu-system-common libqcow-utils qemu-block-extra curl
# ... and what builds the smallest libfuse server for bench-ceiling.
CEILING_PACKAGES := gcc pkg-config libfuse3-dev

.PHONY: all go build man test deps vet lint cross dist deb unit integration emulated fuzz fuzz-smoke demo install uninstall bench bench-requests bench-ceiling clean

all: build

# Static, as the release binaries: without the dynamic loader a mount is
# ready sooner (each mount starts two processes; see docs/speed.md).
build: go
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/qcowmount ./cmd/qcowmount

# go makes sure there is a Go that builds qcowmount (see GO_DIR above).
go:
	@v=$$($(GO) version 2>/dev/null | sed -n 's/^go version go\([0-9]*\)\.\([0-9]*\).*/\1 \2/p'); \
	set -- $$v; if [ $${1:-0} -gt 1 ] || [ $${1:-0} = 1 -a $${2:-0} -ge 21 ]; then exit 0; fi; \
	found="$$($(GO) version 2>/dev/null | cut -d' ' -f3)"; found=$${found:-no go}; \
	fail() { echo "make: qcowmount needs Go 1.21 or later (which fetches go$(GO_VERSION), named in go.mod, by itself); found $$found, and $$1: install Go from https://go.dev/dl/, or Debian's golang-1.21 (or later) from bookworm-backports" >&2; exit 1; }; \
	case $$(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) fail "there is no Go for $$(uname -m) to fetch" ;; esac; \
	[ "$(GO_VERSION)" = "$(GO_PINNED)" ] || fail "the Makefile pins go$(GO_PINNED) (GO_SUM_amd64, GO_SUM_arm64), not go$(GO_VERSION)"; \
	if ! command -v curl >/dev/null || ! command -v unzip >/dev/null; then \
		[ "$$(id -u)" = 0 ] || fail "fetching it needs curl and unzip (as root, make installs them)"; \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl unzip ca-certificates >/dev/null || fail "apt-get could not install curl and unzip"; \
	fi; \
	zip=golang.org/toolchain/@v/v0.0.1-go$(GO_VERSION).linux-$$arch.zip; \
	echo "make: $$found is too old to build qcowmount: fetching go$(GO_VERSION) from $(GO_PROXY) into $(GO_DIR)"; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	curl -sSfL -o "$$tmp/go.zip" "$(GO_PROXY)/$$zip" || fail "$(GO_PROXY)/$$zip did not download"; \
	sum=$$(sha256sum "$$tmp/go.zip" | cut -d' ' -f1); \
	want=$(GO_SUM_amd64); [ $$arch = amd64 ] || want=$(GO_SUM_arm64); \
	[ "$$sum" = "$$want" ] || fail "$(GO_PROXY)/$$zip has SHA-256 $$sum, not the one pinned here"; \
	unzip -q "$$tmp/go.zip" -d "$$tmp/x" || fail "the Go archive did not unpack"; \
	rm -rf "$(GO_DIR)"; mv "$$tmp/x/golang.org/toolchain@v0.0.1-go$(GO_VERSION).linux-$$arch" "$(GO_DIR)"; \
	chmod +x "$(GO_DIR)"/bin/* "$(GO_DIR)"/pkg/tool/*/*; \
	"$(GO_DIR)/bin/go" version

# deps installs what a fresh Debian machine lacks for the tests (PACKAGES,
# by default TEST_PACKAGES), with apt-get when run as root; Go modules come
# through go.mod.
PACKAGES ?= $(TEST_PACKAGES)
deps: go
	@missing=""; \
	for p in $(PACKAGES) $(EXTRA_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
		else \
			echo "missing packages:$$missing (run as root to install them; tests that need them will skip)"; \
		fi; \
	fi

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# cross builds the command and vets the library, the command and fusefs
# (not on windows) for every platform; integration is Linux's alone.
cross:
	@for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; echo "cross: $$p"; \
		pkgs="./qcow2/... ./cmd/..."; [ $$os = windows ] || pkgs="$$pkgs ./fusefs/..."; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -o /dev/null ./cmd/qcowmount && \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) vet $$pkgs || exit 1; \
	done

# dist: static, version-stamped binaries for every platform, and their
# SHA256SUMS.
dist:
	@rm -rf dist && mkdir -p dist
	@for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; ext=; [ $$os = windows ] && ext=.exe; \
		out=dist/qcowmount-$(VERSION)-$$os-$$arch$$ext; echo "dist: $$out"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $$out ./cmd/qcowmount || exit 1; \
	done
	cd dist && sha256sum qcowmount-* > SHA256SUMS

# deb: the Debian package of the command for DEB_ARCH (this machine's by
# default; arm64 cross-builds), into DEB_OUT.
DEB_ARCH ?= $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_OUT  ?= dist
deb:
	@mkdir -p $(DEB_OUT)
	CGO_ENABLED=0 GOOS=linux GOARCH=$(DEB_ARCH) $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(DEB_OUT)/qcowmount-linux-$(DEB_ARCH) ./cmd/qcowmount
	@bash cmd/qcowmount/debian/mkdeb.sh $(DEB_OUT)/qcowmount-linux-$(DEB_ARCH) $(VERSION) $(DEB_ARCH) $(DEB_OUT)

# emulated runs the unit tests of qcow2 and its packages on arm64 and on
# big-endian s390x under Debian's user-mode emulation (qemu-user), both at
# once: byte order is where a reader breaks first. Tests that need FUSE
# skip there.
EMULATED := arm64:qemu-aarch64 s390x:qemu-s390x
emulated:
	@$(MAKE) --no-print-directory deps EXTRA_PACKAGES=qemu-user
	@logs=$$(mktemp -d); \
	for e in $(EMULATED); do \
		arch=$${e%%:*} emu=$${e#*:}; \
		(QCOWMOUNT_EMULATED=$$emu CGO_ENABLED=0 GOARCH=$$arch $(GO) test -count=1 -timeout 30m -exec $$emu ./qcow2/... >$$logs/$$arch 2>&1; \
			echo $$? >$$logs/$$arch.rc) & \
	done; wait; rc=0; \
	for e in $(EMULATED); do \
		arch=$${e%%:*}; echo "emulated: $$arch under $${e#*:}"; cat $$logs/$$arch; \
		[ "$$(cat $$logs/$$arch.rc)" = 0 ] || rc=1; \
	done; rm -rf $$logs; exit $$rc

test: deps build lint cross
	$(GO) test -race -count=1 -timeout 20m ./...
	@$(MAKE) --no-print-directory emulated
	@$(MAKE) --no-print-directory fuzz-smoke

# fuzz runs every fuzz target for FUZZTIME in turn (testdata/fuzz.sh says
# how); fuzz-smoke for a few seconds each, so that a broken target fails.
FUZZTIME ?= 1m
fuzz:
	FUZZTIME=$(FUZZTIME) testdata/fuzz.sh

fuzz-smoke:
	FUZZTIME=3s testdata/fuzz.sh

unit: build
	$(GO) test -race ./qcow2/... ./fusefs/... ./cmd/...

integration: build
	$(GO) test -race -count=1 ./integration/...

demo: build
	@$(MAKE) --no-print-directory deps PACKAGES="$(DEMO_PACKAGES)"
	@bash testdata/demo.sh

# bench: the reader alone (go test -bench), then every tool side by side on
# a 2 GiB guest disk built once in /var/tmp/qcowmount-bench. BENCH_ARGS
# passes flags, e.g. BENCH_ARGS="-image my.qcow2 -seconds 20".
bench: build
	@$(MAKE) --no-print-directory deps EXTRA_PACKAGES="$(BENCH_PACKAGES)"
	$(GO) test -run '^$$' -bench . -benchmem ./qcow2 ./qcow2/internal/decompress ./qcow2/encryption
	$(GO) run ./integration/bench -out integration/bench/RESULTS.md $(BENCH_ARGS)

# bench-requests: each measure once per FUSE server, recording what the
# kernel sends it (request sizes, requests in flight, time and CPU per
# request) from the kernel's fuse tracepoints (Linux 6.13 and later).
bench-requests: build
	@$(MAKE) --no-print-directory deps EXTRA_PACKAGES="$(BENCH_PACKAGES)"
	$(GO) run ./integration/bench -trace -seconds 2 -out integration/bench/REQUESTS.md $(BENCH_ARGS)

# bench-ceiling: what a request costs in each FUSE library alone: the
# smallest go-fuse server, the smallest libfuse one, our fusefs layer,
# go-fuse's raw API with fusefs's options, and fusefs on go-fuse with each
# change proposed upstream (integration/bench/gofuse-patches), each serving
# a file of zeros, under fio's random 4 KiB reads.
bench-ceiling: build
	@$(MAKE) --no-print-directory deps EXTRA_PACKAGES="$(CEILING_PACKAGES)"
	$(GO) run ./integration/bench -ceiling -runs 5 -out integration/bench/CEILING.md $(BENCH_ARGS)

# man and completions come from the command line's own definition.
man: build
	bin/qcowmount man > bin/qcowmount.1

install: man
	install -D -m 0755 bin/qcowmount $(DESTDIR)$(PREFIX)/bin/qcowmount
	install -D -m 0644 bin/qcowmount.1 $(DESTDIR)$(PREFIX)/share/man/man1/qcowmount.1
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	bin/qcowmount completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/qcowmount
	bin/qcowmount completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_qcowmount
	bin/qcowmount completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/qcowmount.fish

# uninstall removes what install put in place.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/qcowmount $(DESTDIR)$(PREFIX)/share/man/man1/qcowmount.1 \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions/qcowmount \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions/_qcowmount \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/qcowmount.fish

clean:
	rm -rf bin dist
