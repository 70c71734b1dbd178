package vmm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// HardwareVirt reports whether the host CPU has VT-x or AMD-V, from /proc/cpuinfo.
func HardwareVirt() (bool, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return false, fmt.Errorf("vmm: %w", err)
	}
	defer f.Close()
	return cpuinfoHasVirt(f)
}

// cpuinfoHasVirt looks for vmx or svm in the flags of the first CPU listed.
func cpuinfoHasVirt(r io.Reader) (bool, error) { return cpuinfoHasFlag(r, "vmx", "svm") }

// cpuinfoHasFlag reports whether the first CPU listed has any of flags.
func cpuinfoHasFlag(r io.Reader, flags ...string) (bool, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, f := range strings.Fields(val) {
			if slices.Contains(flags, f) {
				return true, nil
			}
		}
		return false, nil
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("vmm: read cpuinfo: %w", err)
	}
	return false, nil
}
