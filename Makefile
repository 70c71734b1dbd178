# ptvmm top-level targets. `make test` is what CI runs (after `make kernel`).
GO ?= go
# Hard limit for one end-to-end run (qemu is killed after it).
E2E_TIMEOUT ?= 20m
# In the QEMU TCG test host, tests that did not pass run again (up to this many
# times) in a fresh test host and are reported FLAKY if they pass then: nested
# SVM under TCG occasionally crashes a guest or the test host's own kernel, once
# twice in one run (see README). 0 shows the raw result.
E2E_RETRIES ?= 2
E2E_FLAGS ?=

.PHONY: all build vmrun kernel test unit e2e e2e-kvm demo bench vet fmt check clean

all: build

build: vmrun
	$(GO) build ./...

# A static bin/vmrun: it packs itself as the guest's /init when no -initrd is
# given, so it runs without the Go toolchain. (A plain build links it
# dynamically, since net and os/user use cgo when a C compiler is present.)
vmrun:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/vmrun ./cmd/vmrun

# Debian's cloud kernel and the modules the tests load, into .cache/kernel;
# then our guest module (guest/kmod), built against the kernel's headers.
kernel:
	scripts/kernel.sh
	scripts/kmod.sh

# Unit tests; the KVM tests among them run when /dev/kvm is usable.
unit:
	$(GO) test ./...

# Linux-guest end-to-end tests: directly on a VT-x/AMD-V host, else in the
# QEMU TCG test host.
e2e: kernel
	$(GO) run ./e2e/cmd/testhost -timeout $(E2E_TIMEOUT) -retries $(E2E_RETRIES) $(E2E_FLAGS)

test: unit e2e

# The KVM-using unit tests again, on a hardware-style KVM: on a VT-x/AMD-V
# host directly, else in the test host (nested SVM under TCG), one boot per
# package. Not part of `make test`.
KVM_PKGS ?= ./vmm/...,./backends/tap,./devices/testdev
e2e-kvm: kernel
	$(GO) run ./e2e/cmd/testhost -pkgs $(KVM_PKGS) -timeout $(E2E_TIMEOUT) $(E2E_FLAGS)

# Boot the Debian guest with vmrun and show its console.
demo: kernel
	$(GO) run ./e2e/cmd/testhost -demo -timeout $(E2E_TIMEOUT) $(E2E_FLAGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

vet:
	$(GO) vet ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

check: fmt vet

clean:
	rm -rf bin
