package bench

import (
	"fmt"
	"os"

	"github.com/ptvmm/ptvmm/internal/kcache"
	"github.com/ptvmm/ptvmm/vmm"
	"github.com/ptvmm/ptvmm/vmm/kvm"
)

// hostCaps is what this machine offers the tiers.
type hostCaps struct {
	kvm     error  // nil: /dev/kvm is usable
	hwvirt  bool   // the CPU has VT-x or AMD-V: a Linux guest boots at native speed
	kernel  string // the kernel cache directory (kcache), "" when there is none
	kcError error  // why there is none
}

// probeHost looks at /dev/kvm, the CPU flags and the kernel cache (dir, or where
// kcache looks when dir is empty).
func probeHost(dir string) hostCaps {
	c := hostCaps{kvm: kvm.Available()}
	if c.kvm == nil {
		c.hwvirt = vmm.CheckHost(false) == nil
	}
	if dir == "" {
		dir, c.kcError = kcache.Dir()
	}
	if c.kcError == nil {
		if _, err := kcache.Load(dir); err != nil {
			c.kcError = err
		} else {
			c.kernel = dir
		}
	}
	return c
}

// autoTier is the most faithful tier c allows: linux where a Linux guest boots
// (hardware virtualization and a kernel), micro on any /dev/kvm, else process.
func autoTier(c hostCaps) Tier {
	switch {
	case c.kvm == nil && c.hwvirt && c.kernel != "":
		return TierLinux
	case c.kvm == nil:
		return TierMicro
	}
	return TierProcess
}

// tierStatus says whether tier t can run on c, and if not, why and what to do.
func tierStatus(t Tier, c hostCaps) (ok bool, why string) {
	switch t {
	case TierProcess:
		return true, ""
	case TierMicro:
		if c.kvm != nil {
			if _, err := os.Stat(kvm.DevicePath); err != nil {
				return false, "tier micro: /dev/kvm missing: run on a host with KVM, or use -tier process (no KVM needed)"
			}
			return false, fmt.Sprintf("tier micro: /dev/kvm is not usable (%v): give this user access to it, or use -tier process (no KVM needed)", c.kvm)
		}
		return true, ""
	case TierLinux:
		switch {
		case c.kvm != nil:
			if _, err := os.Stat(kvm.DevicePath); err != nil {
				return false, "tier linux: /dev/kvm missing: run on a host with VT-x/AMD-V, or `make bench-linux` (runs it inside the QEMU test host); use -tier process here"
			}
			return false, fmt.Sprintf("tier linux: /dev/kvm is not usable (%v): give this user access to it; use -tier process here", c.kvm)
		case !c.hwvirt:
			return false, "tier linux: KVM here has no VT-x/AMD-V, so a Linux guest would crawl: run `make bench-linux` (runs it inside the QEMU test host, where only the ratios mean anything), or use -tier micro (this /dev/kvm runs micro guests) or -tier process"
		case c.kernel == "":
			return false, fmt.Sprintf("tier linux: no guest kernel (%v): run `make kernel` in the ptvmm checkout; or use -tier micro", c.kcError)
		}
		return true, ""
	}
	return false, fmt.Sprintf("tier %q: unknown", t)
}
