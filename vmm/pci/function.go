package pci

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"

	"github.com/ptvmm/ptvmm/vmm/bus"
)

// BARKind is a BAR's address space and width.
type BARKind uint8

const (
	BARIO    BARKind = iota + 1 // I/O ports, at most 256 bytes
	BARMem32                    // 32-bit memory
	BARMem64                    // 64-bit memory; takes this BAR slot and the next
)

func (k BARKind) String() string {
	switch k {
	case BARIO:
		return "io"
	case BARMem32:
		return "mem32"
	case BARMem64:
		return "mem64"
	}
	return fmt.Sprintf("barkind(%d)", k)
}

// BAR describes one base address register of a device.
type BAR struct {
	Kind         BARKind
	Prefetchable bool   // memory BARs only
	Size         uint64 // power of two; >= 4 for I/O, >= 16 for memory, page multiple if Host
	// Device handles trapped accesses (exits to the VMM). May be nil for a BAR that
	// holds only the MSI-X table and PBA.
	Device bus.Device
	// Host, if set, is a host mapping (len == Size) installed as guest memory at the
	// BAR's address; the guest then reads and writes it without exits. Memory BARs only;
	// exclusive with Device and with the MSI-X table.
	Host []byte
	// Moved, if set, is called after the BAR starts decoding at addr (mapped) or stops
	// (mapped false), e.g. to move ioeventfds that live inside it. It runs with the
	// function's lock held and must not call back into the Function.
	Moved func(addr uint64, mapped bool)
}

// IntxLine is the device's INTx wire into the interrupt controller: a level-triggered
// irqfd with a resample eventfd. Trigger asserts the line; the interrupt controller
// de-asserts it at the guest's EOI and the VMM then calls Function.Resample.
type IntxLine interface {
	Trigger() error
}

// Spec is what a device model declares; the Root allocates its BARs.
type Spec struct {
	VendorID, DeviceID       uint16
	SubVendorID, SubsystemID uint16
	Revision                 uint8
	Class                    uint32 // class<<16 | subclass<<8 | prog-if
	BARs                     [6]*BAR
	MSIX                     *MSIXSpec // nil: no MSI-X capability
	// Intx, if set, gives the device pin INTA wired to IntxGSI(slot).
	Intx IntxLine
	// Caps are further capabilities (e.g. virtio's vendor-specific ones), chained after
	// MSI-X in this order at 4-byte aligned offsets. They are read-only to the guest.
	Caps []Capability
}

// Capability is one entry of the configuration space's capability list.
type Capability struct {
	ID uint8
	// Body is what follows the ID and next-pointer bytes (its length byte, if the
	// capability has one, included); the root maintains the next pointer.
	Body []byte
}

type barState struct {
	spec     *BAR
	reg      uint64 // programmed address (guest view, without flag bits)
	mapped   bool
	mappedAt uint64
	handle   int // MemoryMapper handle for host-backed BARs
	refused  error
}

// Function is one PCI function's configuration space and decode state.
type Function struct {
	root *Root
	slot int

	mu       sync.Mutex
	cfg      [ConfigSize]byte // byte image of the header (BARs and dynamic bits overlaid)
	capList  bool             // status bit "capabilities list"
	bars     [6]barState
	msix     *MSIX
	intx     IntxLine
	intxHigh bool // device's INTx level (status bit 3)
}

// Slot is the device number on bus 0.
func (f *Function) Slot() int { return f.slot }

// MSIX returns the function's MSI-X capability, or nil.
func (f *Function) MSIX() *MSIX { return f.msix }

// BARAddr returns the address BAR i is programmed to and whether it is decoding there.
func (f *Function) BARAddr(i int) (addr uint64, mapped bool) {
	if i < 0 || i >= 6 {
		return 0, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bars[i].reg, f.bars[i].mapped
}

// BARError returns why BAR i is not mapped at its programmed address (nil if it is
// mapped or decoding is off).
func (f *Function) BARError(i int) error {
	if i < 0 || i >= 6 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bars[i].refused
}

func (f *Function) put16(off int, v uint16) { binary.LittleEndian.PutUint16(f.cfg[off:], v) }
func (f *Function) put32(off int, v uint32) { binary.LittleEndian.PutUint32(f.cfg[off:], v) }
func (f *Function) get16(off int) uint16    { return binary.LittleEndian.Uint16(f.cfg[off:]) }

func validateSpec(s *Spec, haveMapper bool) error {
	for i := 0; i < 6; i++ {
		b := s.BARs[i]
		if b == nil {
			continue
		}
		if b.Size == 0 || bits.OnesCount64(b.Size) != 1 {
			return fmt.Errorf("BAR%d: size %#x is not a power of two", i, b.Size)
		}
		switch b.Kind {
		case BARIO:
			if b.Size < 4 || b.Size > 256 || b.Host != nil || b.Prefetchable {
				return fmt.Errorf("BAR%d: I/O BAR must be 4..256 bytes, trapped, not prefetchable", i)
			}
		case BARMem32, BARMem64:
			if b.Size < 16 {
				return fmt.Errorf("BAR%d: memory BAR smaller than 16 bytes", i)
			}
			if b.Kind == BARMem32 && b.Size > 1<<31 {
				return fmt.Errorf("BAR%d: 32-bit BAR larger than 2 GiB", i)
			}
			if b.Kind == BARMem64 && (i == 5 || s.BARs[i+1] != nil) {
				return fmt.Errorf("BAR%d: a 64-bit BAR needs BAR%d free", i, i+1)
			}
		default:
			return fmt.Errorf("BAR%d: unknown kind %d", i, b.Kind)
		}
		if b.Host != nil {
			if b.Device != nil {
				return fmt.Errorf("BAR%d: both Device and Host set", i)
			}
			if uint64(len(b.Host)) != b.Size || b.Size%4096 != 0 {
				return fmt.Errorf("BAR%d: host mapping of %d bytes for a %#x-byte BAR (must match, page multiple)", i, len(b.Host), b.Size)
			}
			if !haveMapper {
				return fmt.Errorf("BAR%d: host-backed BAR but the root has no MemoryMapper", i)
			}
		}
		if b.Kind == BARMem64 {
			i++
		}
	}
	if m := s.MSIX; m != nil {
		if m.Vectors < 1 || m.Vectors > MSIXMaxVectors {
			return fmt.Errorf("MSI-X: %d vectors (1..%d)", m.Vectors, MSIXMaxVectors)
		}
		if m.BAR < 0 || m.BAR >= 6 || s.BARs[m.BAR] == nil || s.BARs[m.BAR].Kind == BARIO || s.BARs[m.BAR].Host != nil {
			return fmt.Errorf("MSI-X: BAR%d must be a trapped memory BAR", m.BAR)
		}
		size := s.BARs[m.BAR].Size
		tEnd := uint64(m.TableOffset) + uint64(m.Vectors)*MSIXEntrySize
		pEnd := uint64(m.PBAOffset) + uint64((m.Vectors+63)/64*8)
		if m.TableOffset%8 != 0 || m.PBAOffset%8 != 0 || tEnd > size || pEnd > size {
			return fmt.Errorf("MSI-X: table or PBA misaligned or outside BAR%d", m.BAR)
		}
		if uint64(m.TableOffset) < pEnd && uint64(m.PBAOffset) < tEnd {
			return fmt.Errorf("MSI-X: table and PBA overlap")
		}
		if m.Router == nil {
			return fmt.Errorf("MSI-X: no Router")
		}
	}
	if _, ok := capLayout(s); !ok {
		return fmt.Errorf("capabilities do not fit in configuration space (%#x..%#x)", CapOffset, ConfigSize)
	}
	return nil
}

// msixCapSize is the MSI-X capability's length in configuration space.
const msixCapSize = 12

// capLayout returns the configuration-space offset of each of s.Caps (after MSI-X,
// 4-byte aligned) and whether they all fit below ConfigSize.
func capLayout(s *Spec) ([]int, bool) {
	off := CapOffset
	if s.MSIX != nil {
		off += msixCapSize
	}
	offs := make([]int, len(s.Caps))
	for i, c := range s.Caps {
		if len(c.Body) > ConfigSize {
			return nil, false
		}
		offs[i] = off
		off = (off + 2 + len(c.Body) + 3) &^ 3
		if off > ConfigSize {
			return nil, false
		}
	}
	return offs, true
}

func newFunction(r *Root, slot int, s *Spec) *Function {
	f := &Function{root: r, slot: slot, intx: s.Intx}
	f.put16(RegVendorID, s.VendorID)
	f.put16(RegDeviceID, s.DeviceID)
	f.cfg[RegRevision] = s.Revision
	f.cfg[RegClass] = byte(s.Class)
	f.cfg[RegClass+1] = byte(s.Class >> 8)
	f.cfg[RegClass+2] = byte(s.Class >> 16)
	f.put16(RegSubVendorID, s.SubVendorID)
	f.put16(RegSubsystemID, s.SubsystemID)
	for i := range s.BARs {
		f.bars[i].spec = s.BARs[i]
	}
	if s.Intx != nil {
		f.cfg[RegInterruptPin] = 1
		f.cfg[RegInterruptLine] = byte(IntxGSI(slot))
	}
	// Capability list: MSI-X first (at CapOffset, where its control register is
	// decoded), then s.Caps; next points at the byte holding the next pointer.
	next := RegCapPtr
	if s.MSIX != nil {
		f.msix = newMSIX(f, *s.MSIX)
		f.cfg[next], next = CapOffset, CapOffset+1
		f.cfg[CapOffset] = CapIDMSIX
		f.put16(CapOffset+2, uint16(s.MSIX.Vectors-1))
		f.put32(CapOffset+4, s.MSIX.TableOffset|uint32(s.MSIX.BAR))
		f.put32(CapOffset+8, s.MSIX.PBAOffset|uint32(s.MSIX.BAR))
	}
	offs, _ := capLayout(s) // validateSpec checked the fit
	for i, c := range s.Caps {
		o := offs[i]
		f.cfg[next], next = byte(o), o+1
		f.cfg[o] = c.ID
		copy(f.cfg[o+2:], c.Body)
	}
	f.cfg[next] = 0 // last capability (RegCapPtr 0: no list)
	f.capList = next != RegCapPtr
	return f
}

// barFlags are the read-only low bits of BAR i's register.
func (f *Function) barFlags(i int) uint32 {
	b := f.bars[i].spec
	switch b.Kind {
	case BARIO:
		return barIOSpace
	case BARMem64:
		if b.Prefetchable {
			return barMem64 | barPrefetchable
		}
		return barMem64
	default:
		if b.Prefetchable {
			return barPrefetchable
		}
		return 0
	}
}

// syncBARRegs writes BAR i's programmed address into the config image.
func (f *Function) syncBARRegs(i int) {
	b := f.bars[i].spec
	f.put32(RegBAR0+4*i, uint32(f.bars[i].reg)|f.barFlags(i))
	if b.Kind == BARMem64 {
		f.put32(RegBAR0+4*(i+1), uint32(f.bars[i].reg>>32))
	}
}

// ReadConfig reads len(data) (1, 2 or 4) bytes at off. Accesses that are not wholly
// inside the 256-byte space, or of another size, read as all-ones.
func (f *Function) ReadConfig(off int, data []byte) {
	if !cfgAccessOK(off, len(data)) {
		fill(data, 0xff)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	status := f.get16(RegStatus) &^ (StatusInterrupt | StatusCapList)
	if f.intxHigh {
		status |= StatusInterrupt
	}
	if f.capList {
		status |= StatusCapList
	}
	f.put16(RegStatus, status)
	if f.msix != nil {
		f.put16(CapOffset+2, f.msix.control())
	}
	copy(data, f.cfg[off:off+len(data)])
}

func cfgAccessOK(off, n int) bool {
	if n != 1 && n != 2 && n != 4 {
		return false
	}
	return off >= 0 && off+n <= ConfigSize && off/4 == (off+n-1)/4
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

// WriteConfig writes data (1, 2 or 4 bytes) at off. Read-only fields keep their
// values, out-of-range accesses are dropped, as on real hardware.
func (f *Function) WriteConfig(off int, data []byte) {
	if !cfgAccessOK(off, len(data)) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	dw := off &^ 3
	var cur [4]byte
	copy(cur[:], f.cfg[dw:dw+4])
	copy(cur[off-dw:], data)
	v := binary.LittleEndian.Uint32(cur[:])
	// Byte-enable mask of the dword that this access actually touches.
	var be uint32
	for i := off - dw; i < off-dw+len(data); i++ {
		be |= 0xff << (8 * i)
	}
	switch {
	case dw == RegCommand:
		if be&0xffff != 0 {
			f.writeCommand(uint16(v))
		}
		// Status is read-only here (no write-one-to-clear error bits are modelled).
	case dw == RegCacheLine:
		// Cache line size and latency timer are plain read/write bytes; BIST and
		// header type are read-only.
		if be&0xff != 0 {
			f.cfg[RegCacheLine] = byte(v)
		}
		if be&0xff00 != 0 {
			f.cfg[RegLatency] = byte(v >> 8)
		}
	case dw >= RegBAR0 && dw < RegBAR0+24:
		f.writeBAR((dw-RegBAR0)/4, v)
	case dw == RegInterruptLine:
		if be&0xff != 0 {
			f.cfg[RegInterruptLine] = byte(v)
		}
	case f.msix != nil && dw == CapOffset:
		if be&0xffff0000 != 0 {
			f.msix.writeControl(uint16(v >> 16))
		}
	}
	// Everything else (IDs, class, ROM BAR, capability pointers, table offsets) is
	// read-only: an expansion ROM is not implemented, so its BAR reads as zero.
}

func (f *Function) writeCommand(v uint16) {
	old := f.get16(RegCommand)
	nv := v & cmdWritable
	f.put16(RegCommand, nv)
	if (old^nv)&(CmdIO|CmdMemory) != 0 {
		for i := range f.bars {
			if f.bars[i].spec != nil {
				f.remap(i)
			}
		}
	}
	// uio_pci_generic masks with INTx disable in its handler and unmasks from user
	// space: if the device still wants service at unmask, assert the line again.
	if old&CmdIntxDisable != 0 && nv&CmdIntxDisable == 0 {
		f.intxDeliver()
	}
}

// writeBAR handles a dword write to BAR register i (i may be the upper half of a
// 64-bit BAR). Sizing writes (all-ones) read back the size mask, as the hardware
// decoders do, because the address bits below the size are hard-wired to zero.
func (f *Function) writeBAR(i int, v uint32) {
	owner, upper := i, false
	if f.bars[i].spec == nil {
		if i > 0 && f.bars[i-1].spec != nil && f.bars[i-1].spec.Kind == BARMem64 {
			owner, upper = i-1, true
		} else {
			return // unimplemented BAR: reads as zero, writes ignored
		}
	}
	st := &f.bars[owner]
	mask := ^(st.spec.Size - 1)
	if upper {
		st.reg = (uint64(v)<<32 | st.reg&0xffffffff) & mask
	} else if st.spec.Kind == BARMem64 {
		st.reg = (st.reg&^0xffffffff | uint64(v)) & mask
	} else {
		st.reg = uint64(v) & mask & 0xffffffff
	}
	st.reg &^= 0xf
	if st.spec.Kind == BARIO {
		st.reg &= 0xffff // x86 I/O space is 64 KiB; upper bits read as zero
	}
	f.syncBARRegs(owner)
	f.remap(owner)
}

func (f *Function) decodes(i int) bool {
	cmd := f.get16(RegCommand)
	if f.bars[i].spec.Kind == BARIO {
		return cmd&CmdIO != 0
	}
	return cmd&CmdMemory != 0
}

// remap moves BAR i's decoding to match its register and the command register.
func (f *Function) remap(i int) {
	st := &f.bars[i]
	want := f.decodes(i) && st.reg != 0
	if st.mapped && want && st.mappedAt == st.reg {
		return
	}
	if st.mapped {
		f.root.unmapBAR(st)
		st.mapped = false
		if st.spec.Moved != nil {
			st.spec.Moved(st.mappedAt, false)
		}
	}
	st.refused = nil
	if !want {
		return
	}
	if err := f.root.mapBAR(f, i, st); err != nil {
		// The guest put the BAR somewhere illegal: leave it not decoding until it
		// moves it; the rest of the machine is unaffected.
		st.refused = err
		return
	}
	st.mapped, st.mappedAt = true, st.reg
	if st.spec.Moved != nil {
		st.spec.Moved(st.reg, true)
	}
}

// barDevice is what the bus sees for a trapped BAR: MSI-X table and PBA ranges go to
// the MSI-X capability, the rest to the device model.
type barDevice struct {
	f *Function
	i int
}

func (d barDevice) Read(off uint64, data []byte) {
	if m := d.f.msix; m != nil && m.spec.BAR == d.i && m.claims(off, len(data)) {
		m.read(off, data)
		return
	}
	if dev := d.f.bars[d.i].spec.Device; dev != nil {
		dev.Read(off, data)
		return
	}
	fill(data, 0)
}

func (d barDevice) Write(off uint64, data []byte) {
	if m := d.f.msix; m != nil && m.spec.BAR == d.i && m.claims(off, len(data)) {
		m.write(off, data)
		return
	}
	if dev := d.f.bars[d.i].spec.Device; dev != nil {
		dev.Write(off, data)
	}
}

// hostPlaceholder occupies a host-backed BAR's window on the MMIO bus so that
// overlaps are refused there too; KVM serves the accesses from the memslot, so it only
// sees them if the slot could not be installed.
type hostPlaceholder struct{}

func (hostPlaceholder) Read(off uint64, data []byte) { fill(data, 0xff) }
func (hostPlaceholder) Write(uint64, []byte)         {}

// SetIntx sets the device's INTx level. A rising level asserts the line unless the
// guest set INTx disable or enabled MSI-X; the status register's interrupt bit follows
// the level regardless, which is what uio_pci_generic checks.
func (f *Function) SetIntx(level bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rising := level && !f.intxHigh
	f.intxHigh = level
	if rising {
		return f.intxDeliver()
	}
	return nil
}

// Resample is called when the interrupt controller de-asserted the INTx line at the
// guest's EOI (the irqfd resample eventfd fired): if the device still holds its level
// and INTx is not disabled, the line is asserted again.
func (f *Function) Resample() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.intxDeliver()
}

func (f *Function) intxDeliver() error {
	if f.intx == nil || !f.intxHigh || f.get16(RegCommand)&CmdIntxDisable != 0 {
		return nil
	}
	if f.msix != nil && f.msix.enabled() {
		return nil // MSI-X enabled: INTx is not used
	}
	if err := f.intx.Trigger(); err != nil {
		return fmt.Errorf("pci %02x.0: INTx: %w", f.slot, err)
	}
	return nil
}
