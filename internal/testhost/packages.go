package testhost

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

// privilegedRE matches test source that needs /dev/kvm or creates TAP
// interfaces (root): the micro-guest helpers, KVM's own availability checks,
// and the TAP backend's. Such tests skip on a machine without KVM, so they
// must run again where KVM works (directly, or in the test host as root).
var privilegedRE = regexp.MustCompile(`kvmtest|/dev/kvm|\bkvm\.(?:Available|Open)\(|(?:^|[^.\w])Available\(\)|CanCreate\(`)

// NeedsKVM reports whether p's tests need KVM (or root for TAP devices),
// by reading its test files.
func NeedsKVM(p Package) (bool, error) {
	for _, f := range p.TestFiles {
		b, err := os.ReadFile(filepath.Join(p.Dir, f))
		if err != nil {
			return false, fmt.Errorf("testhost: %w", err)
		}
		if privilegedRE.Match(b) {
			return true, nil
		}
	}
	return false, nil
}
