package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/devices/virtionet"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// The virtio-net driver side of the process tier: a virtio-net device
// (devices/virtionet) behind its real PCI transport, driven from host goroutines the
// way a guest drives it. Guest memory is fake (memory.FromBytes): GPA 0 is a netmap
// port's region, whose rings and buffers the driver uses as netmap's own virtio-net
// driver does in netmap mode (one descriptor per netmap slot, pointing at the slot's
// buffer: a virtio-net header then the frame, no copy), and the virtqueues sit in a
// second region above it. Kicks are eventfd writes on the transport's doorbells (what
// a KVM ioeventfd does), interrupts are MSI-X vectors routed to eventfds (irqfds), so
// the device side runs exactly as under KVM. The same pktgen that drives a ptnet
// ring drives these rings (vqRing implements pktgen.Ring).

const (
	vqSize = 1024 // descriptors per queue = slots per netmap ring
	// Per queue in the ring region: descriptors at 0, avail at 0x4000 (4+2*size+2
	// bytes), used at 0x5000 (4+8*size+2 bytes).
	vqStride   = 0x8000
	vqAvailOff = 0x4000
	vqUsedOff  = 0x5000
	vqRX, vqTX = 0, 1 // virtio-net queue indices of pair 0
	// Modern common configuration registers (virtio 1.x 4.1.4.3) in BAR4.
	ccDevFeatSel  = 0
	ccDevFeat     = 4
	ccDrvFeatSel  = 8
	ccDrvFeat     = 12
	ccMSIXConfig  = 16
	ccStatus      = 20
	ccQueueSelect = 22
	ccQueueSize   = 24
	ccQueueVector = 26
	ccQueueEnable = 28
	ccQueueDesc   = 32
	ccQueueDriver = 40
	ccQueueDevice = 48
	msixBAR       = 1
	modernBAR     = 4
)

// vqFeatures are what the driver accepts: no mergeable buffers (one buffer holds a
// header and a whole frame), no offloads (pktgen frames need none).
const vqFeatures = virtio.FVersion1 | virtio.FEventIdx | virtionet.FMAC

// bell is a doorbell the transport asks for; the driver signals its eventfd directly,
// as a KVM ioeventfd would on the guest's notify write.
type bell struct {
	ev   *notify.EventFD
	spec notify.DoorbellSpec
}

func (b *bell) Event() *notify.EventFD         { return b.ev }
func (b *bell) Move(addr uint64, _ bool) error { b.spec.Addr = addr; return nil }
func (b *bell) Close() error                   { return b.ev.Close() }

// msiRouter delivers MSI-X vector v by writing irqs[v] (an irqfd's eventfd) and counts
// deliveries. Concurrency: FireMSI runs on device workers; counters are atomic.
type msiRouter struct {
	irqs  []*notify.EventFD
	fired []atomic.Uint64
}

func (m *msiRouter) RouteMSI(int, uint64, uint32) error { return nil }

func (m *msiRouter) FireMSI(v int) error {
	if v < 0 || v >= len(m.irqs) {
		return fmt.Errorf("bench: MSI-X vector %d of %d", v, len(m.irqs))
	}
	m.fired[v].Add(1)
	return m.irqs[v].Signal()
}

// virtioNIC is one virtio-net device with its transport and a netmap-mode driver.
//
// Concurrency: TX and RX rings may each be used by one goroutine; Close once, after.
type virtioNIC struct {
	layout *netmap.Port // rings and buffers; GPA = offset in its region
	rings  []byte       // mmap: the virtqueues
	mem    *memory.Memory
	dev    *virtionet.Device
	tr     *virtio.Transport
	fn     *pci.Function
	mmio   *bus.Bus
	bar4   uint64
	bells  []*bell
	router *msiRouter
	tx, rx *vqRing
	spin   time.Duration // Wait polls used.idx this long before it sleeps
}

// newVirtioNIC builds the device on port (its backend, which it owns from here on,
// also on error) and brings it up as a driver would: features, MSI-X vectors,
// queues, DRIVER_OK, RX buffers posted.
func (rn *runner) newVirtioNIC(port backends.Port, vnetHdr bool, off virtionet.Offloader, mac [6]byte) (_ *virtioNIC, err error) {
	mode, spin := rn.hostWait()
	n := &virtioNIC{spin: spin}
	defer func() {
		if err != nil {
			if n.dev == nil {
				port.Close()
			}
			n.Close()
		}
	}()
	if n.layout, err = netmap.NewPort(netmap.PortConfig{Name: "virtio-driver", TxSlots: vqSize, RxSlots: vqSize}); err != nil {
		return nil, fmt.Errorf("bench: virtio driver rings: %w", err)
	}
	region := n.layout.Region().Bytes()
	ringsGPA := (uint64(len(region)) + 1<<20 - 1) &^ (1<<20 - 1)
	ringsSize := uint64(2 * vqStride)
	if n.rings, err = unix.Mmap(-1, 0, int(ringsSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return nil, fmt.Errorf("bench: virtqueue memory: %w", err)
	}
	ram := []memory.Region{
		{Range: memory.Range{GPA: 0, Size: uint64(len(region))}, Host: region, FD: -1},
		{Range: memory.Range{GPA: ringsGPA, Size: ringsSize}, Host: n.rings, FD: -1},
	}
	if n.mem, err = memory.FromBytes(ram); err != nil {
		return nil, fmt.Errorf("bench: guest memory: %w", err)
	}
	if n.dev, err = virtionet.New(virtionet.Config{MAC: mac, Ports: []backends.Port{port}, VnetHdr: vnetHdr,
		Offloads: off, QueueSize: vqSize, Mode: mode, Spin: spin}); err != nil {
		return nil, fmt.Errorf("bench: virtio-net device: %w", err)
	}
	n.router = &msiRouter{}
	for range n.dev.NumQueues() + 1 {
		ev, err := notify.NewEventFD()
		if err != nil {
			return nil, err
		}
		n.router.irqs = append(n.router.irqs, ev)
	}
	n.router.fired = make([]atomic.Uint64, len(n.router.irqs))
	n.mmio = bus.New("mmio")
	root, err := pci.NewRoot(pci.Config{PIO: bus.New("pio"), MMIO: n.mmio, Reserved: []memory.Range{ram[0].Range, ram[1].Range}})
	if err != nil {
		return nil, fmt.Errorf("bench: pci root: %w", err)
	}
	makeBell := func(s notify.DoorbellSpec) (virtio.Bell, error) {
		ev, err := notify.NewEventFD()
		if err != nil {
			return nil, err
		}
		b := &bell{ev: ev, spec: s}
		n.bells = append(n.bells, b)
		return b, nil
	}
	if n.tr, err = virtio.NewTransport(virtio.TransportConfig{Mem: n.mem, Device: n.dev, Bells: makeBell, MSIX: n.router}); err != nil {
		return nil, fmt.Errorf("bench: virtio transport: %w", err)
	}
	n.dev.SetTransport(n.tr)
	if n.fn, err = root.Add(-1, n.tr.Spec()); err != nil {
		return nil, fmt.Errorf("bench: virtio function: %w", err)
	}
	if err = n.tr.Attach(n.fn); err != nil {
		return nil, fmt.Errorf("bench: virtio attach: %w", err)
	}
	n.bar4, _ = n.fn.BARAddr(modernBAR)
	if err := n.bringUp(ringsGPA); err != nil {
		return nil, err
	}
	return n, nil
}

// bringUp is the driver's probe: reset, features, MSI-X, queues, DRIVER_OK.
func (n *virtioNIC) bringUp(ringsGPA uint64) error {
	n.w(ccStatus, 1, 0)
	n.w(ccStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
	n.w(ccDevFeatSel, 4, 0)
	lo := n.r(ccDevFeat, 4)
	n.w(ccDevFeatSel, 4, 1)
	hi := n.r(ccDevFeat, 4)
	feat := (hi<<32 | lo) & vqFeatures
	if feat != vqFeatures {
		return fmt.Errorf("bench: virtio-net offers %#x, the driver needs %#x", hi<<32|lo, uint64(vqFeatures))
	}
	n.w(ccDrvFeatSel, 4, 0)
	n.w(ccDrvFeat, 4, feat&0xffffffff)
	n.w(ccDrvFeatSel, 4, 1)
	n.w(ccDrvFeat, 4, feat>>32)
	n.w(ccStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	if n.r(ccStatus, 1)&virtio.StatusFeaturesOK == 0 {
		return errors.New("bench: virtio-net refused the features")
	}
	// MSI-X: one vector per queue (vector 1+q), config on vector 0; all unmasked.
	table, _ := n.fn.BARAddr(msixBAR)
	for v := range n.router.irqs {
		e := table + uint64(v)*pci.MSIXEntrySize
		n.mmio.Write(e, binary.LittleEndian.AppendUint32(nil, 0xfee0_0000))
		n.mmio.Write(e+4, binary.LittleEndian.AppendUint32(nil, 0))
		n.mmio.Write(e+8, binary.LittleEndian.AppendUint32(nil, uint32(0x40+v)))
		n.mmio.Write(e+12, binary.LittleEndian.AppendUint32(nil, 0))
	}
	n.fn.WriteConfig(pci.CapOffset+2, binary.LittleEndian.AppendUint16(nil, pci.MSIXCtrlEnable))
	n.w(ccMSIXConfig, 2, 0)
	var err error
	for _, q := range []int{vqRX, vqTX} {
		base := ringsGPA + uint64(q)*vqStride
		n.w(ccQueueSelect, 2, uint64(q))
		n.w(ccQueueSize, 2, vqSize)
		n.w(ccQueueVector, 2, uint64(1+q))
		if got := n.r(ccQueueVector, 2); got != uint64(1+q) {
			return fmt.Errorf("bench: virtio queue %d refused MSI-X vector %d (%d)", q, 1+q, got)
		}
		n.w(ccQueueDesc, 8, base)
		n.w(ccQueueDriver, 8, base+vqAvailOff)
		n.w(ccQueueDevice, 8, base+vqUsedOff)
		n.w(ccQueueEnable, 2, 1)
		var r *vqRing
		if r, err = n.newRing(q, n.rings[uint64(q)*vqStride:uint64(q+1)*vqStride]); err != nil {
			return err
		}
		if q == vqTX {
			n.tx = r
		} else {
			n.rx = r
		}
	}
	n.rx.refill(true) // buffers posted before DRIVER_OK: the device finds them at start
	if err := n.rx.publish(); err != nil {
		return err
	}
	n.w(ccStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	if !n.tr.Active() {
		return fmt.Errorf("bench: virtio-net did not start (status %#x)", n.r(ccStatus, 1))
	}
	return nil
}

func (n *virtioNIC) w(off uint64, size int, v uint64) {
	b := binary.LittleEndian.AppendUint64(nil, v)
	n.mmio.Write(n.bar4+off, b[:size])
}

func (n *virtioNIC) r(off uint64, size int) uint64 {
	var b [8]byte
	n.mmio.Read(n.bar4+off, b[:size])
	return binary.LittleEndian.Uint64(b[:])
}

// queueBell is the modern (MMIO) doorbell of queue q: Attach asks for a legacy and
// a modern one per queue, in queue order.
func (n *virtioNIC) queueBell(q int) (*bell, error) {
	k := 0
	for _, b := range n.bells {
		if b.spec.PIO {
			continue
		}
		if k == q {
			return b, nil
		}
		k++
	}
	return nil, fmt.Errorf("bench: no doorbell for virtio queue %d", q)
}

// Interrupts is how many queue interrupts (MSI-X vectors of queues) the device sent.
func (n *virtioNIC) Interrupts() uint64 {
	var s uint64
	for v := 1; v < len(n.router.fired); v++ {
		s += n.router.fired[v].Load()
	}
	return s
}

// Close resets the device (its workers stop), then frees everything. The backend port
// is closed with the device.
func (n *virtioNIC) Close() error {
	var err error
	if n.tr != nil && n.mmio != nil {
		n.w(ccStatus, 1, 0)
	}
	if n.dev != nil {
		err = errors.Join(err, n.dev.Close())
	}
	if n.tr != nil {
		err = errors.Join(err, n.tr.Close())
	}
	if n.router != nil {
		for _, e := range n.router.irqs {
			e.Close()
		}
	}
	if n.rings != nil {
		err = errors.Join(err, unix.Munmap(n.rings))
		n.rings = nil
	}
	if n.layout != nil {
		err = errors.Join(err, n.layout.Close())
	}
	return err
}

// vqRing is one virtqueue driven as a netmap ring (pktgen.Ring). Slot i of the
// netmap ring is descriptor i of the queue; the device uses descriptors in the order
// they were made available (virtio-net does), which the ring checks.
//
// TX: slots [reclaim, hwcur) are with the device, tail = reclaim-1. RX: the device
// holds buffers for slots [hwtail, posted), received frames are [head, hwtail).
//
// Concurrency: one goroutine at a time (as a netmap ring has one user).
type vqRing struct {
	nic     *virtioNIC
	q       int
	tx      bool
	ring    *netmap.Ring
	ringOff uint64 // in the region
	region  []byte
	bufOfs  int64 // buffer 0 relative to the ring
	bufSize uint32
	num     uint32
	desc    []byte
	avail   []byte
	used    []byte
	bell    *bell
	irq     *notify.EventFD

	availIdx, kickIdx, usedSeen uint16
	hwcur, hwtail               uint32
	reclaim, posted             uint32

	syncs, kicks, waits, irqs, errs atomic.Uint64
}

func (n *virtioNIC) newRing(q int, mem []byte) (*vqRing, error) {
	region := n.layout.Region().Bytes()
	nif, err := netmap.OpenIf(region, n.layout.NifpOffset())
	if err != nil {
		return nil, err
	}
	// ring_ofs index: HW TX rings, host TX rings, then HW RX rings.
	slot, tx := uint64(0), q == vqTX
	if !tx {
		slot = uint64(nif.TxRings() + nif.HostTxRings())
	}
	nifp := n.layout.NifpOffset()
	ofs := int64(binary.LittleEndian.Uint64(region[nifp+netmap.IfRingOfsOff+8*slot:]))
	ringOff := uint64(int64(nifp) + ofs)
	ring, err := netmap.NewRing(region, ringOff)
	if err != nil {
		return nil, err
	}
	b, err := n.queueBell(q)
	if err != nil {
		return nil, err
	}
	r := &vqRing{nic: n, q: q, tx: tx, ring: ring, ringOff: ringOff, region: region,
		bufOfs:  int64(binary.LittleEndian.Uint64(region[ringOff+netmap.RingBufOfsOff:])),
		bufSize: ring.BufSize(), num: ring.NumSlots(),
		desc: mem[:16*vqSize], avail: mem[vqAvailOff : vqAvailOff+4+2*vqSize+2], used: mem[vqUsedOff : vqUsedOff+4+8*vqSize+2],
		bell: b, irq: n.router.irqs[1+q]}
	if r.num != vqSize {
		return nil, fmt.Errorf("bench: netmap ring of %d slots for a %d-entry queue", r.num, vqSize)
	}
	ring.SetHeadCur(0, 0)
	if tx {
		r.setTail(r.num - 1)
	} else {
		r.setTail(0)
	}
	r.noInterrupts()
	return r, nil
}

// Ring is the netmap user view (pktgen fills and reads its slots).
func (r *vqRing) Ring() *netmap.Ring { return r.ring }

// setTail writes the ring header's tail: in this driver the header is the user's
// and this ring's only (no other side reads it).
func (r *vqRing) setTail(t uint32) {
	binary.LittleEndian.PutUint32(r.region[r.ringOff+netmap.RingTailOff:], t)
}

func (r *vqRing) next(i uint32) uint32 {
	if i+1 == r.num {
		return 0
	}
	return i + 1
}

func (r *vqRing) prev(i uint32) uint32 {
	if i == 0 {
		return r.num - 1
	}
	return i - 1
}

// gpa is the guest-physical address of buffer idx (region offset), 0 if invalid.
func (r *vqRing) gpa(idx uint32) uint64 {
	if idx < 2 {
		return 0
	}
	off := int64(r.ringOff) + r.bufOfs + int64(idx)*int64(r.bufSize)
	if off < 0 || off+int64(r.bufSize) > int64(len(r.region)) {
		return 0
	}
	return uint64(off)
}

func (r *vqRing) putDesc(i uint32, addr uint64, ln uint32, flags uint16) {
	d := r.desc[16*i:]
	binary.LittleEndian.PutUint64(d, addr)
	binary.LittleEndian.PutUint32(d[8:], ln)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], 0)
}

// makeAvail appends descriptor i to the avail ring (published by publish).
func (r *vqRing) makeAvail(i uint32) {
	binary.LittleEndian.PutUint16(r.avail[4+2*uint64(r.availIdx%vqSize):], uint16(i))
	r.availIdx++
}

// publish stores avail.idx (a full barrier) and kicks if the device asked for it
// (EVENT_IDX: avail_event inside what was published since the last decision).
func (r *vqRing) publish() error {
	if r.availIdx == r.kickIdx {
		return nil
	}
	virtio.StoreLE16(r.avail[2:], r.availIdx)
	ev := virtio.LoadLE16(r.used[4+8*vqSize:])
	old := r.kickIdx
	r.kickIdx = r.availIdx
	if uint16(r.availIdx-ev-1) < uint16(r.availIdx-old) {
		r.kicks.Add(1)
		return r.bell.ev.Signal()
	}
	return nil
}

// usedEvent writes used_event: the device interrupts when used.idx passes it.
func (r *vqRing) usedEvent(v uint16) { virtio.StoreLE16(r.avail[4+2*vqSize:], v) }

// noInterrupts puts used_event just behind what was seen: no interrupt until the
// device has used 2^16 more entries (the ring moves it along on every sync).
func (r *vqRing) noInterrupts() { r.usedEvent(r.usedSeen - 1) }

// reap walks new used entries (at most the queue size), calling fn with each.
func (r *vqRing) reap(fn func(id, ln uint32)) {
	u := virtio.LoadLE16(r.used[2:])
	n := u - r.usedSeen
	if uint32(n) > r.num {
		r.errs.Add(1) // the device claims more than the queue holds
		n = uint16(r.num)
	}
	for range n {
		e := r.used[4+8*uint64(r.usedSeen%vqSize):]
		fn(binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:]))
		r.usedSeen++
	}
}

// Sync is txsync or rxsync.
func (r *vqRing) Sync(_ netmap.SyncFlags) error {
	r.syncs.Add(1)
	if r.tx {
		return r.txsync()
	}
	return r.rxsync()
}

// dist is the cyclic distance from a to b.
func (r *vqRing) dist(a, b uint32) uint32 { return (b + r.num - a) % r.num }

func (r *vqRing) txsync() error {
	head := r.ring.Head()
	if head >= r.num || r.dist(r.hwcur, head) > r.dist(r.hwcur, r.prev(r.reclaim)) {
		r.errs.Add(1)
		return fmt.Errorf("bench: virtio tx: head %d outside [%d, %d]", head, r.hwcur, r.prev(r.reclaim))
	}
	for s := r.hwcur; s != head; s = r.next(s) {
		sl := r.ring.Slot(s)
		addr := r.gpa(sl.BufIdx)
		if addr == 0 || uint32(sl.Len) > r.bufSize || sl.Len == 0 {
			r.errs.Add(1)
			sl.Len = 0 // the device gets an empty chain; it drops it
		}
		r.putDesc(s, addr, uint32(sl.Len), 0)
		r.makeAvail(s)
	}
	r.hwcur = head
	if err := r.publish(); err != nil {
		return err
	}
	r.reap(func(id, _ uint32) {
		if r.reclaim == r.hwcur || id != r.reclaim {
			r.errs.Add(1) // nothing outstanding, or out of order
			if r.reclaim == r.hwcur {
				return
			}
		}
		r.reclaim = r.next(r.reclaim)
	})
	r.noInterrupts()
	r.setTail(r.prev(r.reclaim))
	return nil
}

// refill posts RX buffers for the slots the user gave back, keeping one slot free
// so that a full ring is not taken for an empty one: the device holds [hwtail, head-1).
func (r *vqRing) refill(first bool) {
	end := r.prev(r.ring.Head())
	if first {
		end = r.prev(0)
	}
	for ; r.posted != end; r.posted = r.next(r.posted) {
		sl := r.ring.Slot(r.posted)
		addr := r.gpa(sl.BufIdx)
		if addr == 0 {
			r.errs.Add(1)
		}
		r.putDesc(r.posted, addr, r.bufSize, virtio.DescFWrite)
		r.makeAvail(r.posted)
	}
}

func (r *vqRing) rxsync() error {
	head := r.ring.Head()
	if head >= r.num || r.dist(r.hwcur, head) > r.dist(r.hwcur, r.hwtail) {
		r.errs.Add(1)
		return fmt.Errorf("bench: virtio rx: head %d outside [%d, %d]", head, r.hwcur, r.hwtail)
	}
	r.hwcur = head
	r.refill(false)
	if err := r.publish(); err != nil {
		return err
	}
	r.reap(func(id, ln uint32) {
		if id != r.hwtail || r.hwtail == r.posted {
			r.errs.Add(1)
			return
		}
		sl := r.ring.Slot(r.hwtail)
		sl.Len, sl.Flags = uint16(min(ln, r.bufSize)), 0
		r.ring.SetSlot(r.hwtail, sl)
		r.hwtail = r.next(r.hwtail)
	})
	r.noInterrupts()
	r.setTail(r.hwtail)
	return nil
}

// blocked says the user can do nothing until the device moves: TX full, RX empty.
func (r *vqRing) blocked() bool {
	if r.tx {
		return r.ring.Space() == 0
	}
	return r.ring.Empty()
}

// Wait syncs and, while still blocked, polls used.idx for the NIC's spin window,
// then asks for an interrupt (TX: when half of what the device holds is done; RX: at
// the next frame), checks again after the barrier, and waits for the queue's vector.
// It returns true as soon as the ring can move, false only when timeout (negative:
// none) passed without: an interrupt that finds nothing new (one counted earlier, its
// frames already taken) is waited past.
func (r *vqRing) Wait(timeout time.Duration) (bool, error) {
	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	left := func() time.Duration {
		if deadline.IsZero() {
			return -1
		}
		return max(time.Until(deadline), 0)
	}
	for {
		if err := r.Sync(0); err != nil || !r.blocked() {
			return err == nil, err
		}
		l := left()
		if l == 0 {
			return false, nil
		}
		spin := r.nic.spin
		if l > 0 {
			spin = min(spin, l)
		}
		if spin > 0 && r.pollUsed(time.Now().Add(spin)) {
			continue
		}
		ev := r.usedSeen
		if r.tx {
			ev += uint16(r.dist(r.reclaim, r.hwcur) / 2)
		}
		r.usedEvent(ev) // a full barrier: the device's next used.idx store is seen below
		if virtio.LoadLE16(r.used[2:]) != r.usedSeen {
			continue
		}
		r.waits.Add(1)
		got, err := waitEventFD(r.irq, left())
		if err != nil {
			r.errs.Add(1)
			return false, err
		}
		if got {
			r.irqs.Add(1)
		}
	}
}

// pollUsed spins until the device publishes a used entry (true) or the deadline
// passes, reading the clock every 256 loads.
func (r *vqRing) pollUsed(deadline time.Time) bool {
	for n := 1; ; n++ {
		if virtio.LoadLE16(r.used[2:]) != r.usedSeen {
			return true
		}
		if n%256 == 0 && time.Now().After(deadline) {
			return false
		}
	}
}

// Stats are the ring's counters in the driver ring's terms.
func (r *vqRing) Stats() netmap.DriverRingStats {
	return netmap.DriverRingStats{Syncs: r.syncs.Load(), Kicks: r.kicks.Load(), Waits: r.waits.Load(),
		Interrupts: r.irqs.Load(), Errors: r.errs.Load()}
}

// waitEventFD waits until e is readable (negative timeout: forever) and consumes its
// count; false on timeout.
func waitEventFD(e *notify.EventFD, timeout time.Duration) (bool, error) {
	ok, err := waitFD(e.FD(), timeout)
	if err != nil || !ok {
		return false, err
	}
	v, err := e.Read()
	return v > 0, err
}

// waitFD polls fd for input up to timeout (negative: forever).
func waitFD(fd int, timeout time.Duration) (bool, error) {
	var ts *unix.Timespec
	if timeout >= 0 {
		t := unix.NsecToTimespec(timeout.Nanoseconds())
		ts = &t
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Ppoll(fds, ts, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("bench: poll: %w", err)
		}
		return n > 0, nil
	}
}
