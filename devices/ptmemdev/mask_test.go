package ptmemdev

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/kvm"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// The mask tests put the device's real vectors (notify.DirectMSIXVectors, as
// PlugPtnet makes them) over fakeKernel, a model of KVM's irqfds: the device, vmm/pci
// and notify are the code under test, only the ioctls are faked.

// fakeKernel models KVM's irqfd and MSI routing as virt/kvm/eventfd.c has them:
//   - a write to a bound eventfd injects its GSI's current MSI route (nothing if the
//     GSI has none: lost);
//   - binding an eventfd whose counter is non-zero injects once;
//   - unbinding resets the counter; writes to an unbound eventfd only count.
//
// The kernel injects at write time; the model does it when the test calls settle, so
// every check of deliveries follows a settle.
type fakeKernel struct {
	mu        sync.Mutex
	bound     map[int]uint32 // eventfd -> GSI
	routes    map[uint32]*kvm.MSI
	next      uint32
	delivered []uint32 // MSI data of each injected interrupt
	lost      int      // injections on a GSI without a route
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{bound: map[int]uint32{}, routes: map[uint32]*kvm.MSI{}, next: 24}
}

// drain reads and resets an eventfd's counter, as the kernel's eventfd_ctx_do_read.
func drain(fd int) uint64 {
	var b [8]byte
	if n, err := unix.Read(fd, b[:]); err != nil || n != 8 {
		return 0 // EAGAIN: zero
	}
	return binary.NativeEndian.Uint64(b[:])
}

func (k *fakeKernel) inject(gsi uint32) {
	if m := k.routes[gsi]; m != nil {
		k.delivered = append(k.delivered, m.Data)
	} else {
		k.lost++
	}
}

// settleLocked injects what was written to bound eventfd fd: one interrupt per write
// (the model cannot tell writes apart, so one per unit of the counter).
func (k *fakeKernel) settleLocked(fd int) {
	gsi := k.bound[fd]
	for n := drain(fd); n > 0; n-- {
		k.inject(gsi)
	}
}

func (k *fakeKernel) settle() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for fd := range k.bound {
		k.settleLocked(fd)
	}
}

func (k *fakeKernel) AssignIRQFD(fd int, gsi uint32, resampleFD int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.bound[fd]; ok {
		return unix.EBUSY
	}
	if resampleFD >= 0 {
		return errors.New("MSI irqfds are edge-triggered")
	}
	k.bound[fd] = gsi
	if drain(fd) > 0 { // kvm_irqfd_assign: EPOLLIN at bind time -> one injection
		k.inject(gsi)
	}
	return nil
}

func (k *fakeKernel) DeassignIRQFD(fd int, gsi uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if g, ok := k.bound[fd]; !ok || g != gsi {
		return errors.New("deassign of an unbound irqfd")
	}
	k.settleLocked(fd) // writes made while bound were injected as they happened
	drain(fd)          // irqfd_shutdown resets the counter
	delete(k.bound, fd)
	return nil
}

func (k *fakeKernel) Alloc() (uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	g := k.next
	k.next++
	k.routes[g] = nil
	return g, nil
}

func (k *fakeKernel) SetMSI(gsi uint32, m kvm.MSI) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.routes[gsi]; !ok {
		return errors.New("GSI not allocated")
	}
	k.routes[gsi] = &m
	return nil
}

func (k *fakeKernel) Free(gsi uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.routes, gsi)
	return nil
}

// take returns the deliveries since the last take (after settling) and the losses.
func (k *fakeKernel) take() ([]uint32, int) {
	k.settle()
	k.mu.Lock()
	defer k.mu.Unlock()
	d := k.delivered
	k.delivered = nil
	return d, k.lost
}

// maskRig is a ptnet on a PCI root with its vectors as PlugPtnet makes them, over
// fakeKernel; the rig helpers (registers, CSB) work on it.
type maskRig struct {
	*rig
	k   *fakeKernel
	vec msixVectors
}

func newMaskRig(t *testing.T, port *netmap.Port) *maskRig {
	t.Helper()
	r := &rig{t: t, port: port, ram: make([]byte, testRAM), pio: bus.New("pio"), mmio: bus.New("mmio"), mapper: &fakeMapper{}}
	var err error
	r.mem, err = memory.FromBytes([]memory.Region{{Range: memory.Range{GPA: 0, Size: testRAM}, Host: r.ram, FD: -1}})
	require.NoError(t, err)
	r.root, err = pci.NewRoot(pci.Config{PIO: r.pio, MMIO: r.mmio, Mapper: r.mapper,
		Reserved: []memory.Range{{GPA: 0, Size: testRAM}}})
	require.NoError(t, err)
	m := &maskRig{rig: r, k: newFakeKernel()}
	dv, err := notify.NewDirectMSIXVectors(m.k, m.k, port.NumTxRings()+port.NumRxRings())
	require.NoError(t, err)
	m.vec = msixVectors{dv}
	r.d, err = NewPtnet(Config{Name: "ptnet-mask", Port: port, MAC: testMAC, Mem: r.mem, Vectors: m.vec, Logf: t.Logf})
	require.NoError(t, err)
	r.fn, err = r.root.Add(-1, r.d.Spec())
	require.NoError(t, err)
	require.NoError(t, r.d.Attach(r.fn))
	t.Cleanup(func() {
		r.root.Remove(r.fn.Slot())
		require.NoError(t, r.d.Close())
		require.NoError(t, dv.Close())
		assert.Empty(t, m.k.bound, "every irqfd unbound")
	})
	return m
}

func newMaskPort(t *testing.T) *netmap.Port {
	p, err := netmap.NewPort(netmap.PortConfig{Name: "vale0:mask", TxRings: 1, RxRings: 2, TxSlots: testSlots, RxSlots: testSlots})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// Vector i's message data, as the guest programs it.
func maskData(i int) uint32 { return uint32(0x40 + i) }

func (m *maskRig) entry(i int, off uint64, v uint32) {
	m.mmio.Write(m.bar(m.fn, MSIXBAR)+uint64(i)*pci.MSIXEntrySize+off, binary.LittleEndian.AppendUint32(nil, v))
}

// program writes vector i's message; the mask bit is left as it is.
func (m *maskRig) program(i int) {
	m.entry(i, 0, 0xfee0_0000)
	m.entry(i, 4, 0)
	m.entry(i, 8, maskData(i))
}

func (m *maskRig) maskEntry(i int, masked bool) {
	var v uint32
	if masked {
		v = 1
	}
	m.entry(i, 12, v)
}

func (m *maskRig) control(v uint16) {
	m.fn.WriteConfig(pci.CapOffset+2, binary.LittleEndian.AppendUint16(nil, v))
}

// pba is the guest's read of the PBA's first dword.
func (m *maskRig) pba() uint32 {
	var b [4]byte
	m.mmio.Read(m.bar(m.fn, MSIXBAR)+MSIXPBAOffset, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// raise writes vector i's irqfd eventfd, as the host loop does.
func (m *maskRig) raise(i int) { require.NoError(m.t, m.vec.Event(i).Signal()) }

// live programs every vector, unmasks the entries and enables MSI-X.
func (m *maskRig) live() {
	for i := range m.n() {
		m.program(i)
		m.maskEntry(i, false)
	}
	m.control(pci.MSIXCtrlEnable)
}

// TestMaskedInterruptIsPending: for each way the guest can mask a vector (entry bit,
// function mask, MSI-X off), an interrupt the host loop raises meanwhile is not
// delivered, shows in the PBA, and is delivered exactly once on unmask; the other
// vectors are untouched.
func TestMaskedInterruptIsPending(t *testing.T) {
	const v = 1
	cases := []struct {
		name         string
		mask, unmask func(m *maskRig)
		others       bool // the other vectors are masked too
	}{
		{"entry", func(m *maskRig) { m.maskEntry(v, true) }, func(m *maskRig) { m.maskEntry(v, false) }, false},
		{"maskall", func(m *maskRig) { m.control(pci.MSIXCtrlEnable | pci.MSIXCtrlMaskAll) },
			func(m *maskRig) { m.control(pci.MSIXCtrlEnable) }, true},
		{"disabled", func(m *maskRig) { m.control(0) }, func(m *maskRig) { m.control(pci.MSIXCtrlEnable) }, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newMaskRig(t, newMaskPort(t))
			m.live()
			m.raise(v)
			got, _ := m.k.take()
			require.Equal(t, []uint32{maskData(v)}, got, "unmasked: delivered")

			c.mask(m)
			m.raise(v)
			m.raise(v) // a second one while masked: one pending bit, as in hardware
			got, lost := m.k.take()
			assert.Empty(t, got, "masked: not delivered")
			assert.Zero(t, lost)
			assert.Equal(t, uint32(1)<<v, m.pba(), "PBA")
			assert.True(t, m.fn.MSIX().Pending(v))
			if !c.others {
				m.raise(0)
				got, _ = m.k.take()
				assert.Equal(t, []uint32{maskData(0)}, got, "vector 0 stays live")
			}

			c.unmask(m)
			got, _ = m.k.take()
			assert.Equal(t, []uint32{maskData(v)}, got, "unmask: delivered once")
			assert.Zero(t, m.pba(), "PBA clear once delivered")
			got, _ = m.k.take()
			assert.Empty(t, got, "nothing more")

			// Masking and unmasking again with nothing raised delivers nothing.
			c.mask(m)
			assert.Zero(t, m.pba())
			c.unmask(m)
			got, lost = m.k.take()
			assert.Empty(t, got)
			assert.Zero(t, lost)
		})
	}
}

// TestInterruptBeforeFirstUnmask: interrupts raised before the guest programs the
// table and enables MSI-X (the GSIs have no route yet) are held, not lost, shown in
// the PBA, and each vector is delivered once, to the message the guest programs.
func TestInterruptBeforeFirstUnmask(t *testing.T) {
	m := newMaskRig(t, newMaskPort(t))
	m.raise(0)
	m.raise(2)
	got, lost := m.k.take()
	assert.Empty(t, got)
	assert.Zero(t, lost, "nothing fired at a GSI without a route")
	assert.Equal(t, uint32(0b101), m.pba())

	// The guest programs and unmasks the entries, then enables MSI-X.
	for i := range m.n() {
		m.program(i)
		m.maskEntry(i, false)
	}
	got, _ = m.k.take()
	assert.Empty(t, got, "MSI-X still off")
	m.control(pci.MSIXCtrlEnable)
	got, lost = m.k.take()
	assert.ElementsMatch(t, []uint32{maskData(0), maskData(2)}, got)
	assert.Zero(t, lost)
	assert.Zero(t, m.pba())
}

// TestMaskedRewriteRoutesBeforeDelivery: the guest rewrites a masked vector's message,
// then unmasks it; the held interrupt goes to the new message, never the old one.
func TestMaskedRewriteRoutesBeforeDelivery(t *testing.T) {
	m := newMaskRig(t, newMaskPort(t))
	m.live()
	m.maskEntry(0, true)
	m.raise(0)
	m.entry(0, 8, 0x77)
	got, _ := m.k.take()
	assert.Empty(t, got)
	m.maskEntry(0, false)
	got, _ = m.k.take()
	assert.Equal(t, []uint32{0x77}, got)
}

// TestHostLoopInterruptWhileMasked: the real host loop raises the RX interrupt the
// guest asked for (appl_need_kick) while the guest has the vector masked: it waits in
// the PBA and reaches the guest on unmask, once.
func TestHostLoopInterruptWhileMasked(t *testing.T) {
	master, slave, err := netmap.NewPipe("maskp", "1", netmap.PortConfig{TxSlots: testSlots, RxSlots: testSlots})
	require.NoError(t, err)
	t.Cleanup(func() { slave.Close(); master.Close() }) // after the device's cleanup
	m := newMaskRig(t, master)
	const rx = 1 // the pipe's RX ring, after its one TX ring
	m.live()
	m.maskEntry(rx, true)
	m.csb(testGH, testHG)
	require.Zero(t, m.linuxRegister())

	ep, err := netmap.NewEndpoint(slave, false)
	require.NoError(t, err)
	defer ep.Close()
	sent, err := ep.Send([][]byte{make([]byte, 60)})
	require.NoError(t, err)
	require.Equal(t, 1, sent)
	// Wait (bounded) for the loop's write to the detached eventfd.
	fds := []unix.PollFd{{Fd: int32(m.vec.Event(rx).FD()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 10_000)
	require.NoError(t, err)
	require.Equal(t, 1, n, "the host loop raised the RX interrupt")

	require.Zero(t, m.ptctl(PtctlDelete)) // the loop is gone: its CSB writes are done

	assert.Equal(t, uint32(1), m.ram32(testHG+rx*64+netmap.CSBHwTailOff), "the frame is published")
	got, lost := m.k.take()
	assert.Empty(t, got, "masked: not delivered")
	assert.Zero(t, lost)
	assert.Equal(t, uint32(1)<<rx, m.pba())
	m.maskEntry(rx, false)
	got, _ = m.k.take()
	assert.Equal(t, []uint32{maskData(rx)}, got)
	assert.Zero(t, m.pba())
}
