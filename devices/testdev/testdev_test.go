package testdev

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// fakeLine counts INTx assertions.
type fakeLine struct {
	mu sync.Mutex
	n  int
}

func (l *fakeLine) Trigger() error { l.mu.Lock(); l.n++; l.mu.Unlock(); return nil }
func (l *fakeLine) count() int     { l.mu.Lock(); defer l.mu.Unlock(); return l.n }

// fakeRouter records MSI-X routes and deliveries.
type fakeRouter struct {
	mu     sync.Mutex
	routes map[int]uint32
	fired  []int
}

func (r *fakeRouter) RouteMSI(v int, addr uint64, data uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.routes == nil {
		r.routes = map[int]uint32{}
	}
	r.routes[v] = data
	return nil
}

func (r *fakeRouter) FireMSI(v int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fired = append(r.fired, v)
	return nil
}

func (r *fakeRouter) firedList() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.fired...)
}

// rig is a device on a PCI root without KVM: BAR accesses go through the MMIO bus
// at the address the root assigned, config accesses through the function.
type rig struct {
	t      *testing.T
	d      *Device
	f      *pci.Function
	mmio   *bus.Bus
	line   *fakeLine
	router *fakeRouter
}

func newRig(t *testing.T, vectors int) *rig {
	t.Helper()
	pio, mmio := bus.New("pio"), bus.New("mmio")
	root, err := pci.NewRoot(pci.Config{PIO: pio, MMIO: mmio})
	require.NoError(t, err)
	d, err := New(Config{Vectors: vectors})
	require.NoError(t, err)
	r := &rig{t: t, d: d, mmio: mmio, line: &fakeLine{}, router: &fakeRouter{}}
	r.f, err = root.Add(3, d.Spec(r.line, r.router))
	require.NoError(t, err)
	d.Attach(r.f)
	return r
}

func (r *rig) bar(i int) uint64 {
	a, mapped := r.f.BARAddr(i)
	require.True(r.t, mapped, "BAR%d not decoding", i)
	return a
}

func (r *rig) read32(bar int, off uint64) uint32 {
	var b [4]byte
	require.True(r.t, r.mmio.Read(r.bar(bar)+off, b[:]), "no device at BAR%d+%#x", bar, off)
	return binary.LittleEndian.Uint32(b[:])
}

func (r *rig) write32(bar int, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	require.True(r.t, r.mmio.Write(r.bar(bar)+off, b[:]), "no device at BAR%d+%#x", bar, off)
}

func (r *rig) cfg16(off int) uint16 {
	var b [2]byte
	r.f.ReadConfig(off, b[:])
	return binary.LittleEndian.Uint16(b[:])
}

func (r *rig) setCfg16(off int, v uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	r.f.WriteConfig(off, b[:])
}

func TestIdentityAndScratch(t *testing.T) {
	r := newRig(t, 0)
	assert.Equal(t, uint16(VendorID), r.cfg16(pci.RegVendorID))
	assert.Equal(t, uint16(DeviceID), r.cfg16(pci.RegDeviceID))
	assert.Equal(t, uint32(Magic), r.read32(0, RegID))
	assert.Zero(t, r.read32(0, RegVectors))
	r.write32(0, RegScratch, 0xdeadbeef)
	assert.Equal(t, uint32(0xdeadbeef), r.read32(0, RegScratch))
	r.write32(0, RegID, 1) // read-only
	assert.Equal(t, uint32(Magic), r.read32(0, RegID))

	// Only aligned dwords: a byte write leaves scratch alone, odd reads are zero.
	require.True(t, r.mmio.Write(r.bar(0)+RegScratch, []byte{0x11}))
	assert.Equal(t, uint32(0xdeadbeef), r.read32(0, RegScratch))
	var b [4]byte
	require.True(t, r.mmio.Read(r.bar(0)+RegScratch+1, b[:]))
	assert.Equal(t, [4]byte{}, b)
	var q [8]byte
	require.True(t, r.mmio.Read(r.bar(0)+RegID, q[:]))
	assert.Equal(t, [8]byte{}, q)

	// INTx mode: pin INTA, no MSI-X BAR.
	var pin [1]byte
	r.f.ReadConfig(pci.RegInterruptPin, pin[:])
	assert.Equal(t, byte(1), pin[0])
	_, mapped := r.f.BARAddr(2)
	assert.False(t, mapped)
	assert.Nil(t, r.f.MSIX())
}

func TestINTxLevelAndAck(t *testing.T) {
	r := newRig(t, 0)
	r.write32(0, RegRaise, 0)
	assert.Equal(t, 1, r.line.count(), "RAISE asserts the line")
	assert.Equal(t, uint32(1), r.read32(0, RegAck), "level is up")
	assert.NotZero(t, r.cfg16(pci.RegStatus)&pci.StatusInterrupt, "status shows the interrupt")

	// EOI while the level is up: the line is asserted again.
	r.d.Resampled()
	assert.Equal(t, 2, r.line.count())

	// Raising an already high level is not a new edge.
	r.write32(0, RegRaise, 0)
	assert.Equal(t, 2, r.line.count())

	r.write32(0, RegAck, 0)
	assert.Zero(t, r.read32(0, RegAck))
	assert.Zero(t, r.cfg16(pci.RegStatus)&pci.StatusInterrupt)
	r.d.Resampled()
	assert.Equal(t, 2, r.line.count(), "no re-assert once acknowledged")

	st := r.d.Stats()
	assert.Equal(t, Stats{Raised: 2, Acked: 1, Resamples: 2}, st)
	assert.Equal(t, uint32(2), r.read32(0, RegCount))
}

// TestINTxDisableUIO follows uio_pci_generic: its handler sets INTx disable, user
// space clears it; a level still up at that point must assert the line again.
func TestINTxDisableUIO(t *testing.T) {
	r := newRig(t, 0)
	cmd := r.cfg16(pci.RegCommand)
	r.setCfg16(pci.RegCommand, cmd|pci.CmdIntxDisable)
	r.write32(0, RegRaise, 0)
	assert.Zero(t, r.line.count(), "masked by INTx disable")
	assert.NotZero(t, r.cfg16(pci.RegStatus)&pci.StatusInterrupt, "status still shows the level")
	r.d.Resampled()
	assert.Zero(t, r.line.count(), "still masked at EOI")
	r.setCfg16(pci.RegCommand, cmd)
	assert.Equal(t, 1, r.line.count(), "unmask re-asserts the held level")
	require.NoError(t, r.d.LowerINTx())
	r.setCfg16(pci.RegCommand, cmd|pci.CmdIntxDisable)
	r.setCfg16(pci.RegCommand, cmd)
	assert.Equal(t, 1, r.line.count(), "nothing held, nothing asserted")
}

func TestHostINTx(t *testing.T) {
	r := newRig(t, 0)
	require.NoError(t, r.d.RaiseINTx())
	assert.Equal(t, 1, r.line.count())
	assert.Equal(t, uint32(1), r.read32(0, RegCount))
	require.NoError(t, r.d.LowerINTx())
	assert.Error(t, r.d.Fire(0), "no MSI-X in INTx mode")
}

func TestMSIX(t *testing.T) {
	const n = 4
	r := newRig(t, n)
	assert.Equal(t, uint32(n), r.read32(0, RegVectors))
	m := r.f.MSIX()
	require.NotNil(t, m)
	assert.Equal(t, n, m.Vectors())
	var pin [1]byte
	r.f.ReadConfig(pci.RegInterruptPin, pin[:])
	assert.Zero(t, pin[0], "no INTx pin in MSI-X mode")
	assert.Error(t, r.d.RaiseINTx())

	// Capability advertises n vectors, table at BAR2+0, PBA at BAR2+MSIXPBAOffset.
	assert.Equal(t, uint16(pci.CapIDMSIX), r.cfg16(pci.CapOffset)&0xff)
	assert.Equal(t, uint16(n-1), r.cfg16(pci.CapOffset+2)&0x7ff)

	// Program vector 2, enable MSI-X, fire it from the guest's RAISE register.
	ent := uint64(2 * pci.MSIXEntrySize)
	r.write32(2, ent+0, 0xfee00000)
	r.write32(2, ent+4, 0)
	r.write32(2, ent+8, 0x4042)
	r.write32(2, ent+12, 0) // unmask
	r.setCfg16(pci.CapOffset+2, pci.MSIXCtrlEnable)
	r.write32(0, RegRaise, 2)
	assert.Equal(t, []int{2}, r.router.firedList())

	// A masked vector goes pending and is delivered on unmask.
	r.write32(0, RegRaise, 1)
	assert.True(t, m.Pending(1))
	assert.NotZero(t, r.read32(2, MSIXPBAOffset)&(1<<1), "PBA bit 1")
	r.write32(2, pci.MSIXEntrySize+12, 0)
	assert.Equal(t, []int{2, 1}, r.router.firedList())
	assert.False(t, m.Pending(1))

	// Host side.
	require.NoError(t, r.d.Fire(2))
	assert.Equal(t, []int{2, 1, 2}, r.router.firedList())
	assert.Error(t, r.d.Fire(n))
	assert.Equal(t, uint32(4), r.read32(0, RegCount))
}

// TestAttackRaiseOutOfRange: a guest RAISE naming a vector the device lacks is
// dropped and counted, never delivered.
func TestAttackRaiseOutOfRange(t *testing.T) {
	r := newRig(t, 2)
	r.setCfg16(pci.CapOffset+2, pci.MSIXCtrlEnable)
	for _, v := range []uint32{2, 0xffff, 0xffffffff, 1 << 31} {
		r.write32(0, RegRaise, v)
	}
	assert.Empty(t, r.router.firedList())
	assert.Equal(t, uint64(4), r.d.Stats().Errors)
}

func TestNewRejectsBadVectors(t *testing.T) {
	for _, v := range []int{-1, MaxVectors + 1} {
		_, err := New(Config{Vectors: v})
		assert.Error(t, err, "vectors %d", v)
	}
	d, err := New(Config{Vectors: MaxVectors})
	require.NoError(t, err)
	assert.Error(t, d.Fire(0), "not attached")
}

// FuzzRegisters drives BAR0 with arbitrary guest accesses: nothing panics and the
// read-only registers keep their values.
func FuzzRegisters(f *testing.F) {
	f.Add(uint8(0), uint16(RegRaise), uint32(1), uint8(4), true)
	f.Add(uint8(2), uint16(RegAck), uint32(0), uint8(4), true)
	f.Add(uint8(2), uint16(RegRaise), uint32(0xffffffff), uint8(4), true)
	f.Add(uint8(0), uint16(3), uint32(7), uint8(2), false)
	f.Fuzz(func(t *testing.T, vec uint8, off uint16, v uint32, n uint8, write bool) {
		r := newRig(t, int(vec%4))
		if r.d.Vectors() > 0 {
			r.setCfg16(pci.CapOffset+2, pci.MSIXCtrlEnable)
		}
		size := int(n%8) + 1
		addr := r.bar(0) + uint64(off%BAR0Size)
		if uint64(off%BAR0Size)+uint64(size) > BAR0Size {
			return
		}
		var full [8]byte
		binary.LittleEndian.PutUint32(full[:], v)
		buf := full[:size]
		if write {
			r.mmio.Write(addr, buf)
		} else {
			r.mmio.Read(addr, buf)
		}
		assert.Equal(t, uint32(Magic), r.read32(0, RegID))
		assert.Equal(t, uint32(r.d.Vectors()), r.read32(0, RegVectors))
	})
}
