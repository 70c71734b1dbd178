package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

// Fixed guest-physical addresses of a LoadMicro guest (see the package doc).
const (
	MicroGDTAddr        = 0x1000
	MicroIDTAddr        = 0x2000
	MicroTSSAddr        = 0x3000
	MicroPML4Addr       = 0x4000 // PDPT at 0x5000, page directories 0x6000-0x9FFF
	MicroKernelStackTop = 0x10000
	MicroCodeAddr       = 0x10000
	MicroCodeMax        = 0x70000 // code occupies [MicroCodeAddr, MicroCodeAddr+MicroCodeMax)
	MicroStackTop       = 0x100000
	MicroDataAddr       = 0x100000
	// MicroMinRAM is the smallest first RAM range LoadMicro accepts (1 MiB of data).
	MicroMinRAM = 0x200000
	// MicroIdentityGiB is how much of the address space the micro page tables map, so
	// CPL3 code can reach RAM and the PCI hole's MMIO directly.
	MicroIdentityGiB = 4
)

// Micro GDT selectors (RPL 0; user selectors get RPL 3 when loaded). The layout suits
// SYSCALL/SYSRET with STAR[47:32] = 0x08 and STAR[63:48] = 0x10.
const (
	MicroKernelCS = 0x08
	MicroKernelDS = 0x10
	MicroUserDS   = 0x18
	MicroUserCS   = 0x20
	MicroTR       = 0x28
	microGDTSlots = 7
)

// MicroOptions configure LoadMicro.
type MicroOptions struct {
	// IF sets RFLAGS.IF at entry.
	IF bool
	// IDT maps a vector to the guest-physical address of its handler, which must lie in
	// the code blob. Handlers run at CPL0 on the kernel stack (MicroKernelStackTop, via
	// TSS.RSP0 when the interrupt comes from CPL3); CPL0 code is emulated and slow on
	// some platforms, so keep handlers to a few instructions ending in IRETQ. Gates are
	// 64-bit interrupt gates with DPL 3, so CPL3 code may also raise them with INT n.
	// Vectors without a handler are not present (a fault there ends in a triple fault,
	// which KVM reports as a shutdown). Empty: IDT limit 0.
	IDT map[uint8]uint64
	// Kernel starts the guest at CPL0 instead of CPL3.
	Kernel bool
}

// MicroDataRange is the data area of a micro guest in m: from MicroDataAddr to the end
// of the RAM region holding it. Size is 0 if m has no RAM there.
func MicroDataRange(m *memory.Memory) memory.Range {
	for _, r := range m.Regions() {
		if r.GPA <= MicroDataAddr && MicroDataAddr < r.End() {
			return memory.Range{GPA: MicroDataAddr, Size: r.End() - MicroDataAddr}
		}
	}
	return memory.Range{GPA: MicroDataAddr}
}

// LoadMicro writes a long-mode test guest into m: code is copied to MicroCodeAddr,
// page tables identity-map the first MicroIdentityGiB GiB with the user bit set, and the
// returned Entry starts at MicroCodeAddr at CPL3 (unless opt.Kernel) with IOPL 3, RSP
// at MicroStackTop and RSI = MicroDataAddr. m must hold [0, MicroMinRAM).
func LoadMicro(m *memory.Memory, code []byte, opt MicroOptions) (*Entry, error) {
	if !m.Contains(0, MicroMinRAM) {
		return nil, fmt.Errorf("boot: micro guest needs RAM at [0, %#x)", MicroMinRAM)
	}
	if len(code) > MicroCodeMax {
		return nil, fmt.Errorf("boot: micro guest code is %d bytes, at most %d fit", len(code), MicroCodeMax)
	}
	for v, h := range opt.IDT {
		if h < MicroCodeAddr || h >= MicroCodeAddr+uint64(len(code)) {
			return nil, fmt.Errorf("boot: handler for vector %d at %#x is outside the code [%#x, %#x)", v, h, MicroCodeAddr, MicroCodeAddr+len(code))
		}
	}
	// Start from clean low memory so nothing stale from a previous guest is reachable.
	if err := zeroRange(m, 0, MicroDataAddr); err != nil {
		return nil, err
	}
	if err := m.WriteAt(code, MicroCodeAddr); err != nil {
		return nil, fmt.Errorf("boot: copy micro code: %w", err)
	}
	if _, err := identityMap(m, MicroPML4Addr, MicroIdentityGiB, true); err != nil {
		return nil, err
	}
	kcs, kds := code64(MicroKernelCS, 0), data64(MicroKernelDS, 0)
	ucs, uds := code64(MicroUserCS, 3), data64(MicroUserDS, 3)
	tr := tss64(MicroTR, MicroTSSAddr)
	gdtLimit, err := writeGDT(m, MicroGDTAddr, microGDTSlots, kcs, kds, uds, ucs, tr)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	tss, err := m.Slice(MicroTSSAddr, tssSize)
	if err != nil {
		return nil, fmt.Errorf("boot: TSS: %w", err)
	}
	le.PutUint64(tss[4:], MicroKernelStackTop) // RSP0
	le.PutUint16(tss[102:], tssSize)           // I/O map base past the limit: no bitmap

	var idtLimit uint16
	if len(opt.IDT) > 0 {
		idt, err := m.Slice(MicroIDTAddr, 256*16)
		if err != nil {
			return nil, fmt.Errorf("boot: IDT: %w", err)
		}
		for v, h := range opt.IDT {
			g := idt[int(v)*16:]
			le.PutUint16(g[0:], uint16(h))
			le.PutUint16(g[2:], MicroKernelCS)
			g[4] = 0                 // IST 0
			g[5] = 0x80 | 3<<5 | 0xe // present, DPL 3, 64-bit interrupt gate
			le.PutUint16(g[6:], uint16(h>>16))
			le.PutUint32(g[8:], uint32(h>>32))
		}
		idtLimit = 256*16 - 1
	}

	e := &Entry{
		RIP:    MicroCodeAddr,
		RSP:    MicroStackTop,
		RSI:    MicroDataAddr,
		RFLAGS: RFLAGSReserved | RFLAGSIOPL3,
		CR0:    CR0PE | CR0MP | CR0ET | CR0NE | CR0WP | CR0PG,
		CR3:    MicroPML4Addr,
		CR4:    CR4PAE | CR4OSFXSR | CR4OSXMMEXCPT,
		EFER:   EFERLME | EFERLMA,
		CS:     ucs,
		DS:     uds, ES: uds, FS: uds, GS: uds, SS: uds,
		TR:      tr,
		LDT:     unusableLDT,
		GDTBase: MicroGDTAddr, GDTLimit: gdtLimit,
		IDTBase: MicroIDTAddr, IDTLimit: idtLimit,
	}
	if opt.Kernel {
		e.CS = kcs
		e.DS, e.ES, e.FS, e.GS, e.SS = kds, kds, kds, kds, kds
	}
	if opt.IF {
		e.RFLAGS |= RFLAGSIF
	}
	return e, nil
}
