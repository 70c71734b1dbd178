# ptvmm top-level targets. `make test` is what CI runs (.ci/run).
GO ?= go
# Hard limit for the test host runs of one `make test` (kvm and e2e tiers;
# qemu is killed after it).
E2E_TIMEOUT ?= 20m
# In the QEMU TCG test host (kvm and e2e tiers), tests that did not pass run
# again (up to this many times) in a fresh test host and are reported FLAKY if
# they pass then: nested SVM under TCG occasionally crashes a guest or freezes
# the test host (see docs/testing.md). 0 shows the raw result.
E2E_RETRIES ?= 2
E2E_FLAGS ?=

.PHONY: all build vmrun kernel test unit race kvm e2e e2e-kvm demo bench bench-linux bench-go vet fmt tidy check clean

all: build

build: vmrun
	$(GO) build ./...

# A static bin/vmrun: it packs itself as the guest's /init when no -initrd is
# given, so it runs without the Go toolchain. (A plain build links it
# dynamically, since net and os/user use cgo when a C compiler is present.)
# It finds the kernel `make kernel` provisions through the path compiled in
# (and, moved elsewhere, beside itself or through $$PTVMM_KERNEL_DIR).
KERNEL_DIR ?= $(or $(PTVMM_KERNEL_DIR),$(CURDIR)/.cache/kernel)
vmrun:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X github.com/ptvmm/ptvmm/internal/kcache.BuiltDir=$(KERNEL_DIR)" -o bin/vmrun ./cmd/vmrun

# Debian's cloud kernel and the modules the tests load, into .cache/kernel;
# then our guest module (guest/kmod), built against the kernel's headers.
kernel:
	scripts/kernel.sh
	scripts/kmod.sh

# The kernel, the Debian packages for $(1) (demo or test: as root or in CI
# scripts/deps.sh installs what is missing, else it names them), guest/kmod.
define setup
	scripts/kernel.sh
	scripts/deps.sh $(1)
	scripts/kmod.sh
endef

# `make test` runs these tiers and prints, per tier and in total, how many
# tests and subtests passed, failed and skipped; its last line is
# "N passed, N failed, N skipped". unit: go test ./...; race: go test
# -race -short over every package but e2e; kvm: the packages whose tests
# need /dev/kvm (or a TAP), directly where /dev/kvm is usable, else in the
# QEMU TCG test host; e2e: the Linux-guest tests, directly on a VT-x/AMD-V
# host, else in the test host (one test host boot for kvm and e2e). A test
# that skips shows as skipped in its tier. See docs/testing.md.
TIERS ?= unit,race,kvm,e2e
TESTHOST = $(GO) run ./e2e/cmd/testhost -timeout $(E2E_TIMEOUT) -retries $(E2E_RETRIES)

test:
	$(call setup,test)
	$(TESTHOST) -tiers $(TIERS) $(E2E_FLAGS)

# One tier alone.
unit race:
	$(TESTHOST) -tiers $@ $(E2E_FLAGS)
kvm e2e:
	$(call setup,test)
	$(TESTHOST) -tiers $@ $(E2E_FLAGS)

# The kvm tier (was: the KVM packages in the test host, now part of make test).
e2e-kvm: kvm

# Boot the Debian guest with vmrun and show its console.
demo:
	$(call setup,demo)
	$(GO) run ./e2e/cmd/testhost -demo -timeout $(E2E_TIMEOUT) $(E2E_FLAGS)

# `vmrun bench` in the most faithful tier this machine allows (linux with VT-x/
# AMD-V and `make kernel`, micro on any other /dev/kvm, else process; the
# virtio-tap path needs root for the TAP): the table on stdout, progress on
# stderr, JSON and plot in .cache/bench. BENCH_FLAGS adds flags, e.g. -duration 5s
# or -tier process.
BENCH_FLAGS ?=
bench: vmrun
	mkdir -p .cache/bench
	bin/vmrun bench -json .cache/bench/bench.json -plot .cache/bench/bench.png $(BENCH_FLAGS)

# The linux tier (Linux guests running the guest pktgen): directly where KVM has
# VT-x/AMD-V; elsewhere inside the QEMU TCG test host, where the static vmrun
# runs `vmrun bench -tier linux` and its table comes back on the console (the
# emulated CPU is the limit there: only the ratios mean anything).
BENCH_LINUX_FLAGS ?= -duration 3s -repeat 1
bench-linux: vmrun
	$(call setup,test)
	@if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then \
		mkdir -p .cache/bench && \
		bin/vmrun bench -tier linux -json .cache/bench/linux.json -plot .cache/bench/linux.png $(BENCH_LINUX_FLAGS); \
	else \
		echo "bench-linux: no VT-x/AMD-V here: running the linux tier inside the QEMU test host"; \
		$(GO) run ./e2e/cmd/testhost -mode qemu -timeout $(E2E_TIMEOUT) \
			-cmd '/testhost/vmrun bench -tier linux $(BENCH_LINUX_FLAGS)'; \
	fi

# The Go benchmarks of every package.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

vet:
	$(GO) vet ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# go.mod and go.sum as `go mod tidy` leaves them (.ci/run checks it first).
tidy:
	@out=$$($(GO) mod tidy -diff) || { echo "go.mod is not tidy; run go mod tidy:"; echo "$$out"; exit 1; }

check: fmt vet tidy

clean:
	rm -rf bin
