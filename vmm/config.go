package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/memory"
)

// Config describes a VM.
type Config struct {
	// Kernel and Initrd are paths of a bzImage and an initramfs, read by New.
	// KernelImage and InitrdImage, when set, are used instead.
	Kernel, Initrd           string
	KernelImage, InitrdImage []byte
	// Cmdline is the kernel command line.
	Cmdline string

	// Micro, instead of a kernel, runs a small long-mode test guest (boot.LoadMicro).
	Micro *Micro

	// MemSize is guest RAM in bytes (default DefaultMemSize, or MicroMemSize for a
	// micro guest).
	MemSize uint64
	// Memory selects how RAM is backed (memfd, huge pages).
	Memory memory.Options
	// CPUs is the number of vCPUs (default 1).
	CPUs int

	// Console receives what the guest writes to the UART (nil: discarded). Input, if
	// set, is read by a goroutine of Run and fed to the UART; a Read blocked when Run
	// returns ends at the reader's next byte or EOF.
	Console io.Writer
	Input   io.Reader

	// Network holds the switches and pipes that NICs with a Port attach to; VMs on
	// one Network are connected. Nil: DefaultNetwork, shared by every VM of the
	// process that names none.
	Network *Network

	// Force runs a Linux guest even where KVM lacks hardware virtualization.
	Force bool

	// Log receives debug timings and unusual events (nil: discarded).
	Log *slog.Logger
	// Start is when the user asked for the VM (for "time to first guest
	// instruction"); zero means when New was called.
	Start time.Time
}

// Micro is a long-mode test guest: code loaded at boot.MicroCodeAddr and entered at
// CPL3 with IOPL 3 (see boot.LoadMicro).
type Micro struct {
	Code    []byte
	Options boot.MicroOptions
}

// Defaults.
const (
	DefaultMemSize = 512 << 20
	MicroMemSize   = 4 << 20
	// MinLinuxMemSize is the least RAM New accepts for a Linux guest.
	MinLinuxMemSize = 32 << 20
)

// Errors New returns (wrapped) for an unusable host.
var (
	// ErrNoKVM: /dev/kvm is missing or not accessible.
	ErrNoKVM = errors.New("KVM is not available")
	// ErrNoHardwareVirt: KVM works but the CPU has neither VT-x (vmx) nor AMD-V (svm),
	// so a Linux guest would be emulated too slowly to boot.
	ErrNoHardwareVirt = errors.New("KVM has no hardware virtualization (no vmx or svm CPU flag)")
)

func (c *Config) withDefaults() (Config, error) {
	cfg := *c
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.CPUs < 1 || cfg.CPUs > boot.MaxCPUs {
		return cfg, fmt.Errorf("vmm: %d vCPUs; use 1 to %d", cfg.CPUs, boot.MaxCPUs)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Start.IsZero() {
		cfg.Start = time.Now()
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	if cfg.Micro != nil {
		if cfg.MemSize == 0 {
			cfg.MemSize = MicroMemSize
		}
		if cfg.MemSize < boot.MicroMinRAM {
			return cfg, fmt.Errorf("vmm: micro guest needs at least %d bytes of RAM", boot.MicroMinRAM)
		}
		if cfg.Kernel != "" || cfg.KernelImage != nil {
			return cfg, errors.New("vmm: set either a kernel or a micro guest, not both")
		}
	} else {
		if cfg.Kernel == "" && cfg.KernelImage == nil {
			return cfg, errors.New("vmm: no kernel given")
		}
		if cfg.MemSize == 0 {
			cfg.MemSize = DefaultMemSize
		}
		if cfg.MemSize < MinLinuxMemSize {
			return cfg, fmt.Errorf("vmm: %d MiB of RAM is too little for Linux; use at least %d MiB", cfg.MemSize>>20, MinLinuxMemSize>>20)
		}
	}
	pg := uint64(4096)
	if cfg.MemSize%pg != 0 {
		return cfg, fmt.Errorf("vmm: memory size %d is not a multiple of 4 KiB", cfg.MemSize)
	}
	return cfg, nil
}
