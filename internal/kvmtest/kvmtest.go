package kvmtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/kvm"
	"github.com/ptvmm/ptvmm/vmm/memory"
)

// DefaultRAM is the guest RAM size when Config.RAM is zero.
const DefaultRAM = 4 << 20

// Config describes a test guest.
type Config struct {
	RAM     uint64 // bytes at GPA 0; DefaultRAM if zero
	IRQChip bool   // in-kernel PIC, IOAPIC and LAPIC (needed for irqfd and MSI)
	Code    []byte
	Micro   boot.MicroOptions
	// Regs, if set, adjusts the initial registers (e.g. pass a count in RCX).
	Regs func(*kvm.Regs)
}

// Guest is one running-or-runnable micro guest.
type Guest struct {
	VM      *kvm.VM
	CPU     *kvm.VCPU
	Mem     *memory.Memory
	PIO     *bus.Bus
	MMIO    *bus.Bus
	Routing *kvm.GSIRouting // nil without IRQChip

	// Exits to Go by kind, counted by Run (the Done/Ready reports included).
	PIOExits, MMIOExits, OtherExits atomic.Uint64
	// Ready receives once per ReadyAddr report (buffered; extra reports are dropped).
	Ready chan struct{}

	timedOut, stopped atomic.Bool
}

// Available skips tb when /dev/kvm cannot be used.
func Available(tb testing.TB) {
	tb.Helper()
	if err := kvm.Available(); err != nil {
		tb.Skipf("KVM test needs a usable /dev/kvm: %v", err)
	}
}

// New builds a guest, skipping tb when KVM is unavailable. Everything is released by
// tb.Cleanup.
func New(tb testing.TB, cfg Config) *Guest {
	tb.Helper()
	Available(tb)
	g, err := build(tb, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return g
}

func build(tb testing.TB, cfg Config) (*Guest, error) {
	if cfg.RAM == 0 {
		cfg.RAM = DefaultRAM
	}
	sys, err := kvm.Open()
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { sys.Close() })
	vm, err := sys.CreateVM()
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { vm.Close() })
	g := &Guest{VM: vm, PIO: bus.New("pio"), MMIO: bus.New("mmio"), Ready: make(chan struct{}, 1)}
	if cfg.IRQChip {
		if err := vm.CreateIRQChip(); err != nil {
			return nil, err
		}
		g.Routing = kvm.NewGSIRouting(vm, true)
	}
	g.Mem, err = memory.New([]memory.Range{{GPA: 0, Size: cfg.RAM}}, memory.Options{NoHugePages: true})
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { g.Mem.Close() })
	for _, r := range g.Mem.Regions() {
		if _, err := vm.AddMemory(r.GPA, r.Host, 0); err != nil {
			return nil, err
		}
	}
	entry, err := boot.LoadMicro(g.Mem, cfg.Code, cfg.Micro)
	if err != nil {
		return nil, err
	}
	g.CPU, err = vm.CreateVCPU(0)
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { g.CPU.Close() })
	if ids, err := sys.SupportedCPUID(); err == nil {
		if err := g.CPU.SetCPUID(ids); err != nil {
			return nil, err
		}
	}
	if err := apply(g.CPU, entry, cfg.Regs); err != nil {
		return nil, err
	}
	return g, nil
}

func seg(s boot.Segment) kvm.Segment {
	k := kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: s.Present, DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G}
	if s.Present == 0 {
		k.Unusable = 1
	}
	return k
}

// apply loads a boot.Entry into the vCPU.
func apply(c *kvm.VCPU, e *boot.Entry, adjust func(*kvm.Regs)) error {
	sr, err := c.Sregs()
	if err != nil {
		return err
	}
	sr.CS, sr.DS, sr.ES, sr.FS, sr.GS, sr.SS = seg(e.CS), seg(e.DS), seg(e.ES), seg(e.FS), seg(e.GS), seg(e.SS)
	sr.TR, sr.LDT = seg(e.TR), seg(e.LDT)
	sr.GDT = kvm.DTable{Base: e.GDTBase, Limit: e.GDTLimit}
	sr.IDT = kvm.DTable{Base: e.IDTBase, Limit: e.IDTLimit}
	sr.CR0, sr.CR3, sr.CR4, sr.EFER = e.CR0, e.CR3, e.CR4, e.EFER
	if err := c.SetSregs(sr); err != nil {
		return err
	}
	r := kvm.Regs{RIP: e.RIP, RSP: e.RSP, RSI: e.RSI, RFLAGS: e.RFLAGS}
	if adjust != nil {
		adjust(&r)
	}
	return c.SetRegs(r)
}

// Exits is the total number of exits to Go so far.
func (g *Guest) Exits() uint64 {
	return g.PIOExits.Load() + g.MMIOExits.Load() + g.OtherExits.Load()
}

// ErrTimeout is returned by Run when the guest did not report in time.
var ErrTimeout = errors.New("kvmtest: guest did not finish in time")

// ErrStopped is returned by Run after Stop.
var ErrStopped = errors.New("kvmtest: guest stopped")

// Stop makes a running (or the next) Run return ErrStopped. Safe from any goroutine.
func (g *Guest) Stop() {
	g.stopped.Store(true)
	g.CPU.SetImmediateExit(true)
	_ = g.CPU.Kick()
}

// Run runs the vCPU on the calling goroutine (locked to its thread) until the guest
// stores at micro.DoneAddr, whose 32-bit value it returns. PIO and MMIO exits go to the
// buses; micro.ReadyAddr stores signal Ready. An unexpected exit or timeout is an error.
func (g *Guest) Run(timeout time.Duration) (uint32, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	g.CPU.BindThread()
	g.timedOut.Store(false)
	g.CPU.SetImmediateExit(g.stopped.Load())
	t := time.AfterFunc(timeout, func() {
		g.timedOut.Store(true)
		g.CPU.SetImmediateExit(true)
		_ = g.CPU.Kick()
	})
	defer t.Stop()
	for {
		e, err := g.CPU.Run()
		if err != nil {
			return 0, err
		}
		switch e.Reason {
		case kvm.ExitIO:
			g.PIOExits.Add(1)
			sz := int(e.IO.Size)
			for i := 0; i+sz <= len(e.IO.Data); i += sz {
				d := e.IO.Data[i : i+sz]
				if e.IO.Write {
					g.PIO.Write(uint64(e.IO.Port), d)
				} else {
					g.PIO.Read(uint64(e.IO.Port), d)
				}
			}
		case kvm.ExitMMIO:
			g.MMIOExits.Add(1)
			if e.MMIO.Write && e.MMIO.Addr == micro.DoneAddr {
				var v [4]byte
				copy(v[:], e.MMIO.Data)
				return binary.LittleEndian.Uint32(v[:]), nil
			}
			if e.MMIO.Write && e.MMIO.Addr == micro.ReadyAddr {
				select {
				case g.Ready <- struct{}{}:
				default:
				}
				continue
			}
			if e.MMIO.Write {
				g.MMIO.Write(e.MMIO.Addr, e.MMIO.Data)
			} else {
				g.MMIO.Read(e.MMIO.Addr, e.MMIO.Data)
			}
		case kvm.ExitIntr:
			g.OtherExits.Add(1)
			if g.stopped.Load() {
				return 0, ErrStopped
			}
			if g.timedOut.Load() {
				r, _ := g.CPU.Regs()
				return 0, fmt.Errorf("%w (rip %#x)", ErrTimeout, r.RIP)
			}
		default:
			g.OtherExits.Add(1)
			r, _ := g.CPU.Regs()
			return 0, fmt.Errorf("kvmtest: unexpected exit %v at rip %#x", e, r.RIP)
		}
	}
}

// Result is what Start delivers when the guest finishes.
type Result struct {
	Value uint32
	Err   error
}

// Start runs the guest on its own goroutine (locked to an OS thread); the result
// arrives on the returned channel.
func (g *Guest) Start(timeout time.Duration) <-chan Result {
	ch := make(chan Result, 1)
	go func() {
		v, err := g.Run(timeout)
		ch <- Result{v, err}
	}()
	return ch
}

// Uint64 reads a qword of guest memory (a counter the guest updates; an aligned
// qword load is single-copy atomic on x86).
func (g *Guest) Uint64(gpa uint64) uint64 {
	v, err := g.Mem.Read64(gpa)
	if err != nil {
		panic(err) // test addresses are constants inside RAM
	}
	return v
}
