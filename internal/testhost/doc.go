// Package testhost runs ptvmm's Linux-guest end-to-end tests.
//
// Where the host has hardware virtualization (vmx/svm and a usable /dev/kvm)
// the tests run directly. Elsewhere they run inside the "test host": a QEMU
// TCG machine with -cpu max (which emulates SVM) booting Debian's kernel,
// whose kvm-amd gives the tests a hardware-style /dev/kvm. The guest agent is
// its PID 1; it runs a `go test -c` binary packed into the test host's
// initramfs and the test output comes back on the serial console, where Boot
// parses it.
//
// The package also finds the kernel cache that `make kernel` fills
// (.cache/kernel under the module root, or $PTVMM_KERNEL_DIR) and the assets
// directory the e2e tests read ($PTVMM_E2E_DIR, or /testhost inside the test
// host).
package testhost
