package testhost

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// CmdlineMarker is on the test host's kernel command line.
const CmdlineMarker = "ptvmm.testhost=1"

// TestHostAssets is where the assets directory is inside the test host.
const TestHostAssets = "/testhost"

// Names inside an assets directory (see Prepare).
const (
	AssetKernelDir = "kernel"     // the kernel cache layout: vmlinuz, VERSION, modules/, *.order
	AssetGuestInit = "guest.cpio" // initramfs for the inner guest: agent as /init
	AssetVMRun     = "vmrun"      // static cmd/vmrun, when the repo has it
)

// RepoRoot walks up from the working directory to the directory holding go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testhost: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testhost: no go.mod above the working directory; run from inside the repository")
		}
		dir = parent
	}
}

// KernelDir is the kernel cache: $PTVMM_KERNEL_DIR, or .cache/kernel under
// the module root.
func KernelDir() (string, error) {
	if d := os.Getenv("PTVMM_KERNEL_DIR"); d != "" {
		return d, nil
	}
	if InTestHost() {
		return filepath.Join(TestHostAssets, AssetKernelDir), nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "kernel"), nil
}

// AssetsDir is the directory Prepare filled for the e2e tests, or "" when
// there is none ($PTVMM_E2E_DIR, or TestHostAssets inside the test host).
func AssetsDir() string {
	if d := os.Getenv("PTVMM_E2E_DIR"); d != "" {
		return d
	}
	if InTestHost() {
		return TestHostAssets
	}
	return ""
}

// InTestHost reports whether this process runs inside the QEMU test host.
func InTestHost() bool {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(b)) {
		if f == CmdlineMarker {
			return true
		}
	}
	return false
}

// HardwareKVM reports whether /dev/kvm is usable and backed by VT-x or
// AMD-V; when not, why says what is missing.
func HardwareKVM() (ok bool, why string) {
	if !cpuHasVirt() {
		return false, "CPU has no vmx/svm flag (a software KVM cannot boot Linux)"
	}
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Sprintf("/dev/kvm: %v", err)
	}
	unix.Close(fd)
	return true, ""
}

func cpuHasVirt() bool {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, "flags") {
			continue
		}
		for _, fl := range strings.Fields(line) {
			if fl == "vmx" || fl == "svm" {
				return true
			}
		}
		return false
	}
	return false
}
