package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

// Fixed guest-physical addresses of the Linux boot layout (see the package doc).
const (
	LinuxGDTAddr      = 0x500
	LinuxTSSAddr      = 0x600
	LinuxStackTop     = 0x7000
	ZeroPageAddr      = 0x7000
	LinuxPML4Addr     = 0x9000 // PDPT at 0xA000, page directories 0xB000-0xEFFF
	CmdlineAddr       = 0x20000
	CmdlineMax        = 0x10000 // bytes reserved for the command line and its NUL
	EBDAStart         = 0x9fc00
	ACPIAddr          = 0xE0000 // RSDP, then XSDT, RSDT, FADT, MADT, DSDT
	ACPIEnd           = 0x100000
	KernelLoadAddr    = 0x100000
	linuxIdentityGiB  = 4
	linuxGDTSlots     = 6
	bootCS            = 0x10 // __BOOT_CS
	bootDS            = 0x18 // __BOOT_DS
	bootTR            = 0x20
	heapEnd           = 0xe000 // heap_end_ptr is relative to the 0x200 past setup start
	zeroPageSize      = 4096
	maxE820           = 128
	e820EntriesOffset = 0x1e8
	e820TableOffset   = 0x2d0
	acpiRSDPOffset    = 0x070
	extRamdiskImage   = 0x0c0
	extRamdiskSize    = 0x0c4
	extCmdLinePtr     = 0x0c8
)

// E820 memory types.
const (
	E820RAM      = 1
	E820Reserved = 2
	E820ACPI     = 3
)

// E820Entry is one entry of the BIOS memory map passed in boot_params.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// LinuxConfig is what LoadLinux needs to boot a bzImage.
type LinuxConfig struct {
	Kernel  []byte // bzImage
	Initrd  []byte // optional initramfs
	Cmdline string
	CPUs    int    // number of vCPUs (one MADT Local APIC entry each); 0 means 1
	RAMSize uint64 // guest RAM laid out by RAMRanges; 0: m.Size()
	// PCIMem64, if not empty, is a second PCI memory window the DSDT declares for
	// 64-bit BARs: above 4 GiB and above RAM, below 2^48.
	PCIMem64 memory.Range
}

// E820Map is the memory map LoadLinux gives a guest with ramSize bytes of RAM.
func E820Map(ramSize uint64) []E820Entry {
	low := min(ramSize, PCIHoleStart)
	e := []E820Entry{
		{0, min(low, EBDAStart), E820RAM},
		{EBDAStart, KernelLoadAddr - EBDAStart, E820Reserved},
	}
	if low > KernelLoadAddr {
		e = append(e, E820Entry{KernelLoadAddr, low - KernelLoadAddr, E820RAM})
	}
	if ramSize > low {
		e = append(e, E820Entry{HighRAMStart, ramSize - low, E820RAM})
	}
	return e
}

func alignUp(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }

// LoadLinux loads a bzImage for the x86 64-bit boot protocol into m: the protected-mode
// kernel at KernelLoadAddr, boot_params at ZeroPageAddr (setup header, e820, cmdline,
// initrd, RSDP pointer), ACPI tables, a GDT and identity page tables for the first 4 GiB.
// The initrd goes as high as allowed below the PCI hole. It returns the state the boot
// vCPU starts in (64-bit entry, RSI = zero page). Other vCPUs start in their reset state
// and are woken by the kernel through INIT/SIPI.
func LoadLinux(m *memory.Memory, cfg LinuxConfig) (*Entry, error) {
	h, err := ParseSetupHeader(cfg.Kernel)
	if err != nil {
		return nil, err
	}
	ram := cfg.RAMSize
	if ram == 0 {
		ram = m.Size()
	}
	for _, r := range RAMRanges(ram) {
		if !m.Contains(r.GPA, r.Size) {
			return nil, fmt.Errorf("boot: guest memory does not hold RAM range %#x+%#x for %d bytes of RAM", r.GPA, r.Size, ram)
		}
	}
	lowEnd := min(ram, PCIHoleStart)
	cpus := cfg.CPUs
	if cpus == 0 {
		cpus = 1
	}

	// Where the kernel runs: a relocatable kernel decompresses at its load address
	// rounded up to kernel_alignment, but never below pref_address (LOAD_PHYSICAL_ADDR);
	// it needs init_size bytes there.
	pm := cfg.Kernel[h.KernelOffset:]
	runStart := uint64(KernelLoadAddr)
	if h.KernelAlignment != 0 {
		runStart = alignUp(runStart, uint64(h.KernelAlignment))
	}
	runStart = max(runStart, h.PrefAddress)
	kernelEnd := max(KernelLoadAddr+uint64(len(pm)), runStart+uint64(h.InitSize))
	if kernelEnd < runStart || kernelEnd > lowEnd {
		return nil, fmt.Errorf("boot: kernel needs memory up to %#x but RAM below the PCI hole ends at %#x; give the VM more memory", kernelEnd, lowEnd)
	}
	if err := m.WriteAt(pm, KernelLoadAddr); err != nil {
		return nil, fmt.Errorf("boot: copy kernel: %w", err)
	}

	zp, err := m.Slice(ZeroPageAddr, zeroPageSize)
	if err != nil {
		return nil, fmt.Errorf("boot: zero page: %w", err)
	}
	clear(zp)
	copy(zp[hdrSetupSects:h.HeaderEnd], cfg.Kernel[hdrSetupSects:h.HeaderEnd])
	le := binary.LittleEndian
	zp[hdrTypeOfLoader] = 0xff
	zp[hdrLoadFlags] |= LoadFlagCanUseHeap
	le.PutUint16(zp[hdrHeapEndPtr:], heapEnd-0x200)
	le.PutUint32(zp[hdrCode32Start:], KernelLoadAddr)

	// Command line.
	maxCmd := min(uint64(h.CmdlineSize), CmdlineMax-1)
	if uint64(len(cfg.Cmdline)) > maxCmd {
		return nil, fmt.Errorf("boot: command line is %d bytes, the kernel accepts at most %d; shorten it", len(cfg.Cmdline), maxCmd)
	}
	cl, err := m.Slice(CmdlineAddr, CmdlineMax)
	if err != nil {
		return nil, fmt.Errorf("boot: command line area: %w", err)
	}
	clear(cl)
	copy(cl, cfg.Cmdline)
	le.PutUint32(zp[hdrCmdLinePtr:], CmdlineAddr)
	le.PutUint32(zp[extCmdLinePtr:], 0)

	// Initrd: as high as possible below initrd_addr_max and the end of low RAM.
	if len(cfg.Initrd) > 0 {
		addr, err := placeInitrd(uint64(len(cfg.Initrd)), uint64(h.InitrdAddrMax), lowEnd, kernelEnd)
		if err != nil {
			return nil, err
		}
		if err := m.WriteAt(cfg.Initrd, addr); err != nil {
			return nil, fmt.Errorf("boot: copy initrd: %w", err)
		}
		size := uint64(len(cfg.Initrd))
		le.PutUint32(zp[hdrRamdiskImage:], uint32(addr))
		le.PutUint32(zp[hdrRamdiskSize:], uint32(size))
		le.PutUint32(zp[extRamdiskImage:], uint32(addr>>32))
		le.PutUint32(zp[extRamdiskSize:], uint32(size>>32))
	}

	// Memory map.
	e820 := E820Map(ram)
	zp[e820EntriesOffset] = byte(len(e820))
	for i, e := range e820 {
		o := e820TableOffset + 20*i
		le.PutUint64(zp[o:], e.Addr)
		le.PutUint64(zp[o+8:], e.Size)
		le.PutUint32(zp[o+16:], e.Type)
	}

	if w := cfg.PCIMem64; w.Size != 0 {
		ramEnd := uint64(HighRAMStart)
		if ram > lowEnd {
			ramEnd += ram - lowEnd
		}
		if w.GPA < ramEnd || w.End() < w.GPA || w.End() > 1<<48 {
			return nil, fmt.Errorf("boot: 64-bit PCI window %#x+%#x must lie between the end of RAM %#x and 2^48", w.GPA, w.Size, ramEnd)
		}
	}
	rsdp, err := writeACPI(m, ACPIAddr, ACPIEnd, cpus, cfg.PCIMem64)
	if err != nil {
		return nil, err
	}
	le.PutUint64(zp[acpiRSDPOffset:], rsdp)

	if _, err := identityMap(m, LinuxPML4Addr, linuxIdentityGiB, false); err != nil {
		return nil, err
	}
	cs, ds, tr := code64(bootCS, 0), data64(bootDS, 0), tss64(bootTR, LinuxTSSAddr)
	if err := zeroRange(m, LinuxTSSAddr, tssSize); err != nil {
		return nil, err
	}
	gdtLimit, err := writeGDT(m, LinuxGDTAddr, linuxGDTSlots, cs, ds, tr)
	if err != nil {
		return nil, err
	}
	return &Entry{
		RIP:    KernelLoadAddr + 0x200,
		RSP:    LinuxStackTop,
		RSI:    ZeroPageAddr,
		RFLAGS: RFLAGSReserved,
		CR0:    CR0PE | CR0ET | CR0NE | CR0PG,
		CR3:    LinuxPML4Addr,
		CR4:    CR4PAE,
		EFER:   EFERLME | EFERLMA,
		CS:     cs, DS: ds, ES: ds, FS: ds, GS: ds, SS: ds,
		TR: tr, LDT: unusableLDT,
		GDTBase: LinuxGDTAddr, GDTLimit: gdtLimit,
	}, nil
}

// placeInitrd returns the page-aligned address of an initrd of size bytes, as high as
// possible with its last byte at or below addrMax and below lowEnd, above kernelEnd.
func placeInitrd(size, addrMax, lowEnd, kernelEnd uint64) (uint64, error) {
	top := min(lowEnd, addrMax+1)
	floor := alignUp(kernelEnd, 4096)
	if size > top || (top-size)&^0xfff < floor {
		return 0, fmt.Errorf("boot: initrd of %d bytes does not fit between the kernel (ends %#x) and %#x; give the VM more memory or use a smaller initrd", size, floor, top)
	}
	return (top - size) &^ 0xfff, nil
}

func zeroRange(m *memory.Memory, gpa, n uint64) error {
	b, err := m.Slice(gpa, n)
	if err != nil {
		return fmt.Errorf("boot: clear %#x+%#x: %w", gpa, n, err)
	}
	clear(b)
	return nil
}
