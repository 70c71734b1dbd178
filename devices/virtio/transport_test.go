package virtio

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

type fakeDev struct {
	cfg       [8]byte
	activated []*Activation
	resets    int
	failAct   error
}

func (d *fakeDev) Type() uint16                  { return DeviceTypeNet }
func (d *fakeDev) Features() uint64              { return 1<<5 | 1<<16 }
func (d *fakeDev) NumQueues() int                { return 3 }
func (d *fakeDev) QueueMax(int) uint16           { return 64 }
func (d *fakeDev) ConfigSize() int               { return len(d.cfg) }
func (d *fakeDev) Reset()                        { d.resets++ }
func (d *fakeDev) ReadConfig(off int, p []byte)  { copy(p, d.cfg[off:]) }
func (d *fakeDev) WriteConfig(off int, p []byte) { copy(d.cfg[off:], p) }
func (d *fakeDev) Activate(a *Activation) error {
	if d.failAct != nil {
		return d.failAct
	}
	d.activated = append(d.activated, a)
	return nil
}

type fakeRouter struct {
	mu    sync.Mutex
	fired []int
}

func (r *fakeRouter) RouteMSI(int, uint64, uint32) error { return nil }
func (r *fakeRouter) FireMSI(v int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fired = append(r.fired, v)
	return nil
}

type fakeLine struct{ n int }

func (l *fakeLine) Trigger() error { l.n++; return nil }

type rig struct {
	t         *testing.T
	pio, mmio *bus.Bus
	mem       *memory.Memory
	dev       *fakeDev
	tr        *Transport
	fn        *pci.Function
	router    *fakeRouter
	line      *fakeLine
	io, bar4  uint64
}

func newRig(t *testing.T) *rig { return newRigBells(t, nil) }

// newRigBells is newRig with a doorbell maker (nil: notify writes trap).
func newRigBells(t *testing.T, bells BellMaker) *rig {
	ram := make([]byte, ramSize)
	mem, err := memory.FromBytes([]memory.Region{{Range: memory.Range{GPA: 0, Size: ramSize}, Host: ram, FD: -1}})
	require.NoError(t, err)
	r := &rig{t: t, pio: bus.New("pio"), mmio: bus.New("mmio"), mem: mem, dev: &fakeDev{cfg: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}}, router: &fakeRouter{}, line: &fakeLine{}}
	root, err := pci.NewRoot(pci.Config{PIO: r.pio, MMIO: r.mmio, Reserved: []memory.Range{{GPA: 0, Size: ramSize}}})
	require.NoError(t, err)
	r.tr, err = NewTransport(TransportConfig{Mem: mem, Device: r.dev, Bells: bells, MSIX: r.router, Intx: r.line, Logf: t.Logf})
	require.NoError(t, err)
	t.Cleanup(func() { r.tr.Close() })
	r.fn, err = root.Add(-1, r.tr.Spec())
	require.NoError(t, err)
	require.NoError(t, r.tr.Attach(r.fn))
	r.io, _ = r.fn.BARAddr(0)
	r.bar4, _ = r.fn.BARAddr(modernBAR)
	return r
}

func (r *rig) out(off uint64, n int, v uint64) {
	b := make([]byte, n)
	put(b, v)
	require.True(r.t, r.pio.Write(r.io+off, b))
}

func (r *rig) in(off uint64, n int) uint64 {
	b := make([]byte, n)
	require.True(r.t, r.pio.Read(r.io+off, b))
	return le(b)
}

func (r *rig) mw(off uint64, n int, v uint64) {
	b := make([]byte, n)
	put(b, v)
	require.True(r.t, r.mmio.Write(r.bar4+off, b))
}

func (r *rig) mr(off uint64, n int) uint64 {
	b := make([]byte, n)
	require.True(r.t, r.mmio.Read(r.bar4+off, b))
	return le(b)
}

func (r *rig) pciStatus() uint16 {
	b := make([]byte, 2)
	r.fn.ReadConfig(pci.RegStatus, b)
	return binary.LittleEndian.Uint16(b)
}

func (r *rig) enableMSIX() {
	r.fn.WriteConfig(pci.CapOffset+2, []byte{0, 0x80})
	// Unmask every vector (the table entries reset masked).
	tbl, _ := r.fn.BARAddr(msixBAR)
	for v := 0; v < 4; v++ {
		require.True(r.t, r.mmio.Write(tbl+uint64(v)*16+12, []byte{0, 0, 0, 0}))
	}
}

func TestTransportIdentity(t *testing.T) {
	r := newRig(t)
	s := r.tr.Spec()
	assert.Equal(t, uint16(0x1af4), s.VendorID)
	assert.Equal(t, uint16(0x1000), s.DeviceID, "transitional net")
	assert.Equal(t, uint16(1), s.SubsystemID)
	assert.Equal(t, uint8(0), s.Revision)
	assert.Equal(t, uint32(0x020000), s.Class)
	assert.Equal(t, 4, s.MSIX.Vectors, "config + one per queue")
	caps := r.tr.VendorCaps()
	require.Len(t, caps, 4)
	assert.Equal(t, s.Caps, caps, "Spec carries the vendor capabilities")
	assert.Equal(t, uint8(capVendor), caps[1].ID)
	assert.Equal(t, []byte{20, capNotifyCfg, modernBAR}, caps[1].Body[:3])
	assert.Equal(t, uint32(notifyMultiplier), binary.LittleEndian.Uint32(caps[1].Body[14:]))
}

// fakeBell records where the transport places a doorbell.
type fakeBell struct {
	spec notify.DoorbellSpec
	ev   *notify.EventFD
	addr uint64
	on   bool
}

func (b *fakeBell) Event() *notify.EventFD { return b.ev }
func (b *fakeBell) Close() error           { return b.ev.Close() }
func (b *fakeBell) Move(addr uint64, on bool) error {
	b.addr, b.on = addr, on
	return nil
}

// virtioCap is a parsed struct virtio_pci_cap.
type virtioCap struct {
	bar             uint8
	offset, length  uint32
	notifyMultipler uint32
}

// linuxCaps walks the capability list from 0x34 the way Linux's virtio_pci_modern
// does (byte reads of type and BAR, dword reads of offset and length) and returns the
// first capability of each cfg_type.
func linuxCaps(t *testing.T, fn *pci.Function) map[uint8]virtioCap {
	t.Helper()
	rd := func(off, n int) uint32 {
		b := make([]byte, 4)
		fn.ReadConfig(off, b[:n])
		return binary.LittleEndian.Uint32(b)
	}
	require.NotZero(t, rd(pci.RegStatus, 2)&pci.StatusCapList, "capabilities list bit")
	caps := map[uint8]virtioCap{}
	seen := map[uint32]bool{}
	for p := rd(pci.RegCapPtr, 1); p != 0; p = rd(int(p)+1, 1) {
		require.False(t, seen[p], "capability loop at %#x", p)
		require.True(t, p >= 0x40 && p%4 == 0 && p < pci.ConfigSize, "capability at %#x", p)
		seen[p] = true
		if rd(int(p), 1) != capVendor {
			continue
		}
		typ := uint8(rd(int(p)+3, 1))
		c := virtioCap{bar: uint8(rd(int(p)+4, 1)), offset: rd(int(p)+8, 4), length: rd(int(p)+12, 4)}
		if typ == capNotifyCfg {
			require.GreaterOrEqual(t, rd(int(p)+2, 1), uint32(20), "notify cap_len")
			c.notifyMultipler = rd(int(p)+16, 4)
		}
		if _, dup := caps[typ]; !dup {
			caps[typ] = c
		}
	}
	return caps
}

// TestModernThroughCapabilities brings the device up the way Linux's modern driver
// does, finding every register through the vendor capabilities in config space, and
// checks that each queue's ioeventfd sits at the notify address the capability
// advertises, before and after the guest moves BAR4.
func TestModernThroughCapabilities(t *testing.T) {
	var bells []*fakeBell
	r := newRigBells(t, func(s notify.DoorbellSpec) (Bell, error) {
		ev, err := notify.NewEventFD()
		if err != nil {
			return nil, err
		}
		b := &fakeBell{spec: s, ev: ev, addr: s.Addr, on: true}
		bells = append(bells, b)
		return b, nil
	})
	caps := linuxCaps(t, r.fn)
	for _, typ := range []uint8{capCommonCfg, capNotifyCfg, capISRCfg, capDeviceCfg} {
		c, ok := caps[typ]
		require.True(t, ok, "no capability of cfg_type %d", typ)
		require.Equal(t, uint8(modernBAR), c.bar)
		require.LessOrEqual(t, uint64(c.offset)+uint64(c.length), uint64(modernSize), "cfg_type %d outside BAR4", typ)
	}
	require.GreaterOrEqual(t, caps[capCommonCfg].length, uint32(56), "Linux maps at least 56 bytes of common config")
	require.GreaterOrEqual(t, caps[capISRCfg].length, uint32(1))
	require.Equal(t, uint32(len(r.dev.cfg)), caps[capDeviceCfg].length)
	bar4Reg := make([]byte, 4)
	r.fn.ReadConfig(pci.RegBAR0+4*modernBAR, bar4Reg)
	require.Equal(t, byte(0x4), bar4Reg[0]&0x7, "BAR4 is a 64-bit memory BAR")

	common := uint64(caps[capCommonCfg].offset)
	nc := caps[capNotifyCfg]
	r.mw(common+ccDeviceStatus, 1, StatusAcknowledge|StatusDriver)
	r.mw(common+ccDeviceFeatureSel, 4, 1)
	require.Equal(t, uint64(1), r.mr(common+ccDeviceFeature, 4)&1, "VERSION_1 offered")
	r.mw(common+ccDriverFeatureSel, 4, 1)
	r.mw(common+ccDriverFeature, 4, 1)
	r.mw(common+ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	require.NotZero(t, r.mr(common+ccDeviceStatus, 1)&StatusFeaturesOK)
	notifyAt := make([]uint64, r.dev.NumQueues())
	for q := 0; q < r.dev.NumQueues(); q++ {
		r.mw(common+ccQueueSelect, 2, uint64(q))
		off := r.mr(common+ccQueueNotifyOff, 2)
		// Linux refuses a queue whose 2-byte doorbell is not inside the notify area.
		require.LessOrEqual(t, off*uint64(nc.notifyMultipler)+2, uint64(nc.length), "queue %d doorbell outside the notify cap", q)
		notifyAt[q] = uint64(nc.offset) + off*uint64(nc.notifyMultipler)
		base := uint64(q) * 0x4000
		r.mw(common+ccQueueDesc, 8, descGPA+base)
		r.mw(common+ccQueueDriver, 8, availGPA+base)
		r.mw(common+ccQueueDevice, 8, usedGPA+base)
		r.mw(common+ccQueueEnable, 2, 1)
	}
	r.mw(common+ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
	require.Len(t, r.dev.activated, 1)
	a := r.dev.activated[0]
	assert.False(t, a.Legacy)
	assert.Equal(t, uint64(FVersion1), r.tr.LastFeatures()&FVersion1)

	// The modern doorbells (MMIO, 2 bytes) sit where the capability says.
	checkBells := func(bar4 uint64) {
		t.Helper()
		var modern []*fakeBell
		for _, b := range bells {
			if !b.spec.PIO {
				modern = append(modern, b)
			}
		}
		require.Len(t, modern, len(notifyAt))
		for q, b := range modern {
			assert.Equal(t, bar4+notifyAt[q], b.addr, "queue %d ioeventfd address", q)
			assert.True(t, b.on, "queue %d ioeventfd enabled", q)
			assert.Equal(t, uint32(2), b.spec.Len)
			assert.Contains(t, a.Queues[q].Kicks, b.ev, "queue %d worker waits on its ioeventfd", q)
		}
	}
	checkBells(r.bar4)
	// A trapped write to the same address (no ioeventfd caught it) kicks the same queue.
	for q := range notifyAt {
		r.mw(notifyAt[q], 2, uint64(q))
		k, err := a.Queues[q].Kicks[0].Read()
		require.NoError(t, err)
		assert.Equal(t, uint64(1), k, "queue %d", q)
	}
	// ISR and device config through their capabilities.
	require.NoError(t, a.Queues[1].Interrupt())
	assert.Equal(t, uint64(isrQueue), r.mr(uint64(caps[capISRCfg].offset), 1))
	assert.Equal(t, uint64(0x0807060504030201), r.mr(uint64(caps[capDeviceCfg].offset), 8))

	// The guest moves BAR4: the doorbells follow.
	const newBAR4 = 0xd000_0000
	r.fn.WriteConfig(pci.RegBAR0+4*modernBAR, []byte{0, 0, 0, 0xd0})
	r.fn.WriteConfig(pci.RegBAR0+4*modernBAR+4, []byte{0, 0, 0, 0})
	got, mapped := r.fn.BARAddr(modernBAR)
	require.True(t, mapped)
	require.Equal(t, uint64(newBAR4), got)
	checkBells(newBAR4)
}

func TestLegacyDriverBringUp(t *testing.T) {
	r := newRig(t)
	r.out(legStatus, 1, 0)
	r.out(legStatus, 1, StatusAcknowledge|StatusDriver)
	host := r.in(legHostFeatures, 4)
	assert.Equal(t, uint64(1<<5|1<<16|FEventIdx|FIndirectDesc), host, "VERSION_1 is not visible to legacy")
	r.out(legGuestFeatures, 4, 1<<5|FEventIdx|1<<30) // bit 30 not offered: dropped
	assert.Equal(t, uint64(1<<5|FEventIdx), r.in(legGuestFeatures, 4))
	// Device config at 20 without MSI-X.
	assert.Equal(t, uint64(0x04030201), r.in(legacyConfigNoMSI, 4))
	r.out(legQueueSel, 2, 1)
	assert.Equal(t, uint64(64), r.in(legQueueNum, 2))
	r.out(legQueuePFN, 4, 0x10) // ring at 0x10000
	assert.Equal(t, uint64(0x10), r.in(legQueuePFN, 4))
	r.out(legStatus, 1, StatusAcknowledge|StatusDriver|StatusDriverOK)
	require.Len(t, r.dev.activated, 1)
	a := r.dev.activated[0]
	assert.True(t, a.Legacy)
	assert.Equal(t, uint64(1<<5|FEventIdx), r.tr.LastFeatures(), "legacy: no VERSION_1")
	assert.Nil(t, a.Queues[0])
	require.NotNil(t, a.Queues[1])
	h := a.Queues[1]
	assert.Equal(t, uint16(64), h.Size())

	// Trapped notify signals the queue's kick eventfd.
	r.out(legQueueNotify, 2, 1)
	k, err := h.Kicks[0].Read()
	require.NoError(t, err)
	assert.Equal(t, uint64(1), k)
	r.out(legQueueNotify, 2, 99) // unknown queue: ignored

	// INTx: ISR bit 0, line raised; reading ISR clears it.
	require.NoError(t, h.Interrupt())
	assert.Equal(t, 1, r.line.n)
	assert.NotZero(t, r.pciStatus()&pci.StatusInterrupt)
	assert.Equal(t, uint64(isrQueue), r.in(legISR, 1))
	assert.Zero(t, r.in(legISR, 1))
	assert.Zero(t, r.pciStatus()&pci.StatusInterrupt)

	// Reset stops the device and clears the rings.
	r.out(legStatus, 1, 0)
	assert.Equal(t, 1, r.dev.resets)
	assert.Zero(t, r.in(legQueuePFN, 4))
	assert.Zero(t, r.in(legStatus, 1))
}

func TestLegacyMSIX(t *testing.T) {
	r := newRig(t)
	r.enableMSIX()
	// Device config moves to 24 while MSI-X is on.
	assert.Equal(t, uint64(0x04030201), r.in(legacyConfigMSI, 4))
	r.out(legConfigVector, 2, 0)
	assert.Equal(t, uint64(0), r.in(legConfigVector, 2))
	r.out(legQueueSel, 2, 0)
	r.out(legQueueVector, 2, 9) // beyond the table: refused
	assert.Equal(t, uint64(NoVector), r.in(legQueueVector, 2))
	r.out(legQueueVector, 2, 1)
	assert.Equal(t, uint64(1), r.in(legQueueVector, 2))
	r.out(legQueuePFN, 4, 0x10)
	r.out(legStatus, 1, StatusDriverOK)
	require.Len(t, r.dev.activated, 1)
	require.NoError(t, r.dev.activated[0].Queues[0].Interrupt())
	r.tr.ConfigChanged()
	assert.Equal(t, []int{1, 0}, r.router.fired)
	assert.Zero(t, r.line.n, "no INTx under MSI-X")
}

func TestModernDriverBringUp(t *testing.T) {
	r := newRig(t)
	assert.Equal(t, uint64(3), r.mr(ccNumQueues, 2))
	r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver)
	r.mw(ccDeviceFeatureSel, 4, 1)
	assert.Equal(t, uint64(1), r.mr(ccDeviceFeature, 4), "VERSION_1 in the high word")
	// Without VERSION_1 FEATURES_OK does not stick.
	r.mw(ccDriverFeatureSel, 4, 0)
	r.mw(ccDriverFeature, 4, 1<<5)
	r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	assert.Zero(t, r.mr(ccDeviceStatus, 1)&StatusFeaturesOK)
	r.mw(ccDriverFeatureSel, 4, 1)
	r.mw(ccDriverFeature, 4, 1)
	r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	assert.NotZero(t, r.mr(ccDeviceStatus, 1)&StatusFeaturesOK)

	r.mw(ccQueueSelect, 2, 2)
	assert.Equal(t, uint64(64), r.mr(ccQueueSize, 2))
	r.mw(ccQueueSize, 2, 16)
	r.mw(ccQueueDesc, 4, descGPA)
	r.mw(ccQueueDesc+4, 4, 0)
	r.mw(ccQueueDriver, 8, availGPA)
	r.mw(ccQueueDevice, 4, usedGPA)
	assert.Equal(t, uint64(availGPA), r.mr(ccQueueDriver, 4))
	assert.Equal(t, uint64(2), r.mr(ccQueueNotifyOff, 2))
	r.mw(ccQueueEnable, 2, 1)
	r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
	require.Len(t, r.dev.activated, 1)
	a := r.dev.activated[0]
	assert.False(t, a.Legacy)
	assert.Equal(t, uint64(1<<5|FVersion1), a.Features)
	require.NotNil(t, a.Queues[2])
	assert.Equal(t, uint16(16), a.Queues[2].Size())
	// Queue registers are frozen while running.
	r.mw(ccQueueSize, 2, 8)
	assert.Equal(t, uint64(16), r.mr(ccQueueSize, 2))

	r.mw(notifyOffset+2*notifyMultiplier, 2, 2)
	k, _ := a.Queues[2].Kicks[0].Read()
	assert.Equal(t, uint64(1), k)
	assert.Equal(t, uint64(0x0807060504030201), r.mr(deviceOffset, 8))
	require.NoError(t, a.Queues[2].Interrupt())
	assert.Equal(t, uint64(isrQueue), r.mr(isrOffset, 1))
}

func TestBadRingSetsNeedsReset(t *testing.T) {
	r := newRig(t)
	r.enableMSIX()
	r.out(legConfigVector, 2, 0)
	r.out(legQueuePFN, 4, ramSize/4096) // ring outside RAM
	r.out(legStatus, 1, StatusDriverOK)
	assert.Empty(t, r.dev.activated)
	assert.NotZero(t, r.in(legStatus, 1)&StatusNeedsReset)
	assert.Equal(t, []int{0}, r.router.fired, "config interrupt")
	r.out(legStatus, 1, 0)
	assert.Zero(t, r.in(legStatus, 1))
}

func TestRuntimeNeedsReset(t *testing.T) {
	r := newRig(t)
	r.mw(ccQueueEnable, 2, 1) // queue 0 at address 0 with size 64: valid
	r.mw(ccDriverFeatureSel, 4, 1)
	r.mw(ccDriverFeature, 4, 1)
	r.mw(ccDeviceStatus, 1, StatusFeaturesOK|StatusDriverOK)
	require.Len(t, r.dev.activated, 1)
	r.tr.NeedsReset(ErrBroken)
	r.tr.NeedsReset(ErrBroken)
	assert.Equal(t, uint64(StatusFeaturesOK|StatusDriverOK|StatusNeedsReset), r.mr(ccDeviceStatus, 1))
	assert.Equal(t, 1, r.line.n, "one config interrupt")
	assert.Equal(t, uint64(isrConfig), r.mr(isrOffset, 1))
	r.mw(ccDeviceStatus, 1, 0)
	assert.Equal(t, 1, r.dev.resets)
	assert.False(t, r.tr.Active())
}

// FuzzTransportRegisters throws arbitrary register traffic at both BARs: no panic.
func FuzzTransportRegisters(f *testing.F) {
	f.Add([]byte{0, 18, 1, 7, 1, 8, 4, 0x10, 0, 0, 0, 0, 18, 1, 4})
	f.Fuzz(func(t *testing.T, prog []byte) {
		r := newRig(t)
		for len(prog) >= 4 {
			sel, off, n, v := prog[0], uint64(prog[1]), []int{1, 2, 4, 8}[prog[2]%4], uint64(prog[3])*0x01010101
			prog = prog[4:]
			b := make([]byte, n)
			put(b, v)
			switch sel % 4 {
			case 0:
				r.pio.Write(r.io+off%64, b)
			case 1:
				r.pio.Read(r.io+off%64, b)
			case 2:
				r.mmio.Write(r.bar4+off*64%modernSize, b)
			case 3:
				r.mmio.Read(r.bar4+off*64%modernSize, b)
			}
		}
	})
}
