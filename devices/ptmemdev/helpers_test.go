package ptmemdev

import (
	"encoding/binary"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// Fake guest RAM: [0, testRAM) with the CSB pages where the Linux driver would put them.
const (
	testRAM   = 1 << 20
	testGH    = 0x8000 // atok page
	testHG    = 0x9000 // ktoa page
	testSlots = 64
)

var testMAC = [6]byte{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}

// fakeVectors records routes and fires; each vector's "irqfd" is a plain eventfd.
type fakeVectors struct {
	mu     sync.Mutex
	evs    []*notify.EventFD
	routes map[int][2]uint64
	fired  map[int]int
}

func newFakeVectors(t testing.TB, n int) *fakeVectors {
	v := &fakeVectors{routes: map[int][2]uint64{}, fired: map[int]int{}}
	for range n {
		ev, err := notify.NewEventFD()
		require.NoError(t, err)
		v.evs = append(v.evs, ev)
	}
	t.Cleanup(func() {
		for _, ev := range v.evs {
			ev.Close()
		}
	})
	return v
}

func (v *fakeVectors) RouteMSI(i int, addr uint64, data uint32) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if i < 0 || i >= len(v.evs) {
		return errors.New("vector out of range")
	}
	v.routes[i] = [2]uint64{addr, uint64(data)}
	return nil
}

func (v *fakeVectors) FireMSI(i int) error {
	v.mu.Lock()
	v.fired[i]++
	v.mu.Unlock()
	if i < 0 || i >= len(v.evs) {
		return errors.New("vector out of range")
	}
	return v.evs[i].Signal()
}

func (v *fakeVectors) Event(i int) *notify.EventFD {
	if i < 0 || i >= len(v.evs) {
		return nil
	}
	return v.evs[i]
}

// fakeBell is a doorbell that records where it listens.
type fakeBell struct {
	ev      *notify.EventFD
	mu      sync.Mutex
	addr    uint64
	enabled bool
	closed  bool
}

func (b *fakeBell) Event() *notify.EventFD { return b.ev }

func (b *fakeBell) Move(addr uint64, enabled bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addr, b.enabled = addr, enabled
	return nil
}

func (b *fakeBell) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return b.ev.Close()
}

func (b *fakeBell) where() (uint64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addr, b.enabled
}

type fakeBells struct {
	mu    sync.Mutex
	bells []*fakeBell
}

func (f *fakeBells) make(s notify.DoorbellSpec) (Bell, error) {
	if s.Len != 4 || s.PIO || s.DataMatch {
		return nil, errors.New("unexpected doorbell spec")
	}
	ev, err := notify.NewEventFD()
	if err != nil {
		return nil, err
	}
	b := &fakeBell{ev: ev, addr: s.Addr, enabled: true}
	f.mu.Lock()
	f.bells = append(f.bells, b)
	f.mu.Unlock()
	return b, nil
}

// fakeMapper stands in for KVM memslots.
type fakeMapper struct {
	mu    sync.Mutex
	next  int
	slots map[int]uint64
	hosts map[int][]byte
}

func (m *fakeMapper) MapMemory(gpa uint64, host []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.slots == nil {
		m.slots, m.hosts = map[int]uint64{}, map[int][]byte{}
	}
	m.next++
	m.slots[m.next], m.hosts[m.next] = gpa, host
	return m.next, nil
}

func (m *fakeMapper) UnmapMemory(h int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.slots[h]; !ok {
		return errors.New("no such slot")
	}
	delete(m.slots, h)
	delete(m.hosts, h)
	return nil
}

// mapped returns the memslots as gpa -> host bytes.
func (m *fakeMapper) mapped() map[uint64][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[uint64][]byte{}
	for h, g := range m.slots {
		out[g] = m.hosts[h]
	}
	return out
}

// rig is a ptnet (and its region's memdev) on a PCI root over fake RAM, memslots,
// doorbells and vectors: everything but KVM.
type rig struct {
	t      testing.TB
	port   *netmap.Port
	ram    []byte
	mem    *memory.Memory
	pio    *bus.Bus
	mmio   *bus.Bus
	mapper *fakeMapper
	root   *pci.Root
	vec    *fakeVectors
	bells  *fakeBells
	d      *Ptnet
	fn     *pci.Function
	md     *Memdev
	mdFn   *pci.Function
	logs   []string
	logMu  sync.Mutex
}

type rigOpts struct {
	tx, rx  int
	vnet    bool
	noBells bool // KICK writes trap
	port    *netmap.Port
}

func newRig(t testing.TB, o rigOpts) *rig {
	t.Helper()
	if o.tx == 0 {
		o.tx = 1
	}
	if o.rx == 0 {
		o.rx = 1
	}
	r := &rig{t: t, ram: make([]byte, testRAM), pio: bus.New("pio"), mmio: bus.New("mmio"), mapper: &fakeMapper{}}
	var err error
	r.mem, err = memory.FromBytes([]memory.Region{{Range: memory.Range{GPA: 0, Size: testRAM}, Host: r.ram, FD: -1}})
	require.NoError(t, err)
	r.port = o.port
	if r.port == nil {
		r.port, err = netmap.NewPort(netmap.PortConfig{Name: "vale0:vm", TxRings: o.tx, RxRings: o.rx, TxSlots: testSlots, RxSlots: testSlots})
		require.NoError(t, err)
		t.Cleanup(func() { r.port.Close() })
	}
	r.root, err = pci.NewRoot(pci.Config{PIO: r.pio, MMIO: r.mmio, Mapper: r.mapper,
		Reserved: []memory.Range{{GPA: 0, Size: testRAM}}})
	require.NoError(t, err)
	n := r.port.NumTxRings() + r.port.NumRxRings()
	r.vec = newFakeVectors(t, n)
	cfg := Config{Name: "ptnet-test", Port: r.port, MAC: testMAC, VnetHdr: o.vnet, Mem: r.mem, Vectors: r.vec,
		Logf: func(f string, a ...any) {
			r.logMu.Lock()
			r.logs = append(r.logs, f)
			r.logMu.Unlock()
		}}
	if !o.noBells {
		r.bells = &fakeBells{}
		cfg.Bells = r.bells.make
	}
	r.md, err = NewMemdev(r.port.Region())
	require.NoError(t, err)
	r.mdFn, err = r.root.Add(-1, r.md.Spec())
	require.NoError(t, err)
	r.d, err = NewPtnet(cfg)
	require.NoError(t, err)
	r.fn, err = r.root.Add(-1, r.d.Spec())
	require.NoError(t, err)
	require.NoError(t, r.d.Attach(r.fn))
	t.Cleanup(func() {
		r.root.Remove(r.fn.Slot())
		require.NoError(t, r.d.Close())
		r.root.Remove(r.mdFn.Slot())
		require.NoError(t, r.md.Close())
	})
	return r
}

func (r *rig) n() int { return r.d.NumRings() }

// rd and wr are 32-bit register accesses through the MMIO bus at BAR0.
func (r *rig) bar(fn *pci.Function, i int) uint64 {
	a, ok := fn.BARAddr(i)
	require.True(r.t, ok, "BAR%d decodes", i)
	return a
}

func (r *rig) rd(off uint64) uint32 {
	var b [4]byte
	r.mmio.Read(r.bar(r.fn, RegsBAR)+off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (r *rig) wr(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	r.mmio.Write(r.bar(r.fn, RegsBAR)+off, b[:])
}

// csb writes both CSB addresses, high words first, as the Linux driver does.
func (r *rig) csb(gh, hg uint64) {
	r.wr(RegCSBGHBAH, uint32(gh>>32))
	r.wr(RegCSBGHBAL, uint32(gh))
	r.wr(RegCSBHGBAH, uint32(hg>>32))
	r.wr(RegCSBHGBAL, uint32(hg))
}

func (r *rig) ptctl(cmd uint32) uint32 {
	r.wr(RegPtctl, cmd)
	return r.rd(RegPtctl)
}

// ram32 reads a CSB field the way the guest would: with an atomic load, since the
// host loop may be storing it (the race detector sees a plain read as a race).
func (r *rig) ram32(gpa uint64) uint32 {
	entry, off := gpa&^(netmap.CSBEntrySize-1), gpa&(netmap.CSBEntrySize-1)
	b, err := r.mem.Slice(entry, netmap.CSBEntrySize)
	require.NoError(r.t, err)
	// A one-ring view of this entry; the atok accessors read u32 fields 0..12.
	c, err := netmap.NewCSB(b, b, 1)
	require.NoError(r.t, err)
	switch off {
	case netmap.CSBHeadOff:
		return c.Head(0)
	case netmap.CSBCurOff:
		return c.Cur(0)
	case netmap.CSBApplNeedKickOff:
		return c.ApplNeedKick(0)
	case netmap.CSBSyncFlagsOff:
		return uint32(c.SyncFlags(0))
	}
	v, err := r.mem.Read32(gpa)
	require.NoError(r.t, err)
	return v
}

// setRAM32 writes a CSB field the way the guest would: with an atomic store.
func (r *rig) setRAM32(gpa uint64, v uint32) {
	entry, off := gpa&^(netmap.CSBEntrySize-1), gpa&(netmap.CSBEntrySize-1)
	b, err := r.mem.Slice(entry, netmap.CSBEntrySize)
	require.NoError(r.t, err)
	c, err := netmap.NewCSB(b, b, 1)
	require.NoError(r.t, err)
	switch off {
	case netmap.CSBHeadOff:
		c.SetHead(0, v)
	case netmap.CSBCurOff:
		c.SetCur(0, v)
	case netmap.CSBApplNeedKickOff:
		c.SetApplNeedKick(0, v)
	case netmap.CSBSyncFlagsOff:
		c.SetSyncFlags(0, netmap.SyncFlags(v))
	default:
		require.NoError(r.t, r.mem.Write32(gpa, v))
	}
}

// goroutinesBack waits (bounded) until the goroutine count is at most want.
func goroutinesBack(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), want, "goroutines left behind")
}
