# qcowmount: build, test, demo, install, bench.
GO      ?= go
PREFIX  ?= /usr/local
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
	xfsprogs btrfs-progs ntfs-3g lvm2 fuse2fs nginx-light b3sum cryptsetup-bin lintian
# ... and the peers the benchmark measures us against (qemu-block-extra
# for qemu-img over HTTP; curl for the transport alone).
BENCH_PACKAGES := qemu-system-common libqcow-utils qemu-block-extra curl
# ... and what builds the smallest libfuse server for bench-ceiling.
CEILING_PACKAGES := gcc pkg-config libfuse3-dev

.PHONY: all build man test deps vet lint cross dist deb unit integration emulated fuzz fuzz-smoke demo install bench bench-requests bench-ceiling clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/qcowmount ./cmd/qcowmount

# deps installs what a fresh Debian machine lacks for the tests, with
# apt-get when run as root; Go modules come through go.mod.
deps:
	@missing=""; \
	for p in $(TEST_PACKAGES) $(EXTRA_PACKAGES); do \
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

demo: deps build
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
# smallest go-fuse server, the smallest libfuse one, our fusefs layer and
# go-fuse's raw API with fusefs's options, each serving a file of zeros,
# under fio's random 4 KiB reads.
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

clean:
	rm -rf bin dist
