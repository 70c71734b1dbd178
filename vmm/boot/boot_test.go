package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

var le = binary.LittleEndian

// bzParams are the header fields a synthetic bzImage carries.
type bzParams struct {
	setupSects    byte
	version       uint16
	loadFlags     byte
	xloadFlags    uint16
	initrdAddrMax uint32
	kernelAlign   uint32
	prefAddress   uint64
	initSize      uint32
	cmdlineSize   uint32
	payload       int
}

func defaultBz() bzParams {
	return bzParams{
		setupSects: 4, version: 0x020f, loadFlags: LoadFlagLoadedHigh,
		xloadFlags: XLFKernel64 | XLFCanBeLoadedAbove, initrdAddrMax: 0x7fffffff,
		kernelAlign: 2 * mib, prefAddress: 16 * mib, initSize: 32 * mib,
		cmdlineSize: 2047, payload: 64 << 10,
	}
}

// fakeBzImage builds a bzImage with just a setup header and a patterned payload.
func fakeBzImage(p bzParams) []byte {
	sects := int(p.setupSects)
	if sects == 0 {
		sects = 4
	}
	img := make([]byte, (sects+1)*512+p.payload)
	img[hdrSetupSects] = p.setupSects
	le.PutUint16(img[hdrBootFlag:], 0xAA55)
	img[hdrJump], img[hdrJump+1] = 0xEB, 0x6A // header ends at 0x26c
	copy(img[hdrMagic:], "HdrS")
	le.PutUint16(img[hdrVersion:], p.version)
	img[hdrLoadFlags] = p.loadFlags
	le.PutUint32(img[hdrCode32Start:], 0x100000)
	le.PutUint32(img[hdrInitrdAddrMax:], p.initrdAddrMax)
	le.PutUint32(img[hdrKernelAlignment:], p.kernelAlign)
	img[hdrRelocatable] = 1
	le.PutUint16(img[hdrXLoadFlags:], p.xloadFlags)
	le.PutUint32(img[hdrCmdlineSize:], p.cmdlineSize)
	le.PutUint64(img[hdrPrefAddress:], p.prefAddress)
	le.PutUint32(img[hdrInitSize:], p.initSize)
	// Fields past init_size, inside the header, that must be copied verbatim.
	le.PutUint32(img[0x264:], 0x12345678) // handover_offset
	le.PutUint32(img[0x268:], 0x9abcdef0) // kernel_info_offset
	for i := (sects + 1) * 512; i < len(img); i++ {
		img[i] = byte(i*7 + 3)
	}
	return img
}

func newMem(t testing.TB, ram uint64) *memory.Memory {
	t.Helper()
	m, err := memory.New(RAMRanges(ram), memory.Options{NoHugePages: true})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

func TestRAMRanges(t *testing.T) {
	assert.Empty(t, RAMRanges(0))
	assert.Equal(t, []memory.Range{{GPA: 0, Size: 512 * mib}}, RAMRanges(512*mib))
	assert.Equal(t, []memory.Range{{GPA: 0, Size: PCIHoleStart}}, RAMRanges(PCIHoleStart))
	rs := RAMRanges(8 * gib)
	require.Len(t, rs, 2)
	assert.Equal(t, memory.Range{GPA: 0, Size: PCIHoleStart}, rs[0])
	assert.Equal(t, memory.Range{GPA: 4 * gib, Size: 8*gib - PCIHoleStart}, rs[1])
	var total uint64
	for _, r := range rs {
		total += r.Size
		assert.False(t, r.GPA < IOAPICAddr && r.End() > PCIHoleStart, "range %v overlaps the PCI hole", r)
	}
	assert.Equal(t, uint64(8*gib), total)
}

func TestParseSetupHeader(t *testing.T) {
	good := fakeBzImage(defaultBz())
	h, err := ParseSetupHeader(good)
	require.NoError(t, err)
	assert.Equal(t, 4, h.SetupSects)
	assert.Equal(t, 5*512, h.KernelOffset)
	assert.Equal(t, 0x26c, h.HeaderEnd)
	assert.Equal(t, uint16(0x020f), h.Version)
	assert.Equal(t, uint64(16*mib), h.PrefAddress)

	p := defaultBz()
	p.setupSects = 0 // means 4
	h, err = ParseSetupHeader(fakeBzImage(p))
	require.NoError(t, err)
	assert.Equal(t, 4, h.SetupSects)
	p.setupSects = 20
	h, err = ParseSetupHeader(fakeBzImage(p))
	require.NoError(t, err)
	assert.Equal(t, 21*512, h.KernelOffset)

	mutate := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	bad := map[string]struct {
		img  []byte
		want error
	}{
		"empty":          {nil, ErrNotBzImage},
		"short":          {good[:0x250], ErrNotBzImage},
		"header only":    {good[:5*512], ErrNotBzImage},
		"bad magic":      {mutate(func(b []byte) { copy(b[hdrMagic:], "HdrZ") }), ErrNotBzImage},
		"elf vmlinux":    {mutate(func(b []byte) { copy(b, "\x7fELF"); copy(b[hdrMagic:], "\x00\x00\x00\x00") }), ErrNotBzImage},
		"bad boot flag":  {mutate(func(b []byte) { le.PutUint16(b[hdrBootFlag:], 0x1234) }), ErrNotBzImage},
		"protocol 2.11":  {mutate(func(b []byte) { le.PutUint16(b[hdrVersion:], 0x020b) }), ErrUnsupportedKernel},
		"32-bit only":    {mutate(func(b []byte) { le.PutUint16(b[hdrXLoadFlags:], 0) }), ErrUnsupportedKernel},
		"zImage":         {mutate(func(b []byte) { b[hdrLoadFlags] = 0 }), ErrUnsupportedKernel},
		"short header":   {mutate(func(b []byte) { b[hdrJump+1] = 0x10 }), ErrNotBzImage},
		"odd alignment":  {mutate(func(b []byte) { le.PutUint32(b[hdrKernelAlignment:], 0x3000) }), ErrNotBzImage},
		"setup too long": {mutate(func(b []byte) { b[hdrSetupSects] = 255 }), ErrNotBzImage},
	}
	for name, c := range bad {
		t.Run(name, func(t *testing.T) {
			h, err := ParseSetupHeader(c.img)
			require.Error(t, err)
			assert.Nil(t, h)
			assert.True(t, errors.Is(err, c.want), "error %v, want %v", err, c.want)
		})
	}
}

// e820FromZeroPage decodes the memory map the kernel will see.
func e820FromZeroPage(t *testing.T, m *memory.Memory) []E820Entry {
	t.Helper()
	n, err := m.Read8(ZeroPageAddr + e820EntriesOffset)
	require.NoError(t, err)
	require.LessOrEqual(t, int(n), maxE820)
	var es []E820Entry
	for i := range int(n) {
		b, err := m.Slice(ZeroPageAddr+e820TableOffset+uint64(20*i), 20)
		require.NoError(t, err)
		es = append(es, E820Entry{le.Uint64(b), le.Uint64(b[8:]), le.Uint32(b[16:])})
	}
	return es
}

func typeAt(es []E820Entry, addr uint64) uint32 {
	for _, e := range es {
		if addr >= e.Addr && addr < e.Addr+e.Size {
			return e.Type
		}
	}
	return 0
}

func checkE820(t *testing.T, es []E820Entry, ram uint64) {
	t.Helper()
	require.NotEmpty(t, es)
	assert.True(t, sort.SliceIsSorted(es, func(i, j int) bool { return es[i].Addr < es[j].Addr }), "e820 not sorted: %v", es)
	var usable uint64
	for i, e := range es {
		assert.NotZero(t, e.Size)
		if i > 0 {
			assert.LessOrEqual(t, es[i-1].Addr+es[i-1].Size, e.Addr, "entries %d and %d overlap", i-1, i)
		}
		if e.Type == E820RAM {
			usable += e.Size
			// Usable RAM never reaches into the PCI hole or the APIC windows.
			assert.False(t, e.Addr < 4*gib && e.Addr+e.Size > PCIHoleStart, "RAM entry %+v in the PCI hole", e)
		}
	}
	assert.Equal(t, ram-(KernelLoadAddr-EBDAStart), usable)
	assert.Equal(t, uint32(E820RAM), typeAt(es, 0))
	assert.Equal(t, uint32(E820Reserved), typeAt(es, EBDAStart))
	assert.Equal(t, uint32(E820Reserved), typeAt(es, ACPIAddr))
	assert.Equal(t, uint32(E820Reserved), typeAt(es, ACPIEnd-1))
	assert.Equal(t, uint32(E820RAM), typeAt(es, KernelLoadAddr))
	assert.Equal(t, uint32(0), typeAt(es, PCIHoleStart))
	assert.Equal(t, uint32(0), typeAt(es, IOAPICAddr))
	if ram > PCIHoleStart {
		assert.Equal(t, uint32(E820RAM), typeAt(es, 4*gib))
		assert.Equal(t, uint32(E820RAM), typeAt(es, 4*gib+ram-PCIHoleStart-1))
		assert.Equal(t, uint32(0), typeAt(es, 4*gib+ram-PCIHoleStart))
	}
}

func TestLoadLinux(t *testing.T) {
	const ram = 256 * mib
	m := newMem(t, ram)
	kernel := fakeBzImage(defaultBz())
	initrd := bytes.Repeat([]byte("initrd!"), 100000)
	const cmdline = "console=ttyS0 reboot=k panic=-1 ptvmm.cmd=\"echo hi\""
	e, err := LoadLinux(m, LinuxConfig{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, CPUs: 2, RAMSize: ram})
	require.NoError(t, err)

	// The protected-mode kernel is at 1 MiB.
	pm, err := m.Slice(KernelLoadAddr, uint64(len(kernel)-5*512))
	require.NoError(t, err)
	assert.Equal(t, kernel[5*512:], pm)

	zp, err := m.Slice(ZeroPageAddr, 4096)
	require.NoError(t, err)
	// Setup header copied, except the fields the loader owns.
	owned := map[int]bool{hdrTypeOfLoader: true, hdrLoadFlags: true}
	for _, f := range []struct{ off, n int }{{hdrCode32Start, 4}, {hdrRamdiskImage, 4}, {hdrRamdiskSize, 4}, {hdrHeapEndPtr, 2}, {hdrCmdLinePtr, 4}} {
		for i := range f.n {
			owned[f.off+i] = true
		}
	}
	for i := hdrSetupSects; i < 0x26c; i++ {
		if !owned[i] {
			require.Equal(t, kernel[i], zp[i], "setup header byte %#x", i)
		}
	}
	assert.Zero(t, zp[0x26c], "bytes past the header end are not copied")
	assert.Equal(t, "HdrS", string(zp[hdrMagic:hdrMagic+4]))
	assert.Equal(t, uint32(0x9abcdef0), le.Uint32(zp[0x268:]))
	assert.Equal(t, byte(0xff), zp[hdrTypeOfLoader])
	assert.Equal(t, byte(LoadFlagLoadedHigh|LoadFlagCanUseHeap), zp[hdrLoadFlags])
	assert.Equal(t, uint16(0xde00), le.Uint16(zp[hdrHeapEndPtr:]))
	assert.Equal(t, uint32(KernelLoadAddr), le.Uint32(zp[hdrCode32Start:]))

	// Command line, NUL-terminated.
	cp := uint64(le.Uint32(zp[hdrCmdLinePtr:])) | uint64(le.Uint32(zp[extCmdLinePtr:]))<<32
	cl, err := m.Slice(cp, uint64(len(cmdline)+1))
	require.NoError(t, err)
	assert.Equal(t, cmdline+"\x00", string(cl))

	// Initrd: page-aligned, copied, below initrd_addr_max and RAM end, above the kernel.
	ia := uint64(le.Uint32(zp[hdrRamdiskImage:])) | uint64(le.Uint32(zp[extRamdiskImage:]))<<32
	is := uint64(le.Uint32(zp[hdrRamdiskSize:])) | uint64(le.Uint32(zp[extRamdiskSize:]))<<32
	assert.Equal(t, uint64(len(initrd)), is)
	assert.Zero(t, ia%4096)
	assert.LessOrEqual(t, ia+is, uint64(ram))
	assert.Greater(t, ia+is+4096, uint64(ram), "initrd is as high as possible")
	assert.GreaterOrEqual(t, ia, uint64(16*mib+32*mib), "initrd clear of the kernel's init_size area")
	got, err := m.Slice(ia, is)
	require.NoError(t, err)
	assert.Equal(t, initrd, got)

	checkE820(t, e820FromZeroPage(t, m), ram)
	rsdp := le.Uint64(zp[acpiRSDPOffset:])
	assert.Equal(t, uint64(ACPIAddr), rsdp)
	checkACPI(t, m, rsdp, 2)

	// Entry state: 64-bit entry, long mode, boot selectors.
	assert.Equal(t, uint64(KernelLoadAddr+0x200), e.RIP)
	assert.Equal(t, uint64(ZeroPageAddr), e.RSI)
	assert.Zero(t, e.RFLAGS&RFLAGSIF, "interrupts disabled")
	assert.NotZero(t, e.CR0&CR0PE)
	assert.NotZero(t, e.CR0&CR0PG)
	assert.NotZero(t, e.CR4&CR4PAE)
	assert.Equal(t, uint64(EFERLME|EFERLMA), e.EFER&(EFERLME|EFERLMA))
	assert.Equal(t, uint16(0x10), e.CS.Selector)
	assert.Equal(t, uint8(1), e.CS.L)
	assert.Equal(t, uint8(0), e.CS.DB)
	for _, s := range []Segment{e.DS, e.ES, e.SS} {
		assert.Equal(t, uint16(0x18), s.Selector)
	}
	checkGDT(t, m, e)
	checkIdentity(t, m, e.CR3, 4*gib, false)
	// The stack and every fixed structure are in RAM the e820 marks usable or reserved
	// and do not overlap one another.
	checkDisjoint(t, map[string]memory.Range{
		"gdt":      {GPA: e.GDTBase, Size: uint64(e.GDTLimit) + 1},
		"tss":      {GPA: LinuxTSSAddr, Size: tssSize},
		"zeropage": {GPA: ZeroPageAddr, Size: 4096},
		"tables":   {GPA: LinuxPML4Addr, Size: 6 * 4096},
		"cmdline":  {GPA: CmdlineAddr, Size: CmdlineMax},
		"acpi":     {GPA: ACPIAddr, Size: ACPIEnd - ACPIAddr},
		"kernel":   {GPA: KernelLoadAddr, Size: 48*mib - KernelLoadAddr},
		"initrd":   {GPA: ia, Size: is},
	})
	assert.LessOrEqual(t, e.RSP, uint64(ZeroPageAddr))
	assert.Greater(t, e.RSP-4096, uint64(LinuxTSSAddr+tssSize))
}

func checkDisjoint(t *testing.T, rs map[string]memory.Range) {
	t.Helper()
	for a, ra := range rs {
		for b, rb := range rs {
			if a < b {
				assert.False(t, ra.GPA < rb.End() && rb.GPA < ra.End(), "%s %+v overlaps %s %+v", a, ra, b, rb)
			}
		}
	}
}

// checkGDT decodes the GDT entries the segment registers name and compares them.
func checkGDT(t *testing.T, m *memory.Memory, e *Entry) {
	t.Helper()
	for _, s := range []Segment{e.CS, e.DS, e.ES, e.FS, e.GS, e.SS, e.TR} {
		idx := uint64(s.Selector >> 3)
		require.NotZero(t, idx)
		require.LessOrEqual(t, idx*8+7, uint64(e.GDTLimit))
		d, err := m.Read64(e.GDTBase + idx*8)
		require.NoError(t, err)
		base := d>>16&0xffffff | (d>>56&0xff)<<24
		limit := d&0xffff | (d>>48&0xf)<<16
		if d>>55&1 != 0 {
			limit = limit<<12 | 0xfff
		}
		if s.S == 0 {
			hi, err := m.Read64(e.GDTBase + idx*8 + 8)
			require.NoError(t, err)
			base |= hi << 32
		}
		assert.Equal(t, s.Base, base, "selector %#x base", s.Selector)
		assert.Equal(t, uint64(s.Limit), limit, "selector %#x limit", s.Selector)
		assert.Equal(t, uint64(s.Type), d>>40&0xf, "selector %#x type", s.Selector)
		assert.Equal(t, uint64(s.S), d>>44&1)
		assert.Equal(t, uint64(s.DPL), d>>45&3)
		assert.Equal(t, uint64(s.Present), d>>47&1)
		assert.Equal(t, uint64(s.L), d>>53&1)
		assert.Equal(t, uint64(s.DB), d>>54&1)
		assert.Equal(t, uint64(s.Selector&3), uint64(s.DPL), "RPL equals DPL for selector %#x", s.Selector)
	}
	assert.Equal(t, uint8(0), e.LDT.Present)
}

// walk translates va through 4-level page tables at cr3 and reports whether every
// level allows user access.
func walk(t *testing.T, m *memory.Memory, cr3, va uint64) (pa uint64, user, ok bool) {
	t.Helper()
	table := cr3 &^ 0xfff
	user = true
	for level := 3; level >= 0; level-- {
		idx := va >> (12 + 9*uint(level)) & 511
		pte, err := m.Read64(table + idx*8)
		require.NoError(t, err)
		if pte&ptePresent == 0 {
			return 0, false, false
		}
		user = user && pte&pteUser != 0
		addr := pte & 0x000f_ffff_ffff_f000
		if level == 2 && pte&ptePageSize != 0 {
			return addr&^(gib-1) | va&(gib-1), user, true
		}
		if level == 1 && pte&ptePageSize != 0 {
			return addr&^(2*mib-1) | va&(2*mib-1), user, true
		}
		if level == 0 {
			return addr | va&0xfff, user, true
		}
		table = addr
	}
	return 0, false, false
}

func checkIdentity(t *testing.T, m *memory.Memory, cr3, size uint64, wantUser bool) {
	t.Helper()
	for va := uint64(0); va < size; va += 2*mib - 4096 + 8 {
		pa, user, ok := walk(t, m, cr3, va)
		require.True(t, ok, "va %#x not mapped", va)
		require.Equal(t, va, pa)
		require.Equal(t, wantUser, user, "va %#x user bit", va)
	}
	for _, va := range []uint64{size - 1, 0xFEE00000, 0xFEC00000, PCIHoleStart} {
		if va < size {
			pa, _, ok := walk(t, m, cr3, va)
			require.True(t, ok)
			require.Equal(t, va, pa)
		}
	}
	_, _, ok := walk(t, m, cr3, size)
	assert.False(t, ok, "mapping ends at %#x", size)
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// readTable reads an ACPI table at addr and checks its length and checksum.
func readTable(t *testing.T, m *memory.Memory, addr uint64, sig string) []byte {
	t.Helper()
	h, err := m.Slice(addr, 36)
	require.NoError(t, err)
	require.Equal(t, sig, string(h[:4]))
	n := le.Uint32(h[4:])
	require.GreaterOrEqual(t, n, uint32(36))
	b, err := m.Slice(addr, uint64(n))
	require.NoError(t, err)
	assert.Zero(t, sum(b), "%s checksum", sig)
	assert.Equal(t, acpiOEMID, string(b[10:16]))
	return b
}

func checkACPI(t *testing.T, m *memory.Memory, rsdpAddr uint64, cpus int) {
	t.Helper()
	require.True(t, rsdpAddr >= 0xE0000 && rsdpAddr+36 <= 0x100000 && rsdpAddr%16 == 0)
	rsdp, err := m.Slice(rsdpAddr, 36)
	require.NoError(t, err)
	assert.Equal(t, "RSD PTR ", string(rsdp[:8]))
	assert.Zero(t, sum(rsdp[:20]), "RSDP checksum")
	assert.Zero(t, sum(rsdp), "RSDP extended checksum")
	assert.Equal(t, byte(2), rsdp[15])
	assert.Equal(t, uint32(36), le.Uint32(rsdp[20:]))

	inACPIArea := func(addr uint64, n int) {
		assert.True(t, addr >= ACPIAddr && addr+uint64(n) <= ACPIEnd, "table at %#x outside the reserved ACPI area", addr)
	}
	xsdt := readTable(t, m, le.Uint64(rsdp[24:]), "XSDT")
	rsdt := readTable(t, m, uint64(le.Uint32(rsdp[16:])), "RSDT")
	require.Len(t, xsdt, 36+16)
	require.Len(t, rsdt, 36+8)
	tables := map[string][]byte{}
	for i := 0; i < 2; i++ {
		a := le.Uint64(xsdt[36+8*i:])
		assert.Equal(t, a, uint64(le.Uint32(rsdt[36+4*i:])), "RSDT and XSDT agree")
		h, err := m.Slice(a, 4)
		require.NoError(t, err)
		tb := readTable(t, m, a, string(h))
		inACPIArea(a, len(tb))
		tables[string(h)] = tb
	}

	fadt := tables["FACP"]
	require.Len(t, fadt, fadtLen)
	assert.Equal(t, byte(6), fadt[8])
	assert.NotZero(t, le.Uint32(fadt[112:])&fadtFlagHWReducedACP)
	assert.Equal(t, uint16(SCIIRQ), le.Uint16(fadt[46:]))
	assert.Zero(t, le.Uint32(fadt[40:]), "32-bit DSDT zero when X_DSDT is set")
	// Reset and sleep registers: byte-wide system I/O GAS.
	for _, g := range []struct {
		off  int
		port uint64
	}{{116, 0x64}, {244, SleepControlPort}, {256, SleepStatusPort}} {
		assert.Equal(t, []byte{1, 8, 0, 1}, fadt[g.off:g.off+4], "GAS at %d", g.off)
		assert.Equal(t, g.port, le.Uint64(fadt[g.off+4:]), "GAS at %d", g.off)
	}
	assert.Equal(t, byte(0xfe), fadt[128])
	assert.Equal(t, byte(0x34), byte(PowerOffValue))
	dsdt := readTable(t, m, le.Uint64(fadt[140:]), "DSDT")
	inACPIArea(le.Uint64(fadt[140:]), len(dsdt))

	madt := tables["APIC"]
	assert.Equal(t, uint32(LAPICAddr), le.Uint32(madt[36:]))
	var lapics []byte
	var ioapics, overrides int
	irq0, irq9 := false, false
	for p := 44; p < len(madt); {
		require.LessOrEqual(t, p+2, len(madt))
		typ, n := madt[p], int(madt[p+1])
		require.GreaterOrEqual(t, n, 2)
		require.LessOrEqual(t, p+n, len(madt))
		s := madt[p : p+n]
		switch typ {
		case 0:
			require.Equal(t, 8, n)
			assert.Equal(t, uint32(1), le.Uint32(s[4:])&1, "LAPIC enabled")
			lapics = append(lapics, s[3])
		case 1:
			require.Equal(t, 12, n)
			ioapics++
			assert.Equal(t, uint32(IOAPICAddr), le.Uint32(s[4:]))
			assert.Zero(t, le.Uint32(s[8:]), "GSI base")
		case 2:
			require.Equal(t, 10, n)
			overrides++
			if s[3] == 0 && le.Uint32(s[4:]) == 2 {
				irq0 = true
			}
			if s[3] == 9 && le.Uint32(s[4:]) == 9 && le.Uint16(s[8:]) == 0xd {
				irq9 = true
			}
		}
		p += n
	}
	require.Len(t, lapics, cpus)
	for i, id := range lapics {
		assert.Equal(t, byte(i), id, "APIC IDs are the vCPU indexes")
	}
	assert.Equal(t, 1, ioapics)
	assert.Equal(t, 2, overrides)
	assert.True(t, irq0, "IRQ0 -> GSI2 override")
	assert.True(t, irq9, "IRQ9 level/high override")
}

func TestACPICPUs(t *testing.T) {
	for _, n := range []int{1, 3, 64, MaxCPUs} {
		m := newMem(t, 64*mib)
		_, err := writeACPI(m, ACPIAddr, ACPIEnd, n, memory.Range{})
		require.NoError(t, err)
		checkACPI(t, m, ACPIAddr, n)
	}
	m := newMem(t, 64*mib)
	for _, n := range []int{-1, MaxCPUs + 1} {
		_, err := writeACPI(m, ACPIAddr, ACPIEnd, n, memory.Range{})
		assert.Error(t, err, "%d CPUs", n)
	}
	// Tables that do not fit their area are an error, not a write past it.
	_, err := writeACPI(m, ACPIAddr, ACPIAddr+256, 8, memory.Range{})
	assert.Error(t, err)
}

func TestLoadLinuxAbove4G(t *testing.T) {
	ram := uint64(5 * gib)
	m := newMem(t, ram)
	initrd := make([]byte, 3*mib+5)
	initrd[len(initrd)-1] = 0x5a
	_, err := LoadLinux(m, LinuxConfig{Kernel: fakeBzImage(defaultBz()), Initrd: initrd, Cmdline: "x", CPUs: 4})
	require.NoError(t, err)
	checkE820(t, e820FromZeroPage(t, m), ram)
	zp, err := m.Slice(ZeroPageAddr, 4096)
	require.NoError(t, err)
	ia := uint64(le.Uint32(zp[hdrRamdiskImage:])) | uint64(le.Uint32(zp[extRamdiskImage:]))<<32
	// Right below initrd_addr_max (2 GiB), not above 4 GiB.
	assert.LessOrEqual(t, ia+uint64(len(initrd)), uint64(0x80000000))
	assert.Greater(t, ia+uint64(len(initrd))+4096, uint64(0x80000000))
	b, err := m.Read8(ia + uint64(len(initrd)) - 1)
	require.NoError(t, err)
	assert.Equal(t, byte(0x5a), b)
	checkACPI(t, m, ACPIAddr, 4)
}

func TestInitrdPlacement(t *testing.T) {
	// initrd_addr_max below the end of RAM bounds the initrd's last byte.
	p := defaultBz()
	p.initrdAddrMax = 0x3fffffff
	m := newMem(t, 2*gib)
	initrd := bytes.Repeat([]byte{1}, 10*mib+123)
	_, err := LoadLinux(m, LinuxConfig{Kernel: fakeBzImage(p), Initrd: initrd})
	require.NoError(t, err)
	ia, _ := m.Read32(ZeroPageAddr + hdrRamdiskImage)
	assert.Zero(t, ia%4096)
	assert.LessOrEqual(t, uint64(ia)+uint64(len(initrd))-1, uint64(0x3fffffff))
	assert.Greater(t, uint64(ia)+uint64(len(initrd))+4096, uint64(0x40000000))

	cases := []struct {
		name                         string
		size, max, lowEnd, kernelEnd uint64
		want                         uint64
		fails                        bool
	}{
		{"top of RAM", 4096, 0x7fffffff, 64 * mib, 48 * mib, 64*mib - 4096, false},
		{"rounded down", 4097, 0x7fffffff, 64 * mib, 48 * mib, 64*mib - 8192, false},
		{"addr max", 100, 32*mib - 1, 64 * mib, 16 * mib, 32*mib - 4096, false},
		{"exactly fits", 16 * mib, 0x7fffffff, 64 * mib, 48 * mib, 48 * mib, false},
		{"overlaps kernel", 16*mib + 1, 0x7fffffff, 64 * mib, 48 * mib, 0, true},
		{"kernel end unaligned", 16 * mib, 0x7fffffff, 64 * mib, 48*mib + 1, 0, true},
		{"larger than RAM", 128 * mib, 0x7fffffff, 64 * mib, 1 * mib, 0, true},
		{"zero addr max", 1, 0, 64 * mib, 1 * mib, 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := placeInitrd(c.size, c.max, c.lowEnd, c.kernelEnd)
			if c.fails {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, c.want, a)
		})
	}

	// Through LoadLinux: an initrd that does not fit is an error.
	m = newMem(t, 64*mib)
	_, err = LoadLinux(m, LinuxConfig{Kernel: fakeBzImage(defaultBz()), Initrd: make([]byte, 20*mib)})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "initrd")
}

func TestLoadLinuxErrors(t *testing.T) {
	kernel := fakeBzImage(defaultBz())
	m := newMem(t, 128*mib)

	_, err := LoadLinux(m, LinuxConfig{Kernel: kernel, Cmdline: strings.Repeat("a", 2047)})
	assert.NoError(t, err, "cmdline of exactly cmdline_size bytes")
	_, err = LoadLinux(m, LinuxConfig{Kernel: kernel, Cmdline: strings.Repeat("a", 2048)})
	assert.ErrorContains(t, err, "command line")

	p := defaultBz()
	p.cmdlineSize = 0xffffffff // capped by the space reserved for it
	_, err = LoadLinux(m, LinuxConfig{Kernel: fakeBzImage(p), Cmdline: strings.Repeat("a", CmdlineMax)})
	assert.ErrorContains(t, err, "command line")

	// Kernel whose init_size does not fit in RAM.
	p = defaultBz()
	p.initSize = 200 * mib
	_, err = LoadLinux(m, LinuxConfig{Kernel: fakeBzImage(p)})
	assert.ErrorContains(t, err, "more memory")

	// pref_address near 2^64 must not wrap into a "fit".
	p = defaultBz()
	p.prefAddress = ^uint64(0) - 4096
	_, err = LoadLinux(m, LinuxConfig{Kernel: fakeBzImage(p)})
	assert.Error(t, err)

	_, err = LoadLinux(m, LinuxConfig{Kernel: kernel[:100]})
	assert.ErrorIs(t, err, ErrNotBzImage)

	_, err = LoadLinux(m, LinuxConfig{Kernel: kernel, CPUs: 300})
	assert.Error(t, err)

	// A 64-bit PCI window over RAM, below 4 GiB, or past 2^48.
	for _, w := range []memory.Range{{GPA: 1 * gib, Size: gib}, {GPA: 4 * gib, Size: gib}, {GPA: 1 << 48, Size: gib}, {GPA: ^uint64(0) - 10, Size: gib}} {
		_, err = LoadLinux(newMem(t, 5*gib), LinuxConfig{Kernel: kernel, PCIMem64: w})
		assert.ErrorContains(t, err, "64-bit PCI window", "%+v", w)
	}
	_, err = LoadLinux(newMem(t, 5*gib), LinuxConfig{Kernel: kernel, PCIMem64: memory.Range{GPA: 6 * gib, Size: gib}})
	assert.NoError(t, err, "window right above high RAM")

	// RAMSize larger than the memory given.
	_, err = LoadLinux(m, LinuxConfig{Kernel: kernel, RAMSize: 256 * mib})
	assert.ErrorContains(t, err, "does not hold")
}

func TestLoadMicro(t *testing.T) {
	m := newMem(t, 4*mib)
	code := make([]byte, 256)
	for i := range code {
		code[i] = byte(i)
	}
	idt := map[uint8]uint64{0x20: MicroCodeAddr + 0x40, 0x80: MicroCodeAddr + 0xff, 14: MicroCodeAddr}
	e, err := LoadMicro(m, code, MicroOptions{IF: true, IDT: idt})
	require.NoError(t, err)

	got, err := m.Slice(MicroCodeAddr, uint64(len(code)))
	require.NoError(t, err)
	assert.Equal(t, code, got)
	assert.Equal(t, uint64(MicroCodeAddr), e.RIP)
	assert.Equal(t, uint64(MicroStackTop), e.RSP)
	assert.Equal(t, uint64(MicroDataAddr), e.RSI)
	assert.Equal(t, uint16(3), e.CS.Selector&3, "CPL3")
	assert.Equal(t, uint8(3), e.CS.DPL)
	assert.Equal(t, uint8(1), e.CS.L)
	assert.Equal(t, uint16(3), e.SS.Selector&3)
	assert.Equal(t, uint64(RFLAGSIOPL3), e.RFLAGS&RFLAGSIOPL3)
	assert.NotZero(t, e.RFLAGS&RFLAGSIF)
	assert.NotZero(t, e.RFLAGS&RFLAGSReserved)
	assert.Equal(t, uint64(EFERLME|EFERLMA), e.EFER&(EFERLME|EFERLMA))
	assert.NotZero(t, e.CR0&CR0PG)
	checkGDT(t, m, e)
	checkIdentity(t, m, e.CR3, MicroIdentityGiB*gib, true)

	// SYSCALL/SYSRET-compatible selector layout.
	assert.Equal(t, uint16(MicroKernelCS+8), uint16(MicroKernelDS))
	assert.Equal(t, uint16(MicroUserDS+8), uint16(MicroUserCS))

	// TSS: RSP0 is the kernel stack, inside RAM and clear of everything else.
	rsp0, err := m.Read64(MicroTSSAddr + 4)
	require.NoError(t, err)
	assert.Equal(t, uint64(MicroKernelStackTop), rsp0)
	assert.Equal(t, uint64(MicroTSSAddr), e.TR.Base)

	// IDT: the given vectors are present DPL-3 interrupt gates to the handlers on the
	// kernel code segment; others are absent.
	require.Equal(t, uint64(MicroIDTAddr), e.IDTBase)
	require.Equal(t, uint16(4095), e.IDTLimit)
	for v := range 256 {
		g, err := m.Slice(MicroIDTAddr+uint64(v)*16, 16)
		require.NoError(t, err)
		h, ok := idt[uint8(v)]
		if !ok {
			assert.Zero(t, g[5]&0x80, "vector %d not present", v)
			continue
		}
		off := uint64(le.Uint16(g[0:])) | uint64(le.Uint16(g[6:]))<<16 | uint64(le.Uint32(g[8:]))<<32
		assert.Equal(t, h, off, "vector %d handler", v)
		assert.Equal(t, uint16(MicroKernelCS), le.Uint16(g[2:]))
		assert.Equal(t, byte(0xee), g[5], "present, DPL3, interrupt gate")
	}

	checkDisjoint(t, map[string]memory.Range{
		"gdt":    {GPA: e.GDTBase, Size: uint64(e.GDTLimit) + 1},
		"idt":    {GPA: e.IDTBase, Size: uint64(e.IDTLimit) + 1},
		"tss":    {GPA: MicroTSSAddr, Size: tssSize},
		"tables": {GPA: MicroPML4Addr, Size: (2 + MicroIdentityGiB) * 4096},
		"kstack": {GPA: MicroKernelStackTop - 0x6000, Size: 0x6000},
		"code":   {GPA: MicroCodeAddr, Size: MicroCodeMax},
		"ustack": {GPA: MicroCodeAddr + MicroCodeMax, Size: MicroStackTop - MicroCodeAddr - MicroCodeMax},
		"data":   MicroDataRange(m),
	})
	assert.Equal(t, memory.Range{GPA: MicroDataAddr, Size: 3 * mib}, MicroDataRange(m))

	// Kernel mode and no IDT.
	e, err = LoadMicro(m, code, MicroOptions{Kernel: true})
	require.NoError(t, err)
	assert.Zero(t, e.CS.Selector&3)
	assert.Zero(t, e.RFLAGS&RFLAGSIF)
	assert.Zero(t, e.IDTLimit)
	checkGDT(t, m, e)
}

func TestLoadMicroErrors(t *testing.T) {
	m := newMem(t, 4*mib)
	_, err := LoadMicro(m, make([]byte, MicroCodeMax+1), MicroOptions{})
	assert.Error(t, err)
	_, err = LoadMicro(m, make([]byte, 16), MicroOptions{IDT: map[uint8]uint64{3: MicroCodeAddr + 16}})
	assert.Error(t, err, "handler past the code")
	_, err = LoadMicro(m, make([]byte, 16), MicroOptions{IDT: map[uint8]uint64{3: 0}})
	assert.Error(t, err, "handler below the code")
	small := newMem(t, 1*mib)
	_, err = LoadMicro(small, []byte{0xf4}, MicroOptions{})
	assert.Error(t, err)
	assert.Equal(t, uint64(0), MicroDataRange(small).Size)
}

// kernelPath finds the kernel cached by `make kernel`.
func kernelPath() string {
	if d := os.Getenv("PTVMM_KERNEL_DIR"); d != "" {
		return filepath.Join(d, "vmlinuz")
	}
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".cache", "kernel", "vmlinuz")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func TestRealKernel(t *testing.T) {
	p := kernelPath()
	img, err := os.ReadFile(p)
	if err != nil {
		t.Skipf("no cached kernel (%v); run `make kernel` to test against a real bzImage", err)
	}
	h, err := ParseSetupHeader(img)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, h.Version, uint16(MinProtocol))
	assert.NotZero(t, h.XLoadFlags&XLFKernel64)
	assert.True(t, h.Relocatable)
	assert.NotZero(t, h.InitSize)
	t.Logf("protocol %#x, setup_sects %d, pref_address %#x, init_size %#x, alignment %#x, initrd_addr_max %#x, cmdline_size %d",
		h.Version, h.SetupSects, h.PrefAddress, h.InitSize, h.KernelAlignment, h.InitrdAddrMax, h.CmdlineSize)

	m := newMem(t, 512*mib)
	e, err := LoadLinux(m, LinuxConfig{Kernel: img, Initrd: make([]byte, 8*mib), Cmdline: "console=ttyS0", CPUs: 2})
	require.NoError(t, err)
	assert.Equal(t, uint64(KernelLoadAddr+0x200), e.RIP)
	checkE820(t, e820FromZeroPage(t, m), 512*mib)
	checkACPI(t, m, ACPIAddr, 2)
	// The 64-bit entry of a real kernel: the protected-mode image starts with startup_32
	// and is not zero at +0x200 (startup_64).
	b, err := m.Slice(KernelLoadAddr+0x200, 16)
	require.NoError(t, err)
	assert.NotEqual(t, make([]byte, 16), b)
}
