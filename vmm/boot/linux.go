package boot

import (
	"errors"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

// LinuxConfig is what LoadLinux needs to boot a bzImage.
type LinuxConfig struct {
	Kernel  []byte // bzImage
	Initrd  []byte // optional initramfs
	Cmdline string
	CPUs    int    // number of vCPUs (one MADT Local APIC entry each)
	RAMSize uint64 // guest RAM laid out by RAMRanges; 0: m.Size()
}

// LoadLinux loads a bzImage for the x86 64-bit boot protocol into m and returns the
// state the boot vCPU starts in.
func LoadLinux(m *memory.Memory, cfg LinuxConfig) (*Entry, error) {
	return nil, errors.New("boot: LoadLinux not implemented yet")
}
