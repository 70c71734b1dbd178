package pci

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type fakeMapper struct {
	mu     sync.Mutex
	next   int
	slots  map[int]uint64 // handle -> gpa
	failAt uint64
}

func (m *fakeMapper) MapMemory(gpa uint64, host []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gpa == m.failAt {
		return 0, errors.New("injected")
	}
	if m.slots == nil {
		m.slots = map[int]uint64{}
	}
	m.next++
	m.slots[m.next] = gpa
	return m.next, nil
}

func (m *fakeMapper) UnmapMemory(h int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.slots[h]; !ok {
		return errors.New("no such slot")
	}
	delete(m.slots, h)
	return nil
}

func (m *fakeMapper) gpas() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []uint64
	for _, g := range m.slots {
		out = append(out, g)
	}
	return out
}

type regDev struct {
	mu     sync.Mutex
	writes map[uint64]uint64
}

func (d *regDev) Read(off uint64, data []byte) {
	fill(data, 0)
	binary.LittleEndian.PutUint16(data[:2], uint16(0xab00|off&0xff))
}

func (d *regDev) Write(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.writes == nil {
		d.writes = map[uint64]uint64{}
	}
	var b [8]byte
	copy(b[:], data)
	d.writes[off] = binary.LittleEndian.Uint64(b[:])
}

type fakeRouter struct {
	mu     sync.Mutex
	routes map[int][2]uint64 // vector -> addr, data
	fired  []int
}

func (r *fakeRouter) RouteMSI(v int, addr uint64, data uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.routes == nil {
		r.routes = map[int][2]uint64{}
	}
	r.routes[v] = [2]uint64{addr, uint64(data)}
	return nil
}

func (r *fakeRouter) FireMSI(v int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fired = append(r.fired, v)
	return nil
}

type fakeLine struct{ n int }

func (l *fakeLine) Trigger() error { l.n++; return nil }

type rig struct {
	pio, mmio *bus.Bus
	root      *Root
	mapper    *fakeMapper
}

const ramSize = 0x1000_0000

func newRig(t testing.TB) *rig {
	t.Helper()
	g := &rig{pio: bus.New("pio"), mmio: bus.New("mmio"), mapper: &fakeMapper{failAt: 1}}
	var err error
	g.root, err = NewRoot(Config{PIO: g.pio, MMIO: g.mmio, Mapper: g.mapper,
		Reserved: []memory.Range{{GPA: 0, Size: ramSize}}})
	require.NoError(t, err)
	return g
}

// cfgRead goes through the 0xCF8/0xCFC ports the way a guest does.
func (g *rig) cfgRead(slot, reg, n int) uint32 {
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], 0x8000_0000|uint32(slot)<<11|uint32(reg&0xfc))
	g.pio.Write(PortConfigAddress, a[:])
	d := make([]byte, 4)
	g.pio.Read(PortConfigData+uint64(reg&3), d[:n])
	return binary.LittleEndian.Uint32(d)
}

func (g *rig) cfgWrite(slot, reg, n int, v uint32) {
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], 0x8000_0000|uint32(slot)<<11|uint32(reg&0xfc))
	g.pio.Write(PortConfigAddress, a[:])
	d := make([]byte, 4)
	binary.LittleEndian.PutUint32(d, v)
	g.pio.Write(PortConfigData+uint64(reg&3), d[:n])
}

func mmioRead32(b *bus.Bus, addr uint64) (uint32, bool) {
	d := make([]byte, 4)
	ok := b.Read(addr, d)
	return binary.LittleEndian.Uint32(d), ok
}

func mmioWrite32(b *bus.Bus, addr uint64, v uint32) bool {
	d := make([]byte, 4)
	binary.LittleEndian.PutUint32(d, v)
	return b.Write(addr, d)
}

func fullSpec(r *fakeRouter, host []byte, line IntxLine) Spec {
	return Spec{
		VendorID: 0x1b36, DeviceID: 0x000c, SubVendorID: 0x1af4, SubsystemID: 0x1100, Class: 0x020000,
		BARs: [6]*BAR{
			{Kind: BARIO, Size: 32, Device: &regDev{}},
			{Kind: BARMem32, Size: 0x1000, Device: &regDev{}},
			{Kind: BARMem64, Prefetchable: true, Size: uint64(len(host)), Host: host},
		},
		MSIX: &MSIXSpec{Vectors: 3, BAR: 1, TableOffset: 0x800, PBAOffset: 0xc00, Router: r},
		Intx: line,
		Caps: testCaps(),
	}
}

// testCaps are vendor capabilities shaped like virtio's (length byte first; one odd
// length so the next one has to be realigned).
func testCaps() []Capability {
	return []Capability{
		{ID: 0x09, Body: []byte{16, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0}},
		{ID: 0x09, Body: []byte{19, 2, 4, 0, 0, 0, 0, 0x30, 0, 0, 0x0c, 0, 0, 0, 4, 0, 0}},
		{ID: 0x09, Body: []byte{16, 3, 4, 0, 0, 0, 0, 0x10, 0, 0, 1, 0, 0, 0}},
	}
}

// walkCaps follows the capability list from RegCapPtr through the config ports and
// returns each capability's offset; it fails on a loop or a misplaced pointer.
func walkCaps(t *testing.T, g *rig, slot int) []int {
	t.Helper()
	var offs []int
	seen := map[int]bool{}
	for p := int(g.cfgRead(slot, RegCapPtr, 1)); p != 0; p = int(g.cfgRead(slot, p+1, 1)) {
		require.False(t, seen[p], "capability list loops at %#x", p)
		require.True(t, p >= CapOffset && p < ConfigSize && p%4 == 0, "capability pointer %#x", p)
		seen[p] = true
		offs = append(offs, p)
	}
	return offs
}

func TestHostBridgeAndMechanism1(t *testing.T) {
	g := newRig(t)
	assert.Equal(t, uint32(BridgeDeviceID<<16|BridgeVendorID), g.cfgRead(0, 0, 4))
	assert.Equal(t, uint32(0x06), g.cfgRead(0, 0x0b, 1), "class byte: bridge")
	// Absent slot, other bus, other function and the disabled bit all read all-ones.
	assert.Equal(t, uint32(0xffffffff), g.cfgRead(5, 0, 4))
	var a [4]byte
	for _, addr := range []uint32{0x8001_0000, 0x8000_0100, 0x0000_0000} {
		binary.LittleEndian.PutUint32(a[:], addr)
		g.pio.Write(PortConfigAddress, a[:])
		v, _ := mmioRead32(g.pio, PortConfigData)
		assert.Equal(t, uint32(0xffffffff), v, "address %#x", addr)
	}
	// The address register reads back with its reserved low bits clear.
	binary.LittleEndian.PutUint32(a[:], 0x8000_0807)
	g.pio.Write(PortConfigAddress, a[:])
	v, _ := mmioRead32(g.pio, PortConfigAddress)
	assert.Equal(t, uint32(0x8000_0804), v)
	// A byte write to 0xCF8 does not change the address register.
	g.pio.Write(PortConfigAddress, []byte{0})
	v, _ = mmioRead32(g.pio, PortConfigAddress)
	assert.Equal(t, uint32(0x8000_0804), v)
}

func TestBARAllocationSizingAndMove(t *testing.T) {
	g := newRig(t)
	r := &fakeRouter{}
	host := make([]byte, 0x4000)
	f, err := g.root.Add(-1, fullSpec(r, host, nil))
	require.NoError(t, err)
	s := f.Slot()
	assert.Equal(t, 1, s)

	io := g.cfgRead(s, RegBAR0, 4)
	assert.Equal(t, uint32(DefaultIOBase|1), io)
	m32 := g.cfgRead(s, RegBAR0+4, 4)
	assert.Equal(t, uint32(DefaultMemBase), m32)
	lo, hi := g.cfgRead(s, RegBAR0+8, 4), g.cfgRead(s, RegBAR0+12, 4)
	assert.Equal(t, uint32(0xc), lo&0xf, "64-bit prefetchable flags")
	gpa64 := uint64(hi)<<32 | uint64(lo&^0xf)
	assert.Equal(t, []uint64{gpa64}, g.mapper.gpas(), "host BAR installed at its address")
	assert.Equal(t, uint32(CmdIO|CmdMemory), g.cfgRead(s, RegCommand, 2))
	assert.NotZero(t, g.cfgRead(s, RegStatus, 2)&StatusCapList)

	// Trapped access reaches the device model at the offset.
	v, ok := mmioRead32(g.mmio, DefaultMemBase+0x10)
	require.True(t, ok)
	assert.Equal(t, uint32(0xab10), v)

	// Sizing as Linux does it: decode off, all-ones, read, restore.
	g.cfgWrite(s, RegCommand, 2, 0)
	assert.Empty(t, g.mapper.gpas(), "decode off unmaps the host BAR")
	_, ok = mmioRead32(g.mmio, DefaultMemBase)
	assert.False(t, ok, "decode off unmaps trapped BARs")
	for i, want := range []uint32{^uint32(32-1) | 1, ^uint32(0x1000 - 1), ^uint32(0x4000-1) | 0xc, 0xffffffff, 0, 0} {
		old := g.cfgRead(s, RegBAR0+4*i, 4)
		g.cfgWrite(s, RegBAR0+4*i, 4, 0xffffffff)
		got := g.cfgRead(s, RegBAR0+4*i, 4)
		if i == 0 {
			got |= 0xffff0000 // I/O BARs decode 16 bits; Linux masks the same way
		}
		assert.Equal(t, want, got, "BAR%d size mask", i)
		g.cfgWrite(s, RegBAR0+4*i, 4, old)
	}

	// Move the 32-bit BAR and the host BAR, then enable decoding.
	g.cfgWrite(s, RegBAR0+4, 4, 0xd000_0000)
	g.cfgWrite(s, RegBAR0+8, 4, 0xd010_0000)
	g.cfgWrite(s, RegBAR0+12, 4, 0)
	g.cfgWrite(s, RegCommand, 2, CmdMemory|CmdIO)
	_, ok = mmioRead32(g.mmio, DefaultMemBase)
	assert.False(t, ok, "old address no longer decodes")
	v, ok = mmioRead32(g.mmio, 0xd000_0004)
	assert.True(t, ok)
	assert.Equal(t, uint32(0xab04), v)
	assert.Equal(t, []uint64{0xd010_0000}, g.mapper.gpas(), "host BAR moved, not copied")
	a, mapped := f.BARAddr(2)
	assert.Equal(t, uint64(0xd010_0000), a)
	assert.True(t, mapped)
}

func TestBAROverlapRefused(t *testing.T) {
	g := newRig(t)
	f, err := g.root.Add(3, fullSpec(&fakeRouter{}, make([]byte, 0x4000), nil))
	require.NoError(t, err)
	other, err := g.root.Add(4, Spec{VendorID: 1, BARs: [6]*BAR{{Kind: BARMem32, Size: 0x1000, Device: &regDev{}}}})
	require.NoError(t, err)
	otherAddr, _ := other.BARAddr(0)

	// Over RAM: refused, nothing decodes there, error says why.
	g.cfgWrite(3, RegBAR0+4, 4, 0x0010_0000)
	_, mapped := f.BARAddr(1)
	assert.False(t, mapped)
	assert.ErrorIs(t, f.BARError(1), ErrReserved)
	_, ok := mmioRead32(g.mmio, 0x0010_0000)
	assert.False(t, ok)

	// Host BAR over RAM: no memslot over RAM.
	g.cfgWrite(3, RegBAR0+12, 4, 0)
	g.cfgWrite(3, RegBAR0+8, 4, 0x0020_0000)
	assert.Empty(t, g.mapper.gpas())
	assert.ErrorIs(t, f.BARError(2), ErrReserved)

	// Over another BAR: refused; the other device keeps decoding.
	g.cfgWrite(3, RegBAR0+4, 4, uint32(otherAddr))
	assert.ErrorIs(t, f.BARError(1), bus.ErrOverlap)
	v, ok := mmioRead32(g.mmio, otherAddr+8)
	assert.True(t, ok)
	assert.Equal(t, uint32(0xab08), v)

	// Straddling the 4 GiB boundary through the 64-bit BAR's halves, and a wrap: refused.
	g.cfgWrite(3, RegBAR0+12, 4, 0xffffffff)
	g.cfgWrite(3, RegBAR0+8, 4, 0xffffc000)
	_, mapped = f.BARAddr(2)
	assert.False(t, mapped)
	assert.Error(t, f.BARError(2))

	// An I/O BAR onto the config ports: refused.
	g.cfgWrite(3, RegBAR0, 4, PortConfigAddress&^31)
	assert.ErrorIs(t, f.BARError(0), bus.ErrOverlap)

	// Moving back somewhere legal recovers.
	g.cfgWrite(3, RegBAR0+4, 4, 0xe000_0000)
	_, mapped = f.BARAddr(1)
	assert.True(t, mapped)
	assert.NoError(t, f.BARError(1))

	// A memslot failure is also a refusal, not a crash.
	g.mapper.failAt = 0xe100_0000
	g.cfgWrite(3, RegBAR0+12, 4, 0)
	g.cfgWrite(3, RegBAR0+8, 4, 0xe100_0000)
	assert.Error(t, f.BARError(2))
	_, ok = mmioRead32(g.mmio, 0xe100_0000)
	assert.False(t, ok, "placeholder released when the memslot failed")
}

func TestConfigOutOfRange(t *testing.T) {
	g := newRig(t)
	f, err := g.root.Add(2, fullSpec(&fakeRouter{}, make([]byte, 0x4000), nil))
	require.NoError(t, err)
	before := make([]byte, ConfigSize)
	for off := 0; off < ConfigSize; off += 4 {
		f.ReadConfig(off, before[off:off+4])
	}
	for _, c := range []struct{ off, n int }{{254, 4}, {256, 1}, {1 << 20, 4}, {-4, 4}, {0, 3}, {0, 8}, {3, 2}, {0x10, 0}} {
		d := make([]byte, c.n)
		f.ReadConfig(c.off, d)
		for _, b := range d {
			assert.Equal(t, byte(0xff), b, "read at %d len %d", c.off, c.n)
		}
		w := make([]byte, c.n)
		f.WriteConfig(c.off, w) // must be ignored
	}
	after := make([]byte, ConfigSize)
	for off := 0; off < ConfigSize; off += 4 {
		f.ReadConfig(off, after[off:off+4])
	}
	assert.Equal(t, before, after)
	// Read-only fields stay put.
	g.cfgWrite(2, RegVendorID, 4, 0)
	g.cfgWrite(2, RegCapPtr, 1, 0)
	g.cfgWrite(2, RegROM, 4, 0xffffffff)
	assert.Equal(t, uint32(0x000c1b36), g.cfgRead(2, 0, 4))
	assert.Equal(t, uint32(CapOffset), g.cfgRead(2, RegCapPtr, 1))
	assert.Equal(t, uint32(0), g.cfgRead(2, RegROM, 4), "no expansion ROM")
}

func TestCapabilityList(t *testing.T) {
	g := newRig(t)
	_, err := g.root.Add(3, fullSpec(&fakeRouter{}, make([]byte, 0x4000), nil))
	require.NoError(t, err)
	assert.NotZero(t, g.cfgRead(3, RegStatus, 2)&StatusCapList)
	offs := walkCaps(t, g, 3)
	caps := testCaps()
	require.Len(t, offs, 1+len(caps), "MSI-X plus the vendor capabilities")
	assert.Equal(t, CapOffset, offs[0])
	assert.Equal(t, uint32(CapIDMSIX), g.cfgRead(3, offs[0], 1))
	check := func() {
		for i, c := range caps {
			o := offs[1+i]
			assert.Equal(t, uint32(c.ID), g.cfgRead(3, o, 1), "cap %d id", i)
			for k, b := range c.Body {
				assert.Equal(t, uint32(b), g.cfgRead(3, o+2+k, 1), "cap %d byte %d", i, 2+k)
			}
			if i > 0 {
				prev := offs[i]
				assert.GreaterOrEqual(t, o, prev+2+len(caps[i-1].Body), "cap %d overlaps the previous one", i)
			}
		}
	}
	check()
	// The guest can change none of it: not the bytes, not the chain.
	before := make([]uint32, ConfigSize/4)
	for o := CapOffset; o < ConfigSize; o += 4 {
		before[o/4] = g.cfgRead(3, o, 4)
	}
	for o := offs[1]; o < ConfigSize; o++ {
		g.cfgWrite(3, o, 1, 0xa5)
	}
	for o := offs[1]; o < ConfigSize; o += 2 {
		g.cfgWrite(3, o, 2, 0)
	}
	for o := offs[1]; o < ConfigSize; o += 4 {
		g.cfgWrite(3, o, 4, 0xffffffff)
	}
	g.cfgWrite(3, CapOffset, 1, 0) // MSI-X ID and next pointer
	g.cfgWrite(3, CapOffset+1, 1, 0)
	g.cfgWrite(3, RegCapPtr, 1, 0x80)
	for o := CapOffset; o < ConfigSize; o += 4 {
		assert.Equal(t, before[o/4], g.cfgRead(3, o, 4), "config dword %#x changed by guest writes", o)
	}
	assert.Equal(t, offs, walkCaps(t, g, 3))
	check()

	// Without MSI-X the vendor capabilities start the list; without any, no list.
	_, err = g.root.Add(4, Spec{VendorID: 1, Caps: caps[:1]})
	require.NoError(t, err)
	assert.Equal(t, []int{CapOffset}, walkCaps(t, g, 4))
	assert.NotZero(t, g.cfgRead(4, RegStatus, 2)&StatusCapList)
	_, err = g.root.Add(5, Spec{VendorID: 1})
	require.NoError(t, err)
	assert.Empty(t, walkCaps(t, g, 5))
	assert.Zero(t, g.cfgRead(5, RegStatus, 2)&StatusCapList)
}

func TestCapabilitiesMustFit(t *testing.T) {
	g := newRig(t)
	r := &fakeRouter{}
	// 12 bytes of MSI-X at 0x40, then 0x4c..0x100 = 180 bytes: a 178-byte body fits
	// exactly, one more byte does not.
	fits := Spec{VendorID: 1, BARs: [6]*BAR{{Kind: BARMem32, Size: 0x1000}},
		MSIX: &MSIXSpec{Vectors: 1, BAR: 0, PBAOffset: 0x800, Router: r},
		Caps: []Capability{{ID: 9, Body: make([]byte, ConfigSize-CapOffset-msixCapSize-2)}}}
	_, err := g.root.Add(1, fits)
	require.NoError(t, err)
	offs := walkCaps(t, g, 1)
	assert.Equal(t, []int{CapOffset, CapOffset + msixCapSize}, offs)
	tooBig := fits
	tooBig.Caps = []Capability{{ID: 9, Body: make([]byte, ConfigSize-CapOffset-msixCapSize-1)}}
	_, err = g.root.Add(2, tooBig)
	assert.ErrorContains(t, err, "do not fit")
	many := Spec{VendorID: 1}
	for i := 0; i < 12; i++ {
		many.Caps = append(many.Caps, Capability{ID: 9, Body: make([]byte, 18)})
	}
	_, err = g.root.Add(2, many)
	assert.ErrorContains(t, err, "do not fit", "12 x 20 bytes after 0x40")
	_, err = g.root.Add(2, Spec{VendorID: 1, Caps: []Capability{{ID: 9, Body: make([]byte, 1<<20)}}})
	assert.ErrorContains(t, err, "do not fit")
}

func TestMSIX(t *testing.T) {
	g := newRig(t)
	r := &fakeRouter{}
	f, err := g.root.Add(1, fullSpec(r, make([]byte, 0x4000), nil))
	require.NoError(t, err)
	m := f.MSIX()
	bar, _ := f.BARAddr(1)
	tbl, pba := bar+0x800, bar+0xc00

	assert.Equal(t, uint32(CapIDMSIX), g.cfgRead(1, CapOffset, 1))
	assert.Equal(t, uint32(2), g.cfgRead(1, CapOffset+2, 2), "table size - 1")
	assert.Equal(t, uint32(0x800|1), g.cfgRead(1, CapOffset+4, 4))
	assert.Equal(t, uint32(0xc00|1), g.cfgRead(1, CapOffset+8, 4))

	// Program vector 1 while MSI-X is disabled: nothing is routed yet.
	mmioWrite32(g.mmio, tbl+16, 0xfee0_1000)
	mmioWrite32(g.mmio, tbl+16+4, 0)
	mmioWrite32(g.mmio, tbl+16+8, 0x4041)
	mmioWrite32(g.mmio, tbl+16+12, 0)
	assert.Empty(t, r.routes)
	// Fire while disabled: pending bit.
	require.NoError(t, m.Fire(1))
	p, _ := mmioRead32(g.mmio, pba)
	assert.Equal(t, uint32(2), p)
	assert.Empty(t, r.fired)

	// Enable: route installed, pending delivered once, PBA clear.
	g.cfgWrite(1, CapOffset+2, 2, MSIXCtrlEnable)
	assert.Equal(t, [2]uint64{0xfee0_1000, 0x4041}, r.routes[1])
	assert.Equal(t, []int{1}, r.fired)
	p, _ = mmioRead32(g.mmio, pba)
	assert.Zero(t, p)
	assert.Equal(t, uint32(MSIXCtrlEnable|2), g.cfgRead(1, CapOffset+2, 2))

	// Rewrite the unmasked entry: re-routed.
	mmioWrite32(g.mmio, tbl+16+8, 0x4042)
	assert.Equal(t, [2]uint64{0xfee0_1000, 0x4042}, r.routes[1])
	// Entry mask: fire goes pending; unmask delivers.
	mmioWrite32(g.mmio, tbl+16+12, 1)
	require.NoError(t, m.Fire(1))
	assert.True(t, m.Pending(1))
	assert.Len(t, r.fired, 1)
	mmioWrite32(g.mmio, tbl+16+12, 0)
	assert.Equal(t, []int{1, 1}, r.fired)
	// Function mask.
	g.cfgWrite(1, CapOffset+2, 2, MSIXCtrlEnable|MSIXCtrlMaskAll)
	require.NoError(t, m.Fire(1))
	assert.Len(t, r.fired, 2)
	g.cfgWrite(1, CapOffset+2, 2, MSIXCtrlEnable)
	assert.Len(t, r.fired, 3)

	// Bad input: PBA writes, misaligned and odd-sized table accesses, vectors out of
	// range, accesses past the table.
	mmioWrite32(g.mmio, pba, 0xffffffff)
	p, _ = mmioRead32(g.mmio, pba)
	assert.Zero(t, p)
	g.mmio.Write(tbl+16+9, []byte{0xff})
	g.mmio.Write(tbl+16+2, []byte{1, 2, 3, 4})
	g.mmio.Write(tbl+16+6, []byte{1, 2})
	a, d, masked := m.Message(1)
	assert.Equal(t, uint64(0xfee0_1000), a)
	assert.Equal(t, uint32(0x4042), d)
	assert.False(t, masked)
	assert.Error(t, m.Fire(3))
	assert.Error(t, m.Fire(-1))
	mmioWrite32(g.mmio, tbl+3*16, 0x1234) // just past the table: goes to the device model
	v, _ := mmioRead32(g.mmio, tbl+2*16+12)
	assert.Equal(t, uint32(1), v, "vector 2 still masked")
	// A qword write of the address works.
	q := make([]byte, 8)
	binary.LittleEndian.PutUint64(q, 0x1_fee0_2000)
	g.mmio.Write(tbl+32, q)
	a, _, _ = m.Message(2)
	assert.Equal(t, uint64(0x1_fee0_2000), a)
}

func TestIntxDisableAsUIO(t *testing.T) {
	g := newRig(t)
	line := &fakeLine{}
	f, err := g.root.Add(5, fullSpec(&fakeRouter{}, make([]byte, 0x4000), line))
	require.NoError(t, err)
	assert.Equal(t, uint32(1), g.cfgRead(5, RegInterruptPin, 1))
	assert.Equal(t, IntxGSI(5), g.cfgRead(5, RegInterruptLine, 1))

	require.NoError(t, f.SetIntx(true))
	assert.Equal(t, 1, line.n)
	assert.NotZero(t, g.cfgRead(5, RegStatus, 2)&StatusInterrupt)
	// uio_pci_generic's handler: status bit set -> set INTx disable. EOI -> resample.
	g.cfgWrite(5, RegCommand, 2, g.cfgRead(5, RegCommand, 2)|CmdIntxDisable)
	require.NoError(t, f.Resample())
	assert.Equal(t, 1, line.n, "masked: no re-assert at EOI")
	// User space unmasks while the device still holds the level: asserted again.
	g.cfgWrite(5, RegCommand, 2, g.cfgRead(5, RegCommand, 2)&^CmdIntxDisable)
	assert.Equal(t, 2, line.n)
	// Device drops the level; the next EOI does not re-assert.
	require.NoError(t, f.SetIntx(false))
	assert.Zero(t, g.cfgRead(5, RegStatus, 2)&StatusInterrupt)
	require.NoError(t, f.Resample())
	assert.Equal(t, 2, line.n)
	// With MSI-X enabled INTx stays quiet.
	g.cfgWrite(5, CapOffset+2, 2, MSIXCtrlEnable)
	require.NoError(t, f.SetIntx(true))
	assert.Equal(t, 2, line.n)
}

func TestAddRejectsBadSpecs(t *testing.T) {
	g := newRig(t)
	r := &fakeRouter{}
	bad := []Spec{
		{BARs: [6]*BAR{{Kind: BARMem32, Size: 0x1800, Device: &regDev{}}}},
		{BARs: [6]*BAR{{Kind: BARIO, Size: 512, Device: &regDev{}}}},
		{BARs: [6]*BAR{5: {Kind: BARMem64, Size: 0x1000}}},
		{BARs: [6]*BAR{{Kind: BARMem64, Size: 0x1000}, {Kind: BARIO, Size: 4}}},
		{BARs: [6]*BAR{{Kind: BARMem32, Size: 0x2000, Host: make([]byte, 0x1000)}}},
		{BARs: [6]*BAR{{Kind: BARMem32, Size: 0x1000}}, MSIX: &MSIXSpec{Vectors: 300, BAR: 0, Router: r}},
		{BARs: [6]*BAR{{Kind: BARMem32, Size: 0x1000}}, MSIX: &MSIXSpec{Vectors: 1, BAR: 0, PBAOffset: 8, Router: r}},
		{BARs: [6]*BAR{{Kind: BARMem32, Size: 0x1000}}, MSIX: &MSIXSpec{Vectors: 0, BAR: 0, Router: r}},
		{BARs: [6]*BAR{{Kind: 9, Size: 0x1000}}},
	}
	for i, s := range bad {
		_, err := g.root.Add(-1, s)
		assert.Error(t, err, "spec %d", i)
	}
	_, err := g.root.Add(0, Spec{})
	assert.Error(t, err, "slot 0 is the host bridge")
	for i := 1; i < 32; i++ {
		s, err := g.root.FreeSlot()
		require.NoError(t, err)
		require.Equal(t, i, s)
		_, err = g.root.Add(s, Spec{VendorID: 1})
		require.NoError(t, err)
	}
	_, err = g.root.FreeSlot()
	assert.Error(t, err, "bus full")
	_, err = g.root.Add(-1, Spec{VendorID: 1})
	assert.Error(t, err, "bus full")
	_, err = g.root.Add(32, Spec{})
	assert.Error(t, err)
}

// FuzzConfigWrites drives config space and BAR windows with arbitrary guest writes:
// nothing may panic, and no memory BAR may ever decode over RAM.
func FuzzConfigWrites(f *testing.F) {
	f.Add([]byte{0x04, 4, 0xff, 0xff, 0xff, 0xff, 0x14, 4, 0, 0, 0x10, 0})
	f.Add([]byte{0x42, 2, 0x00, 0x80, 0x18, 4, 0, 0, 0, 0xd0})
	f.Fuzz(func(t *testing.T, prog []byte) {
		g := newRig(t)
		fn, err := g.root.Add(1, fullSpec(&fakeRouter{}, make([]byte, 0x4000), &fakeLine{}))
		require.NoError(t, err)
		// Everything past the MSI-X capability is read-only vendor capabilities.
		capsBefore := make([]byte, ConfigSize-CapOffset-msixCapSize)
		for o := 0; o < len(capsBefore); o += 4 {
			fn.ReadConfig(CapOffset+msixCapSize+o, capsBefore[o:o+4])
		}
		for len(prog) >= 6 {
			off, n := int(prog[0]), int(prog[1]%5)
			v := binary.LittleEndian.Uint32(prog[2:6])
			prog = prog[6:]
			if n == 3 {
				// Use this op for a BAR-window access instead.
				// Offsets up to 0xff0 cover the MSI-X table (0x800) and PBA (0xc00).
				if a, ok := fn.BARAddr(1); ok {
					mmioWrite32(g.mmio, a+uint64(off)*16+uint64(v>>30), v)
				}
				continue
			}
			d := make([]byte, n)
			for i := range d {
				d[i] = byte(v >> (8 * i))
			}
			fn.WriteConfig(off, d)
			fn.ReadConfig(off, d)
		}
		capsAfter := make([]byte, len(capsBefore))
		for o := 0; o < len(capsAfter); o += 4 {
			fn.ReadConfig(CapOffset+msixCapSize+o, capsAfter[o:o+4])
		}
		assert.Equal(t, capsBefore, capsAfter, "guest writes changed the vendor capabilities")
		for _, gpa := range g.mapper.gpas() {
			assert.GreaterOrEqual(t, gpa, uint64(ramSize))
		}
		for i := 1; i < 3; i++ {
			if a, ok := fn.BARAddr(i); ok {
				assert.GreaterOrEqual(t, a, uint64(ramSize))
			}
		}
	})
}

// FuzzMSIXTable feeds arbitrary guest accesses (offset, size, value) to the MSI-X
// table and PBA: no panic, reserved bits stay clear, only real vectors are routed or fired.
func FuzzMSIXTable(f *testing.F) {
	f.Add([]byte{0x00, 0x08, 4, 0, 0, 0xe0, 0xfe, 0x0c, 0x08, 4, 0, 0, 0, 0})
	f.Add([]byte{0x00, 0x0c, 8, 1, 2, 3, 4, 0x31, 0x08, 1, 0xff, 0, 0, 0})
	f.Fuzz(func(t *testing.T, prog []byte) {
		r := &fakeRouter{}
		g := newRig(t)
		fn, err := g.root.Add(1, fullSpec(r, make([]byte, 0x4000), nil))
		require.NoError(t, err)
		fn.WriteConfig(CapOffset+2, []byte{0, 0x80}) // MSI-X on
		bar, _ := fn.BARAddr(1)
		for len(prog) >= 7 {
			off := uint64(binary.LittleEndian.Uint16(prog[0:2])) & 0xfff
			n := []int{1, 2, 4, 8}[prog[2]%4]
			d := make([]byte, 8)
			copy(d, prog[3:7])
			prog = prog[7:]
			g.mmio.Write(bar+off, d[:n])
			g.mmio.Read(bar+off, d[:n])
		}
		m := fn.MSIX()
		for v := 0; v < m.Vectors(); v++ {
			_ = m.Fire(v)
			tblCtrl, _ := mmioRead32(g.mmio, bar+0x800+uint64(v)*16+12)
			assert.LessOrEqual(t, tblCtrl, uint32(1), "reserved vector-control bits")
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for v := range r.routes {
			assert.Less(t, v, m.Vectors())
		}
		for _, v := range r.fired {
			assert.Less(t, v, m.Vectors())
		}
	})
}

type nopRouter struct{}

func (nopRouter) RouteMSI(int, uint64, uint32) error { return nil }
func (nopRouter) FireMSI(int) error                  { return nil }

// BenchmarkMSIXFire is the device-side cost of raising a vector (mask check and PBA
// bookkeeping) on top of the router's irqfd write.
func BenchmarkMSIXFire(b *testing.B) {
	g := newRig(b)
	f, err := g.root.Add(1, Spec{BARs: [6]*BAR{{Kind: BARMem32, Size: 0x1000}},
		MSIX: &MSIXSpec{Vectors: 4, BAR: 0, TableOffset: 0, PBAOffset: 0x800, Router: nopRouter{}}})
	require.NoError(b, err)
	f.WriteConfig(CapOffset+2, []byte{0, 0x80})
	bar, _ := f.BARAddr(0)
	mmioWrite32(g.mmio, bar+12, 0)
	m := f.MSIX()
	for b.Loop() {
		if err := m.Fire(0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConfigRead is one guest dword read through 0xCF8/0xCFC (after the exit).
func BenchmarkConfigRead(b *testing.B) {
	g := newRig(b)
	_, err := g.root.Add(1, fullSpec(&fakeRouter{}, make([]byte, 0x4000), nil))
	require.NoError(b, err)
	for b.Loop() {
		g.cfgRead(1, RegBAR0, 4)
	}
}
