package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/memory"
)

// Configuration mechanism #1 ports.
const (
	PortConfigAddress = 0xcf8
	PortConfigData    = 0xcfc
)

// Default BAR allocation windows.
const (
	DefaultIOBase  = 0xc000
	DefaultIOEnd   = 0x10000
	DefaultMemBase = 0xc000_0000 // PCI hole start
	DefaultMemEnd  = 0xfec0_0000 // IOAPIC
)

// Host bridge identity (00:00.0). The IDs are Intel's 440FX host bridge, which every
// guest OS knows needs no driver.
const (
	BridgeVendorID = 0x8086
	BridgeDeviceID = 0x1237
)

// MemoryMapper installs host mappings as guest memory (a KVM memslot).
type MemoryMapper interface {
	// MapMemory makes host visible to the guest at gpa and returns a handle.
	MapMemory(gpa uint64, host []byte) (handle int, err error)
	// UnmapMemory removes a mapping MapMemory made.
	UnmapMemory(handle int) error
}

// Config wires a Root into the machine.
type Config struct {
	PIO, MMIO *bus.Bus
	// Mapper installs host-backed BARs; nil forbids them.
	Mapper MemoryMapper
	// Reserved are guest-physical ranges no memory BAR may cover: RAM, and anything
	// else that is not on the MMIO bus (e.g. other memslots).
	Reserved []memory.Range
	// Allocation windows; zero values take the defaults. Mem64Base/End, if set, is where
	// 64-bit BARs are placed (above RAM); otherwise they go below 4 GiB too.
	IOBase, IOEnd, MemBase, MemEnd, Mem64Base, Mem64End uint64
}

// ErrReserved is returned (wrapped) when a BAR would cover a reserved range such as RAM.
var ErrReserved = errors.New("BAR overlaps guest RAM or a reserved range")

// Root is PCI bus 0 with its host bridge, reached through ports 0xCF8/0xCFC.
//
// Concurrency: all methods may be called from any goroutine.
type Root struct {
	cfg   Config
	mu    sync.Mutex // guards addr, slots, allocation cursors
	addr  uint32     // config address register
	slots [32]*Function

	ioNext, memNext, mem64Next uint64
}

// NewRoot creates bus 0, puts the host bridge at 00:00.0 and claims ports
// 0xCF8-0xCFF on the PIO bus.
func NewRoot(cfg Config) (*Root, error) {
	if cfg.PIO == nil || cfg.MMIO == nil {
		return nil, errors.New("pci: root needs both PIO and MMIO buses")
	}
	if cfg.IOEnd == 0 {
		cfg.IOBase, cfg.IOEnd = DefaultIOBase, DefaultIOEnd
	}
	if cfg.MemEnd == 0 {
		cfg.MemBase, cfg.MemEnd = DefaultMemBase, DefaultMemEnd
	}
	r := &Root{cfg: cfg, ioNext: cfg.IOBase, memNext: cfg.MemBase, mem64Next: cfg.Mem64Base}
	if err := cfg.PIO.Register(PortConfigAddress, 4, addrPort{r}); err != nil {
		return nil, fmt.Errorf("pci: claim config address port: %w", err)
	}
	if err := cfg.PIO.Register(PortConfigData, 4, dataPort{r}); err != nil {
		_ = cfg.PIO.Unregister(PortConfigAddress)
		return nil, fmt.Errorf("pci: claim config data port: %w", err)
	}
	r.slots[0] = newFunction(r, 0, &Spec{VendorID: BridgeVendorID, DeviceID: BridgeDeviceID, Class: 0x060000})
	return r, nil
}

// FreeSlot returns the first free slot (1..31), e.g. to create a device's INTx line for
// GSI IntxGSI(slot) before calling Add with that slot.
func (r *Root) FreeSlot() (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 1; i < 32; i++ {
		if r.slots[i] == nil {
			return i, nil
		}
	}
	return 0, errors.New("pci: all 31 slots are taken")
}

// Add places a device in slot (1..31; -1 picks the first free one), allocates its BARs
// in the configured windows and enables decoding as firmware would. A device with
// Spec.Intx must be wired to IntxGSI(slot), so pass an explicit slot (see FreeSlot).
func (r *Root) Add(slot int, s Spec) (*Function, error) {
	if err := validateSpec(&s, r.cfg.Mapper != nil); err != nil {
		return nil, fmt.Errorf("pci: add %04x:%04x: %w", s.VendorID, s.DeviceID, err)
	}
	r.mu.Lock()
	if slot < 0 {
		for i := 1; i < 32; i++ {
			if r.slots[i] == nil {
				slot = i
				break
			}
		}
	}
	if slot < 1 || slot > 31 || r.slots[slot] != nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("pci: add %04x:%04x: slot %d is not free (1..31)", s.VendorID, s.DeviceID, slot)
	}
	f := newFunction(r, slot, &s)
	save := [3]uint64{r.ioNext, r.memNext, r.mem64Next}
	for i := range f.bars {
		b := f.bars[i].spec
		if b == nil {
			continue
		}
		a, err := r.alloc(b)
		if err != nil {
			r.ioNext, r.memNext, r.mem64Next = save[0], save[1], save[2]
			r.mu.Unlock()
			return nil, fmt.Errorf("pci: add %04x:%04x BAR%d: %w", s.VendorID, s.DeviceID, i, err)
		}
		f.bars[i].reg = a
		f.syncBARRegs(i)
	}
	r.slots[slot] = f
	r.mu.Unlock()

	f.mu.Lock()
	f.writeCommand(CmdIO | CmdMemory)
	var errs []error
	for i := range f.bars {
		if f.bars[i].refused != nil {
			errs = append(errs, fmt.Errorf("BAR%d: %w", i, f.bars[i].refused))
		}
	}
	f.mu.Unlock()
	if len(errs) > 0 {
		r.Remove(slot)
		return nil, fmt.Errorf("pci: add %04x:%04x: %w", s.VendorID, s.DeviceID, errors.Join(errs...))
	}
	return f, nil
}

// Remove unplugs the device in slot, unmapping its BARs.
func (r *Root) Remove(slot int) {
	if slot < 1 || slot > 31 {
		return
	}
	r.mu.Lock()
	f := r.slots[slot]
	r.slots[slot] = nil
	r.mu.Unlock()
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writeCommand(0)
}

// Function returns the function in slot, or nil.
func (r *Root) Function(slot int) *Function {
	if slot < 0 || slot > 31 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.slots[slot]
}

func alignUp(v, a uint64) (uint64, bool) {
	n := (v + a - 1) &^ (a - 1)
	return n, n >= v
}

func (r *Root) alloc(b *BAR) (uint64, error) {
	cursor, end := &r.memNext, r.cfg.MemEnd
	switch {
	case b.Kind == BARIO:
		cursor, end = &r.ioNext, r.cfg.IOEnd
	case b.Kind == BARMem64 && r.cfg.Mem64End != 0:
		cursor, end = &r.mem64Next, r.cfg.Mem64End
	}
	a, ok := alignUp(*cursor, b.Size)
	if !ok || a+b.Size < a || a+b.Size > end {
		return 0, fmt.Errorf("no room for %#x bytes (%s)", b.Size, b.Kind)
	}
	*cursor = a + b.Size
	return a, nil
}

func (r *Root) mapBAR(f *Function, i int, st *barState) error {
	a, size := st.reg, st.spec.Size
	if a+size < a {
		return fmt.Errorf("BAR at %#x+%#x wraps", a, size)
	}
	if st.spec.Kind == BARIO {
		if a+size > 0x10000 {
			return fmt.Errorf("I/O BAR at %#x+%#x beyond port space", a, size)
		}
		return r.cfg.PIO.Register(a, size, barDevice{f, i})
	}
	for _, rr := range r.cfg.Reserved {
		if a < rr.End() && a+size > rr.GPA {
			return fmt.Errorf("BAR at %#x+%#x: %w (%#x+%#x)", a, size, ErrReserved, rr.GPA, rr.Size)
		}
	}
	if st.spec.Host == nil {
		return r.cfg.MMIO.Register(a, size, barDevice{f, i})
	}
	if err := r.cfg.MMIO.Register(a, size, hostPlaceholder{}); err != nil {
		return err
	}
	h, err := r.cfg.Mapper.MapMemory(a, st.spec.Host)
	if err != nil {
		_ = r.cfg.MMIO.Unregister(a)
		return fmt.Errorf("map host memory at %#x: %w", a, err)
	}
	st.handle = h
	return nil
}

func (r *Root) unmapBAR(st *barState) {
	if st.spec.Kind == BARIO {
		_ = r.cfg.PIO.Unregister(st.mappedAt)
		return
	}
	if st.spec.Host != nil {
		// An unmap failure would leave guest memory where the guest no longer
		// expects it; nothing sensible remains to do but keep going.
		_ = r.cfg.Mapper.UnmapMemory(st.handle)
	}
	_ = r.cfg.MMIO.Unregister(st.mappedAt)
}

// addrPort is 0xCF8: only dword accesses reach the address register.
type addrPort struct{ r *Root }

func (p addrPort) Read(off uint64, data []byte) {
	if off != 0 || len(data) != 4 {
		fill(data, 0xff)
		return
	}
	p.r.mu.Lock()
	binary.LittleEndian.PutUint32(data, p.r.addr)
	p.r.mu.Unlock()
}

func (p addrPort) Write(off uint64, data []byte) {
	if off != 0 || len(data) != 4 {
		return
	}
	p.r.mu.Lock()
	p.r.addr = binary.LittleEndian.Uint32(data) & 0x80ff_fffc
	p.r.mu.Unlock()
}

// dataPort is 0xCFC-0xCFF: the dword selected by the address register.
type dataPort struct{ r *Root }

func (p dataPort) target(off uint64) (*Function, int) {
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	a := p.r.addr
	if a&0x8000_0000 == 0 || (a>>16)&0xff != 0 || (a>>8)&7 != 0 {
		return nil, 0 // disabled, another bus, or a function other than 0
	}
	return p.r.slots[(a>>11)&0x1f], int(a&0xfc) + int(off)
}

func (p dataPort) Read(off uint64, data []byte) {
	f, reg := p.target(off)
	if f == nil {
		fill(data, 0xff)
		return
	}
	f.ReadConfig(reg, data)
}

func (p dataPort) Write(off uint64, data []byte) {
	if f, reg := p.target(off); f != nil {
		f.WriteConfig(reg, data)
	}
}
