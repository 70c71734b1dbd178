package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/i8042"
	"github.com/ptvmm/ptvmm/vmm/kvm"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
	"github.com/ptvmm/ptvmm/vmm/rtc"
	"github.com/ptvmm/ptvmm/vmm/uart"
)

// VM is a machine built by New.
type VM struct {
	cfg   Config
	log   *slog.Logger
	sys   *kvm.System
	kvm   *kvm.VM
	mem   *memory.Memory
	vcpus []*kvm.VCPU
	pio   *bus.Bus
	mmio  *bus.Bus
	pci   *pci.Root
	uart  *uart.UART

	timings Timings

	ran        atomic.Bool
	stopping   atomic.Bool
	resetAsked atomic.Bool
	endOnce    sync.Once
	endErr     error // first reason to end; written once under endOnce
	firstEntry sync.Once
	firstExit  sync.Once
	closers    []func() error // OnClose hooks, run in reverse order by Close
	unclaimed  sync.Map       // unclaimedKey -> struct{}: logged once each
	unclaimedN atomic.Int32
}

// Timings are the durations from Config.Start to milestones of New and Run.
type Timings struct {
	KVMOpen, MemoryMapped, GuestLoaded, VCPUsCreated time.Duration
	// FirstEntry is when the boot vCPU first entered KVM_RUN: the guest's first
	// instruction follows within microseconds.
	FirstEntry time.Duration
	// FirstExit is when the boot vCPU first came back from KVM_RUN.
	FirstExit time.Duration
}

// New builds the VM: KVM VM with irqchip and PIT, RAM, the guest loaded, vCPUs with
// CPUID and boot registers, and the platform devices.
func New(c Config) (*VM, error) {
	cfg, err := c.withDefaults()
	if err != nil {
		return nil, err
	}
	v := &VM{cfg: cfg, log: cfg.Log}
	ok := false
	defer func() {
		if !ok {
			v.Close()
		}
	}()
	if err := v.openKVM(); err != nil {
		return nil, err
	}
	v.timings.KVMOpen = time.Since(cfg.Start)

	v.mem, err = memory.New(boot.RAMRanges(cfg.MemSize), cfg.Memory)
	if err != nil {
		return nil, fmt.Errorf("vmm: guest RAM of %d MiB: %w", cfg.MemSize>>20, err)
	}
	for _, r := range v.mem.Regions() {
		if _, err := v.kvm.AddMemory(r.GPA, r.Host, 0); err != nil {
			return nil, fmt.Errorf("vmm: %w", err)
		}
	}
	v.timings.MemoryMapped = time.Since(cfg.Start)

	entry, err := v.load()
	if err != nil {
		return nil, err
	}
	v.timings.GuestLoaded = time.Since(cfg.Start)

	if err := v.createVCPUs(entry); err != nil {
		return nil, err
	}
	v.timings.VCPUsCreated = time.Since(cfg.Start)

	if err := v.addDevices(); err != nil {
		return nil, err
	}
	v.log.Debug("vm built", "cpus", cfg.CPUs, "mem_mib", cfg.MemSize>>20,
		"kvm_open", v.timings.KVMOpen, "memory", v.timings.MemoryMapped,
		"loaded", v.timings.GuestLoaded, "vcpus", v.timings.VCPUsCreated)
	ok = true
	return v, nil
}

// CheckHost reports whether this host can run a Linux guest: ErrNoKVM (wrapped)
// without a usable /dev/kvm, ErrNoHardwareVirt (wrapped) when KVM lacks VT-x/AMD-V,
// unless force.
func CheckHost(force bool) error {
	if err := kvm.Available(); err != nil {
		return fmt.Errorf("vmm: %w: %w", ErrNoKVM, err)
	}
	if force {
		return nil
	}
	hw, err := HardwareVirt()
	if err != nil {
		return err
	}
	if !hw {
		return fmt.Errorf("vmm: %w", ErrNoHardwareVirt)
	}
	return nil
}

func (v *VM) openKVM() error {
	if err := CheckHost(v.cfg.Force || v.cfg.Micro != nil); err != nil {
		return err
	}
	var err error
	if v.sys, err = kvm.Open(); err != nil {
		return fmt.Errorf("vmm: %w: %w", ErrNoKVM, err)
	}
	for _, c := range []struct {
		cap  int
		name string
	}{{kvm.CapIRQChip, "in-kernel irqchip"}, {kvm.CapUserMemory, "user memory"}, {kvm.CapPIT2, "in-kernel PIT"}, {kvm.CapImmediateExit, "immediate exit"}} {
		if n, err := v.sys.CheckExtension(c.cap); err != nil || n == 0 {
			return fmt.Errorf("vmm: KVM lacks %s (capability %d)", c.name, c.cap)
		}
	}
	if v.kvm, err = v.sys.CreateVM(); err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	if err := v.kvm.SetTSSAddr(tssAddr); err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	if err := v.kvm.SetIdentityMapAddr(identAddr); err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	// The irqchip and PIT must exist before the vCPUs so each gets a local APIC.
	if err := v.kvm.CreateIRQChip(); err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	if err := v.kvm.CreatePIT2(kvm.PITSpeakerDummy); err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	return nil
}

func (v *VM) load() (*boot.Entry, error) {
	if m := v.cfg.Micro; m != nil {
		e, err := boot.LoadMicro(v.mem, m.Code, m.Options)
		if err != nil {
			return nil, fmt.Errorf("vmm: %w", err)
		}
		return e, nil
	}
	kernel, initrd := v.cfg.KernelImage, v.cfg.InitrdImage
	var err error
	if kernel == nil {
		if kernel, err = os.ReadFile(v.cfg.Kernel); err != nil {
			return nil, fmt.Errorf("vmm: read kernel: %w", err)
		}
	}
	if initrd == nil && v.cfg.Initrd != "" {
		if initrd, err = os.ReadFile(v.cfg.Initrd); err != nil {
			return nil, fmt.Errorf("vmm: read initrd: %w", err)
		}
	}
	e, err := boot.LoadLinux(v.mem, boot.LinuxConfig{
		Kernel: kernel, Initrd: initrd, Cmdline: v.cfg.Cmdline, CPUs: v.cfg.CPUs, RAMSize: v.cfg.MemSize,
	})
	if err != nil {
		return nil, fmt.Errorf("vmm: load kernel: %w", err)
	}
	return e, nil
}

func (v *VM) createVCPUs(entry *boot.Entry) error {
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	for id := 0; id < v.cfg.CPUs; id++ {
		c, err := v.kvm.CreateVCPU(id)
		if err != nil {
			return fmt.Errorf("vmm: %w", err)
		}
		v.vcpus = append(v.vcpus, c)
		if err := c.SetCPUID(vcpuCPUID(supported, id)); err != nil {
			return fmt.Errorf("vmm: %w", err)
		}
		if id != 0 {
			continue // application processors wait for INIT/SIPI in the in-kernel LAPIC
		}
		sr, err := c.Sregs()
		if err != nil {
			return fmt.Errorf("vmm: %w", err)
		}
		regs := applyEntry(entry, &sr)
		if err := c.SetSregs(sr); err != nil {
			return fmt.Errorf("vmm: boot vCPU: %w", err)
		}
		if err := c.SetRegs(regs); err != nil {
			return fmt.Errorf("vmm: boot vCPU: %w", err)
		}
	}
	return nil
}

func (v *VM) addDevices() error {
	v.pio, v.mmio = bus.New("pio"), bus.New("mmio")
	v.uart = uart.New(v.cfg.Console, func(level bool) {
		if err := v.kvm.IRQLine(irqCOM1, level); err != nil {
			v.log.Warn("uart interrupt", "err", err)
		}
	})
	reserved := append([]memory.Range(nil), boot.RAMRanges(v.cfg.MemSize)...)
	root, err := pci.NewRoot(pci.Config{PIO: v.pio, MMIO: v.mmio, Mapper: memMapper{v.kvm}, Reserved: reserved})
	if err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	v.pci = root
	devs := []struct {
		base, size uint64
		dev        bus.Device
		name       string
	}{
		{portCOM1, uart.Size, v.uart, "uart"},
		{i8042.DataPort, i8042.Size, i8042.New(v.guestReset), "i8042"},
		{rtc.Base, rtc.Size, rtc.New(nil), "cmos"},
		{portPOST, 1, sink{}, "post"},
	}
	for _, d := range devs {
		if err := v.pio.Register(d.base, d.size, d.dev); err != nil {
			return fmt.Errorf("vmm: %s: %w", d.name, err)
		}
	}
	return nil
}

// memMapper installs host-backed PCI BARs as KVM memory slots.
type memMapper struct{ vm *kvm.VM }

func (m memMapper) MapMemory(gpa uint64, host []byte) (int, error) {
	s, err := m.vm.AddMemory(gpa, host, 0)
	return int(s), err
}

func (m memMapper) UnmapMemory(handle int) error {
	if handle < 0 {
		return errors.New("vmm: negative memory handle")
	}
	return m.vm.DeleteMemory(uint32(handle))
}

// KVM is the KVM VM, for ioeventfds, irqfds, GSI routes and memory slots.
func (v *VM) KVM() *kvm.VM { return v.kvm }

// Memory is guest RAM.
func (v *VM) Memory() *memory.Memory { return v.mem }

// PIO and MMIO are the buses devices register on.
func (v *VM) PIO() *bus.Bus  { return v.pio }
func (v *VM) MMIO() *bus.Bus { return v.mmio }

// PCI is bus 0, where PCI devices are added.
func (v *VM) PCI() *pci.Root { return v.pci }

// Timings reports the milestones reached so far (safe after Run returned).
func (v *VM) Timings() Timings { return v.timings }

// OnClose registers f to run when the VM is closed, before the vCPUs, the KVM VM and
// guest RAM go away (hooks run in reverse order of registration). Devices use it to
// deassign ioeventfds and irqfds while the VM fd is still open. Call it before Run,
// from the goroutine that calls New and Close.
func (v *VM) OnClose(f func() error) { v.closers = append(v.closers, f) }

// Close releases the vCPUs, the KVM VM and guest RAM. Call it after Run returned (or
// instead of Run).
func (v *VM) Close() error {
	// A Stop racing with Close either finishes first or finds the VM already ended.
	v.endOnce.Do(func() { v.stopping.Store(true) })
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	for i := len(v.closers) - 1; i >= 0; i-- {
		keep(v.closers[i]())
	}
	v.closers = nil
	if v.uart != nil {
		v.uart.Close()
	}
	for _, c := range v.vcpus {
		keep(c.Close())
	}
	v.vcpus = nil
	if v.kvm != nil {
		keep(v.kvm.Close())
		v.kvm = nil
	}
	if v.sys != nil {
		keep(v.sys.Close())
		v.sys = nil
	}
	if v.mem != nil {
		keep(v.mem.Close())
		v.mem = nil
	}
	return first
}
