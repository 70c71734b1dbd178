package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"time"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/backends/vale"
	"github.com/ptvmm/ptvmm/devices/ptmemdev"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/guest/pktgen"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// The micro tier: a VM built by the vmm library, as vmrun builds one, whose vCPU
// runs a long-mode micro guest (guest/micro) at CPL3 instead of Linux: the TX side
// of netmap's ptnet driver (micro.PtnetTX) or of a virtio-net driver
// (micro.VirtqTX), with the NIC the path needs added through the library (ptnet
// with its memdev, or virtio-net, on the same switch, pipe or TAP as in the other
// tiers). The host plays the driver's probe through the device registers (what the
// guest's kernel would do once), then the guest's loop runs at native speed with no
// exit to the VMM: frames go guest slot or descriptor -> doorbell (a KVM ioeventfd,
// only when the host asked) -> host loop or device worker -> switch, pipe or TAP ->
// the far end. The far end counts the frames and grants the guest credit (a qword
// in guest memory), so a switch port or a TAP, which drop what they cannot take,
// never overflow: the run measures the path's rate. The guest counts its kicks; it
// reports its frame count at micro.DoneAddr, which ends the run.

// Guest-physical layout of a micro-tier guest.
const (
	microRAM       = 16 << 20
	microCounters  = boot.MicroDataAddr      // kicks, ring-room waits, credit waits
	microCredit    = boot.MicroDataAddr + 64 // the qword the far end raises
	microCSBGH     = boot.MicroDataAddr + 0x10000
	microCSBHG     = boot.MicroDataAddr + 0x11000
	microTxRings   = 0x20_0000 // virtio TX: desc, avail, used, a page each
	microRxRings   = 0x20_4000 // virtio RX (no buffers: nothing is received)
	microBufs      = 0x40_0000 // virtio TX buffers, microBufStride apart
	microBufStride = 2048
	// microQueue is the virtqueue size: virtio-net's default (vmm offers 256).
	microQueue = 256
	// Frames per head update and kick decision: a quarter of the ring (ptnet ports
	// have 1024 slots, virtqueues 256 entries).
	microPtnetBatch  = 256
	microVirtioBatch = 64
	// microWindow is how many frames the far end lets the guest have in flight:
	// half a far-end ring, so a switch port never overflows.
	microWindow = 512
	// microPilot is the frame count of the short run that sizes a Duration run.
	microPilot = 64 * microPtnetBatch
)

// microGuest is one micro-tier run's machine: the VM, the NIC the path needs with
// the driver's probe done, the far end, and the program to load.
type microGuest struct {
	vm       *vmm.VM
	net      *vmm.Network
	peer     backends.Port
	peerRing *netmap.Port // nil: the far end is a packet socket
	batch    uint64
	program  func(frames uint64) ([]byte, error)
	irqs     func() uint64
	done     *doneReport
	closers  []func() error // in order
	mode     notify.Mode    // how the NIC's host side waits
	spin     time.Duration
}

func (g *microGuest) close() error {
	var err error
	for _, c := range g.closers {
		err = errors.Join(err, c())
	}
	return err
}

// doneReport is the MMIO window at micro.ReadyAddr..DoneAddr+8: the guest's store
// at DoneAddr (its frame count) is recorded and stops the VM.
//
// Concurrency: Write runs on the vCPU thread; value and at are read after Run
// returned.
type doneReport struct {
	vm    *vmm.VM
	once  sync.Once
	ok    bool
	value uint32
	at    time.Time
}

func (d *doneReport) Read(_ uint64, data []byte) { clear(data) }

func (d *doneReport) Write(off uint64, data []byte) {
	if off != micro.DoneAddr-micro.ReadyAddr || len(data) < 4 {
		return
	}
	d.once.Do(func() {
		d.ok, d.value, d.at = true, binary.LittleEndian.Uint32(data), time.Now()
		d.vm.Stop()
	})
}

// microBatch is the guest's batch on path p.
func microBatch(p Path) uint64 {
	if p.passthrough() {
		return microPtnetBatch
	}
	return microVirtioBatch
}

// runMicro runs guest TX on path p with frames of size bytes: Count frames (rounded
// up to whole batches), or as many as Duration takes at the rate a short pilot run
// measured.
func (r *runner) runMicro(ctx context.Context, p Path, w Workload, size int) (Record, error) {
	if w != WorkloadTX {
		return Record{}, fmt.Errorf("bench: tier micro has no %s program", w)
	}
	b := microBatch(p)
	frames := (r.cfg.Count + b - 1) / b * b
	timeout := CountTimeout
	if r.cfg.Count == 0 {
		pilot, err := r.microRun(ctx, p, size, microPilot, CountTimeout)
		if err != nil {
			return Record{}, err
		}
		if pilot.Partial {
			return pilot, nil
		}
		want := pilot.Mpps * 1e6 * r.cfg.Duration.Seconds()
		frames = uint64(min(max(want, microPilot), 1<<31)) / b * b
		timeout = max(CountTimeout, 4*r.cfg.Duration)
	}
	return r.microRun(ctx, p, size, frames, timeout)
}

// microRun sets up path p, runs the guest for frames frames with the far end
// receiving on a thread of its own, and tears everything down.
func (r *runner) microRun(ctx context.Context, p Path, size int, frames uint64, timeout time.Duration) (rec Record, err error) {
	g, err := r.newMicroGuest(p, size)
	if err != nil {
		return Record{}, err
	}
	defer func() {
		if cerr := g.close(); cerr != nil && err == nil {
			err = fmt.Errorf("bench: tear down %s: %w", p, cerr)
		}
	}()
	code, err := g.program(frames)
	if err != nil {
		return Record{}, err
	}
	mem := g.vm.Memory()
	if err := mem.WriteAt(code, boot.MicroCodeAddr); err != nil {
		return Record{}, fmt.Errorf("bench: load the micro guest: %w", err)
	}
	for i := range uint64(3) {
		if err := mem.Write64(microCounters+8*i, 0); err != nil {
			return Record{}, fmt.Errorf("bench: guest counters: %w", err)
		}
	}
	credit, err := mem.Slice(microCredit, 8)
	if err != nil {
		return Record{}, fmt.Errorf("bench: guest credit: %w", err)
	}
	storeQword(credit, microWindow)

	sk := newSink(g.peer, g.peerRing, size)
	guestDone := make(chan struct{})
	type rxOut struct {
		last time.Time
		cpu  time.Duration
	}
	rxc := make(chan rxOut, 1)
	irq0 := g.irqs()
	m0 := cpuMark{proc: processCPU(), guest: guestTime()}
	start := time.Now()
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t0 := threadCPU()
		last := microReceive(sk, credit, frames, guestDone)
		rxc <- rxOut{last, threadCPU() - t0}
	}()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	runErr := g.vm.Run(rctx)
	cancel()
	close(guestDone)
	rx := <-rxc
	m1 := cpuMark{proc: processCPU(), guest: guestTime(), peer: rx.cpu}
	irqs := g.irqs() - irq0
	kicks, _ := mem.Read64(microCounters)
	roomWaits, _ := mem.Read64(microCounters + 8)
	creditWaits, _ := mem.Read64(microCounters + 16)
	d := g.done
	partial := false
	switch {
	case d.ok && d.value != uint32(frames):
		return Record{}, fmt.Errorf("bench: the micro guest reported %d frames, want %d", d.value, frames&0xffffffff)
	case d.ok:
	case ctx.Err() != nil:
		partial = true // Ctrl-C: what the far end got is what was measured
	case runErr != nil:
		return Record{}, fmt.Errorf("bench: micro guest on %s: %w (kicks %d, ring-full waits %d, credit waits %d, far end got %d)", p, runErr, kicks, roomWaits, creditWaits, sk.got)
	default:
		return Record{}, fmt.Errorf("bench: micro guest on %s stopped without reporting (far end got %d)", p, sk.got)
	}
	if sk.err != nil {
		return Record{}, fmt.Errorf("bench: receiver: %w", sk.err)
	}
	end := rx.last
	if d.ok && d.at.After(end) {
		end = d.at
	}
	if end.IsZero() {
		end = time.Now()
	}
	elapsed := end.Sub(start)
	sent := frames
	if partial {
		sent = sk.got
	}
	o := outcome{frames: sent, received: min(sk.got, sent), elapsed: elapsed, cutShort: partial, irqs: irqs}
	o.drops = o.frames - o.received
	o.denom, o.bytes = sent, o.received*uint64(size)
	o.guest, o.host, o.peer = cpuSplit(m0, m1)
	o.res.Kicks = kicks
	return r.record(p, WorkloadTX, size, o), nil
}

// microReceive is the far end of a micro run: it drains the port, raises the
// guest's credit to what it received plus the window, and ends when want frames
// came, or when the guest is done and nothing came for 200 ms. It returns when the
// last frame came.
func microReceive(sk *sink, credit []byte, want uint64, guestDone <-chan struct{}) (last time.Time) {
	var doneAt time.Time
	for sk.got < want && sk.err == nil {
		before := sk.got
		sk.drain()
		if sk.got != before {
			storeQword(credit, sk.got+microWindow)
			last = time.Now()
			continue
		}
		now := time.Now()
		if doneAt.IsZero() {
			select {
			case <-guestDone:
				doneAt = now
			default:
			}
		}
		if !doneAt.IsZero() && now.Sub(doneAt) > 200*time.Millisecond && now.Sub(last) > 200*time.Millisecond {
			break
		}
		if fd := sk.p.ReadyFD(); fd >= 0 {
			_, _ = waitFD(fd, 2*time.Millisecond)
		} else {
			time.Sleep(100 * time.Microsecond)
		}
	}
	return last
}

// newMicroGuest builds the VM and path p's NIC and far end, and does the driver's
// probe. The guest's code is a placeholder until the program is loaded.
func (r *runner) newMicroGuest(p Path, size int) (_ *microGuest, err error) {
	ph := micro.New(boot.MicroCodeAddr)
	ph.Halt()
	code, err := ph.Assemble()
	if err != nil {
		return nil, err
	}
	n := vmm.NewNetwork()
	g := &microGuest{net: n, batch: microBatch(p)}
	g.mode, g.spin = r.hostWait()
	defer func() {
		if err != nil {
			_ = g.close()
		}
	}()
	g.vm, err = vmm.New(vmm.Config{Micro: &vmm.Micro{Code: code}, MemSize: microRAM, Network: n})
	if err != nil {
		_ = n.Close()
		return nil, fmt.Errorf("bench: micro guest: %w", err)
	}
	// Closed last: the VM first (its NICs, doorbells and irqfds), then the network.
	vmClose := func() error { return errors.Join(g.vm.Close(), n.Close()) }
	g.done = &doneReport{vm: g.vm}
	if err := g.vm.MMIO().Register(micro.ReadyAddr, micro.DoneAddr+8-micro.ReadyAddr, g.done); err != nil {
		g.closers = append(g.closers, vmClose)
		return nil, fmt.Errorf("bench: micro guest report window: %w", err)
	}
	tmpl := pktgen.Template(size, 0, peerMAC, driverMAC, pktgen.KindData)
	switch p {
	case PathPtnetSwitch, PathVirtioSwitch:
		ep, err := n.Switches().OpenEndpoint("vale0:peer", netmap.PortConfig{})
		if err != nil {
			g.closers = append(g.closers, vmClose)
			return nil, fmt.Errorf("bench: switch port: %w", err)
		}
		g.peer, g.peerRing = ep, ep.Port()
		g.closers = append(g.closers, ep.Close, vmClose)
		if p == PathPtnetSwitch {
			np, release, err := n.OpenPort("vale0:drv", netmap.PortConfig{})
			if err != nil {
				return nil, fmt.Errorf("bench: switch port: %w", err)
			}
			if err := g.ptnet(np, release, tmpl); err != nil {
				return nil, err
			}
		} else if err := g.virtio(vmm.NIC{Port: "vale0:drv", MAC: driverMAC}, size); err != nil {
			return nil, err
		}
		learnBoth(n.Switches().Get("vale0"), "drv", ep)
	case PathPtnetPipe:
		slave, relSlave, err := n.OpenPort("bp}1", netmap.PortConfig{})
		if err != nil {
			g.closers = append(g.closers, vmClose)
			return nil, fmt.Errorf("bench: pipe: %w", err)
		}
		ep, err := netmap.NewEndpoint(slave, false)
		if err != nil {
			_ = relSlave()
			g.closers = append(g.closers, vmClose)
			return nil, fmt.Errorf("bench: pipe end: %w", err)
		}
		g.peer, g.peerRing = ep, slave
		g.closers = append(g.closers, ep.Close, vmClose, relSlave)
		np, release, err := n.OpenPort("bp{1", netmap.PortConfig{})
		if err != nil {
			return nil, fmt.Errorf("bench: pipe: %w", err)
		}
		if err := g.ptnet(np, release, tmpl, slave.RxRing(0)); err != nil {
			return nil, err
		}
	case PathVirtioTap:
		name := r.cfg.Tap
		if name == "" {
			name = tapName()
			if ok, why := tap.CanCreate(); !ok {
				g.closers = append(g.closers, vmClose)
				return nil, &SkipError{Why: fmt.Sprintf("cannot create a TAP (%s): run as root, or create one with `ip tuntap add ptvb0 mode tap user $USER && ip link set ptvb0 up` and pass -tap ptvb0", why)}
			}
		} else if !tap.Exists(name) {
			g.closers = append(g.closers, vmClose)
			return nil, &SkipError{Why: fmt.Sprintf("TAP %s does not exist: create it with `ip tuntap add %s mode tap user $USER && ip link set %s up`", name, name, name)}
		}
		g.closers = append(g.closers, vmClose)
		if err := g.virtio(vmm.NIC{Tap: name, MAC: driverMAC}, size); err != nil {
			return nil, err
		}
		quietIPv6(name)
		pk, err := openPacket(name)
		if err != nil {
			return nil, &SkipError{Why: fmt.Sprintf("cannot read TAP %s from the host: %v (needs CAP_NET_RAW: run as root)", name, err)}
		}
		g.peer = pk
		g.closers = append([]func() error{pk.Close}, g.closers...)
	default:
		g.closers = append(g.closers, vmClose)
		return nil, fmt.Errorf("bench: unknown path %q", p)
	}
	return g, nil
}

// learnBoth teaches sw where the driver's and the far end's addresses are, so
// frames go unicast, as in the process tier.
func learnBoth(sw *vale.Switch, drv string, ep *vale.Endpoint) {
	if sw == nil {
		return
	}
	if dp := sw.PortByName(drv); dp != nil {
		sw.Learning().Learn(driverMAC[:], dp.Index())
	}
	sw.Learning().Learn(peerMAC[:], ep.SwitchPort().Index())
}

// mmio writes a little-endian register through the VM's MMIO bus, as the guest's
// driver would.
func (g *microGuest) mmio(addr uint64, size int, v uint64) error {
	b := binary.LittleEndian.AppendUint64(nil, v)
	if !g.vm.MMIO().Write(addr, b[:size]) {
		return fmt.Errorf("bench: nothing at MMIO %#x", addr)
	}
	return nil
}

func (g *microGuest) mmioRead(addr uint64, size int) uint64 {
	var b [8]byte
	g.vm.MMIO().Read(addr, b[:size])
	return binary.LittleEndian.Uint64(b[:])
}

// ptnet adds a ptnet NIC on np and does what netmap's guest driver does when an
// application opens the port: CSB addresses, PTCTL CREATE (the host loop starts);
// every TX buffer is given tmpl, so the guest only stamps sequence numbers, and so
// is every buffer of the rings in swapped: a pipe swaps buffers between the
// guest's TX ring and its peer's RX ring instead of copying frames.
func (g *microGuest) ptnet(np *netmap.Port, release func() error, tmpl []byte, swapped ...*netmap.Kring) error {
	pd, err := g.vm.AddPtnet(0, vmm.PtnetNIC{Port: np, MAC: driverMAC, Mode: g.mode, Spin: g.spin, Release: release})
	if err != nil {
		_ = release()
		return fmt.Errorf("bench: ptnet: %w", err)
	}
	bar0, ok0 := pd.Ptnet.Function.BARAddr(ptmemdev.RegsBAR)
	bar1, ok1 := pd.Memdev.Function.BARAddr(ptmemdev.MemBAR)
	reg := np.Region()
	if !ok0 || !ok1 || bar1+reg.MapSize() > uint64(boot.MicroIdentityGiB)<<30 {
		return fmt.Errorf("bench: ptnet BARs at %#x, %#x: outside the micro guest's identity map", bar0, bar1)
	}
	for _, w := range []struct {
		off uint64
		v   uint64
	}{{ptmemdev.RegCSBGHBAH, 0}, {ptmemdev.RegCSBGHBAL, microCSBGH}, {ptmemdev.RegCSBHGBAH, 0},
		{ptmemdev.RegCSBHGBAL, microCSBHG}, {ptmemdev.RegPtctl, ptmemdev.PtctlCreate}} {
		if err := g.mmio(bar0+w.off, 4, w.v); err != nil {
			return err
		}
	}
	if v := g.mmioRead(bar0+ptmemdev.RegPtctl, 4); v != 0 {
		return fmt.Errorf("bench: ptnet PTCTL CREATE failed (%d)", v)
	}
	k := np.TxRing(0)
	for _, kr := range append([]*netmap.Kring{k}, swapped...) {
		for i := range kr.NumSlots() {
			buf := reg.Buf(kr.SlotAt(i).BufIdx)
			if len(buf) < len(tmpl) {
				return fmt.Errorf("bench: %s slot %d has no buffer", kr.Name(), i)
			}
			copy(buf, tmpl)
		}
	}
	bufSize := uint64(reg.BufSize())
	if bits.OnesCount64(bufSize) != 1 {
		return fmt.Errorf("bench: netmap buffers of %d bytes: the micro guest needs a power of two", bufSize)
	}
	g.program = func(frames uint64) ([]byte, error) {
		return micro.PtnetTX(boot.MicroCodeAddr, micro.PtnetTXSpec{
			Slots: bar1 + k.Offset() + netmap.RingSlotsOff, NumSlots: k.NumSlots(),
			BufBase: bar1 + reg.PoolsInfo().BufPoolOffset, BufShift: uint8(bits.TrailingZeros64(bufSize)),
			Atok: microCSBGH, Ktoa: microCSBHG, Kick: bar0 + ptmemdev.RegKickBase,
			Batch: uint32(g.batch), Frames: frames, FrameLen: uint16(len(tmpl)), SeqOff: 22,
			Credit: microCredit, Counters: microCounters,
		})
	}
	g.irqs = func() uint64 {
		var s uint64
		for _, st := range pd.Ptnet.LoopStats() {
			s += st.Interrupts
		}
		return s
	}
	return nil
}

// Modern virtio-pci common configuration registers (virtio 1.x 4.1.4.3).
const (
	vcDevFeatSel  = 0
	vcDevFeat     = 4
	vcDrvFeatSel  = 8
	vcDrvFeat     = 12
	vcStatus      = 20
	vcQueueSelect = 22
	vcQueueSize   = 24
	vcQueueEnable = 28
	vcQueueNotify = 30
	vcQueueDesc   = 32
	vcQueueDriver = 40
	vcQueueDevice = 48
	virtioHdrLen  = 12 // VERSION_1: num_buffers included
)

// virtio adds a virtio-net NIC and probes it as Linux's driver would, but for
// TX only: VERSION_1 and EVENT_IDX, an RX queue without buffers, a TX queue whose
// descriptor i is a one-buffer chain to a frame (virtio-net header and tmpl) at
// microBufs + i*microBufStride, no interrupts wanted.
func (g *microGuest) virtio(nic vmm.NIC, size int) error {
	nic.Mode, nic.Spin = g.mode, g.spin
	nd, err := g.vm.AddNIC(0, nic)
	if err != nil {
		return fmt.Errorf("bench: virtio-net: %w", err)
	}
	caps, err := virtioCaps(nd.Function)
	if err != nil {
		return err
	}
	cc := caps.common
	st := uint64(virtio.StatusAcknowledge | virtio.StatusDriver)
	want := uint64(virtio.FVersion1 | virtio.FEventIdx)
	steps := []struct {
		off  uint64
		size int
		v    uint64
	}{{vcStatus, 1, 0}, {vcStatus, 1, st}, {vcDevFeatSel, 4, 0}}
	for _, s := range steps {
		if err := g.mmio(cc+s.off, s.size, s.v); err != nil {
			return err
		}
	}
	offered := g.mmioRead(cc+vcDevFeat, 4)
	_ = g.mmio(cc+vcDevFeatSel, 4, 1)
	offered |= g.mmioRead(cc+vcDevFeat, 4) << 32
	if offered&want != want {
		return fmt.Errorf("bench: virtio-net offers features %#x, the driver needs %#x", offered, want)
	}
	_ = g.mmio(cc+vcDrvFeatSel, 4, 0)
	_ = g.mmio(cc+vcDrvFeat, 4, want&0xffffffff)
	_ = g.mmio(cc+vcDrvFeatSel, 4, 1)
	_ = g.mmio(cc+vcDrvFeat, 4, want>>32)
	st |= virtio.StatusFeaturesOK
	_ = g.mmio(cc+vcStatus, 1, st)
	if g.mmioRead(cc+vcStatus, 1)&virtio.StatusFeaturesOK == 0 {
		return errors.New("bench: virtio-net refused the features")
	}
	mem := g.vm.Memory()
	tmpl := pktgen.Template(size, virtioHdrLen, peerMAC, driverMAC, pktgen.KindData)
	for i := range uint64(microQueue) {
		buf := microBufs + i*microBufStride
		if err := mem.WriteAt(tmpl, buf); err != nil {
			return fmt.Errorf("bench: virtio buffers: %w", err)
		}
		d := microTxRings + 16*i
		if err := errors.Join(mem.Write64(d, buf), mem.Write32(d+8, uint32(len(tmpl))), mem.Write32(d+12, 0)); err != nil {
			return fmt.Errorf("bench: virtio descriptors: %w", err)
		}
	}
	if err := mem.Write16(microTxRings+0x1000, virtio.AvailFNoInterrupt); err != nil {
		return fmt.Errorf("bench: virtio avail ring: %w", err)
	}
	var notifyOff uint64
	for q, base := range []uint64{microRxRings, microTxRings} {
		for _, s := range []struct {
			off  uint64
			size int
			v    uint64
		}{{vcQueueSelect, 2, uint64(q)}, {vcQueueSize, 2, microQueue}, {vcQueueDesc, 8, base},
			{vcQueueDriver, 8, base + 0x1000}, {vcQueueDevice, 8, base + 0x2000}, {vcQueueEnable, 2, 1}} {
			if err := g.mmio(cc+s.off, s.size, s.v); err != nil {
				return err
			}
		}
		notifyOff = g.mmioRead(cc+vcQueueNotify, 2)
	}
	_ = g.mmio(cc+vcStatus, 1, st|virtio.StatusDriverOK)
	if !nd.Transport.Active() {
		return fmt.Errorf("bench: virtio-net did not start (status %#x)", nd.Transport.Status())
	}
	doorbell := caps.notify + notifyOff*caps.mult
	if doorbell+2 > uint64(boot.MicroIdentityGiB)<<30 {
		return fmt.Errorf("bench: virtio doorbell at %#x: outside the micro guest's identity map", doorbell)
	}
	g.program = func(frames uint64) ([]byte, error) {
		return micro.VirtqTX(boot.MicroCodeAddr, micro.VirtqTXSpec{
			Avail: microTxRings + 0x1000, Used: microTxRings + 0x2000, Size: microQueue, Batch: uint16(g.batch),
			Frames: frames, Doorbell: doorbell, Queue: 1, EventIdx: true,
			Buf0: microBufs, Stride: microBufStride, SeqOff: virtioHdrLen + 22,
			Credit: microCredit, Counters: microCounters,
		})
	}
	g.irqs = func() uint64 {
		var s uint64
		for _, st := range nd.Net.Stats() {
			s += st.Interrupts
		}
		return s
	}
	return nil
}

// virtioPCICaps are where a modern virtio-pci function's structures are.
type virtioPCICaps struct {
	common, notify, mult uint64
}

// virtioCaps walks f's capability list for the common configuration and the
// notification structure (virtio 1.x 4.1.4), as a driver finds them.
func virtioCaps(f *pci.Function) (virtioPCICaps, error) {
	var c virtioPCICaps
	rd := func(off, n int) uint64 {
		var b [8]byte
		f.ReadConfig(off, b[:n])
		return binary.LittleEndian.Uint64(b[:])
	}
	found := 0
	ptr := int(rd(0x34, 1))
	for range 48 { // bounded: a config space holds at most 48 capabilities
		if ptr < 0x40 || ptr > 0xfc {
			break
		}
		if rd(ptr, 1) == 0x09 { // vendor-specific: a virtio structure
			typ, bar, off := rd(ptr+3, 1), int(rd(ptr+4, 1)), rd(ptr+8, 4)
			base, ok := f.BARAddr(bar)
			switch {
			case !ok:
			case typ == 1:
				c.common = base + off
				found |= 1
			case typ == 2:
				c.notify, c.mult = base+off, rd(ptr+16, 4)
				found |= 2
			}
		}
		ptr = int(rd(ptr+1, 1))
	}
	if found != 3 {
		return c, errors.New("bench: virtio-net function without common and notify structures")
	}
	return c, nil
}
