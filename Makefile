# vmm: a KVM virtual machine monitor in Go.
#
#   make run    build vmm and the default guest, boot it to a shell
#   make test   build everything and run every test (what CI runs)
#   make fuzz   run every fuzz target for FUZZTIME (30s) each
#   make install  vmm, containerd-shim-vmm-v2 and the default guest under PREFIX
#
# The default guest (kernel, initramfs, test guest) goes to build/guest; the
# kernel build is cached in $(VMM_CACHE) so it is built once per machine.

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
GUEST_DIR ?= build/guest
export VMM_CACHE ?= $(HOME)/.cache/vmm
MEM ?= 128M
TEST_TIMEOUT ?= 60m
# staticcheck, pinned; `go run` fetches it through the module proxy and
# caches the build.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all vmm shim install deps guest kernel initramfs testguest testimage run test check unit integration fuzz bench clean

all: vmm shim

vmm:
	$(GO) build -o bin/vmm ./cmd/vmm

# The containerd runtime shim (runtime io.containerd.vmm.v2).
shim:
	$(GO) build -o bin/containerd-shim-vmm-v2 ./cmd/containerd-shim-vmm-v2

# vmm and the shim in $(PREFIX)/bin, the default guest (if built) in
# $(PREFIX)/share/vmm, where the shim looks for them without a config file.
PREFIX ?= /usr/local
DESTDIR ?=
# jailer links to vmm: vmm is also Firecracker's jailer when started under
# that name (launchers such as the Firecracker Go SDK exec a binary called
# jailer).
install: vmm shim
	install -D -m 0755 bin/vmm $(DESTDIR)$(PREFIX)/bin/vmm
	install -D -m 0755 bin/containerd-shim-vmm-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-vmm-v2
	ln -sf vmm $(DESTDIR)$(PREFIX)/bin/jailer
	@for f in vmlinux initramfs.cpio; do \
		if [ -f $(GUEST_DIR)/$$f ]; then install -D -m 0644 $(GUEST_DIR)/$$f $(DESTDIR)$(PREFIX)/share/vmm/$$f; \
		else echo "install: $(GUEST_DIR)/$$f not built (make guest); the shim needs it" >&2; fi; \
	done

# Debian packages the build and the tests need (installed only if missing):
# without them whole suites would skip (or, under VMM_TEST_STRICT=1, fail).
deps:
	@scripts/deps.sh

guest: kernel initramfs testguest testimage

kernel: deps
	guest/kernel/build.sh $(GUEST_DIR)

initramfs:
	$(GO) run ./cmd/mkinitramfs -o $(GUEST_DIR)/initramfs.cpio

testguest: deps
	guest/testguest/build.sh $(GUEST_DIR)

# Busybox container image for the agent and container tests.
testimage: deps
	$(GO) run ./guest/testimage/mktestimage -o $(GUEST_DIR)/test.ext4

run: vmm guest
	./bin/vmm --mem $(MEM)

# Formatting and static checks.
check:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# With VMM_TEST_STRICT=1 (.ci/run sets it where /dev/kvm is usable) a test
# that can't run on this host fails instead of skipping; without it, a host
# without /dev/kvm gets a warning that the VM tests were skipped.
test: deps vmm shim guest check
	@[ -e /dev/kvm ] || [ "$$VMM_TEST_STRICT" = 1 ] || echo '## WARNING: /dev/kvm is absent on this host: every VM test will be SKIPPED ##' >&2
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...
	@[ -e /dev/kvm ] || [ "$$VMM_TEST_STRICT" = 1 ] || echo '## WARNING: /dev/kvm is absent on this host: the VM tests were SKIPPED, not passed ##' >&2

unit: check
	$(GO) test -race -short ./...

integration: vmm guest
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./integration/

# Every Fuzz target in the tree, one after another, FUZZTIME each, with
# the executions of each at the end (FUZZ=REGEXP picks targets by name).
# `make test` runs each target on its seed corpus only.
FUZZTIME ?= 30s
FUZZ ?= .
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) scripts/fuzz.sh '$(FUZZ)'

# vmm vs QEMU side by side (startup, API, boot, containers, iperf3, fio,
# memory, scaling): raw results in benchmarks/results/<date>/, the report in
# benchmarks/RESULTS.md. QEMU, iperf3 and fio are installed if missing; if
# that fails, their columns or suites are skipped. On kvm-pvm hosts every
# Linux boot takes minutes, so boot-linux boots once per VMM there and the
# run suite gets one cold start and one plain boot (their own defaults are
# 3): the Linux suites (boot, containers, iperf3/fio) then take about 35
# minutes on a quiet machine rather than 60.
BENCH_FLAGS ?= $(if $(wildcard /sys/module/kvm_pvm),-run-reps 1 -linux-reps 1)
bench: vmm guest
	@benchmarks/install-tools.sh
	$(GO) run ./benchmarks -guest-dir $(GUEST_DIR) $(BENCH_FLAGS)

clean:
	rm -rf bin build
