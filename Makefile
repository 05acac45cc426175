# qcowmount: build, test, demo, install, bench.
GO      ?= go
PREFIX  ?= /usr/local
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

# Debian packages the tests need: QEMU as the oracle, FUSE, tools to make
# and read guest disks (file systems, LVM, fuse2fs for the rootless flow),
# python3 for C zlib as the deflate decoder's oracle, GNU time for peak
# memory, nginx to serve remote images, b3sum to check hash's BLAKE3,
# cryptsetup to read LUKS headers beside ours.
TEST_PACKAGES := qemu-utils fuse3 e2fsprogs fdisk dosfstools mtools util-linux fio python3 time \
	xfsprogs btrfs-progs ntfs-3g lvm2 fuse2fs nginx-light b3sum cryptsetup-bin
# ... and the peers the benchmark measures us against.
BENCH_PACKAGES := qemu-system-common libqcow-utils

.PHONY: all build man test deps vet lint unit integration fuzz fuzz-smoke demo install bench clean

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/qcowmount ./cmd/qcowmount

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

test: deps build lint
	$(GO) test -race -count=1 -timeout 20m ./...
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
	$(GO) test -run '^$$' -bench . -benchmem ./qcow2 ./qcow2/encryption
	$(GO) run ./integration/bench -out integration/bench/RESULTS.md $(BENCH_ARGS)

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
	rm -rf bin
