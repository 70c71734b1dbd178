package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"runtime"
	"slices"
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
// runs a long-mode micro guest (guest/micro) at CPL3 instead of Linux: the TX or RX
// side of netmap's ptnet driver (micro.PtnetTX, micro.PtnetRX) or of a virtio-net
// driver (micro.VirtqTX, micro.VirtqRX), or a ping-pong over both
// (micro.PtnetPingPong, micro.VirtqPingPong: one frame out, its echo back, each
// round trip timed by the guest's TSC, the far end the responder of the other
// tiers), with the NIC the path needs added through the library (ptnet with its
// memdev, or virtio-net, on the same switch, pipe or TAP as in the other tiers). The
// host plays the driver's probe through the device registers (what the guest's
// kernel would do once), then the guest's loop runs at native speed with no exit to
// the VMM: frames go guest slot or descriptor -> doorbell (a KVM ioeventfd, only
// when the host asked) -> host loop or device worker -> switch, pipe or TAP -> the
// far end, or the other way for RX. TX: the far end counts the frames and grants the
// guest credit (a qword in guest memory). RX: the far end sends at most a window
// ahead of the frame count the guest keeps in its memory, and when the window is
// full sets a flag there and sleeps on a doorbell of its own (an ioeventfd) that the
// guest rings, after a batch, only while the flag is set. Either way a switch port
// or a TAP, which drop what they cannot take, never overflow: the run measures the
// path's rate. The guest counts its kicks; it reports its frame count (ping-pong:
// round trips) at micro.DoneAddr, which ends the run.

// Guest-physical layout of a micro-tier guest.
const (
	microRAM       = 16 << 20
	microCounters  = boot.MicroDataAddr       // TX: kicks, ring-room waits, credit waits; else micro.RX*, micro.Ping*
	microCredit    = boot.MicroDataAddr + 64  // the qword the far end raises
	microFeed      = boot.MicroDataAddr + 128 // RX: the far end waits for a kick
	microCSBGH     = boot.MicroDataAddr + 0x10000
	microCSBHG     = boot.MicroDataAddr + 0x11000
	microTxRings   = 0x20_0000 // virtio TX: desc, avail, used, a page each
	microRxRings   = 0x20_4000 // virtio RX: desc, avail, used
	microBufs      = 0x40_0000 // virtio TX buffers, microBufStride apart
	microRxBufs    = 0x60_0000 // virtio RX buffers, microBufStride apart
	microTimes     = 0x80_0000 // ping-pong: each round trip's TSC ticks (MaxRoundTrips qwords)
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
	// microRxWindow is how many frames the RX far end keeps in flight (sent, not
	// yet counted by the guest), as the linux tier's: below a TAP's queue (500),
	// and for ptnet at most half the RX ring less one (microGuest.rxWindow): the
	// host loop learns of the slots the guest gave back only when frames arrive,
	// so the ring may hold a window the guest has taken and a window new.
	microRxWindow = 448
	// microMagicOff is where pktgen's magic number is in a frame (guest/pktgen's
	// layout): the guests take only frames that carry it for the far end's.
	microMagicOff = 14
	// microFeedBell is the far end's doorbell (an ioeventfd; nothing else there).
	microFeedBell = micro.DoneAddr + 8
	// microQuiet ends an RX or ping-pong run whose guest count has not moved for
	// that long (frames lost on the way): the guest would wait for them forever.
	microQuiet = 500 * time.Millisecond
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
	rxWindow uint64
	program  func(w Workload, frames uint64) ([]byte, error)
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
// at DoneAddr (its frame count) is recorded and stops the VM; the time of its first
// store at ReadyAddr is recorded.
//
// Concurrency: Write runs on the vCPU thread; value, at and readyAt are read after
// Run returned.
type doneReport struct {
	vm      *vmm.VM
	once    sync.Once
	ok      bool
	value   uint32
	at      time.Time
	readyAt time.Time // the guest's first store at ReadyAddr (ping-pong)
}

func (d *doneReport) Read(_ uint64, data []byte) { clear(data) }

func (d *doneReport) Write(off uint64, data []byte) {
	if off == 0 && d.readyAt.IsZero() {
		d.readyAt = time.Now()
		return
	}
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

// runMicro runs workload w on path p with frames of size bytes: Count frames (tx:
// rounded up to whole batches; ping-pong: round trips, at most MaxRoundTrips), or as
// many as Duration takes at the rate a short pilot run measured.
func (r *runner) runMicro(ctx context.Context, p Path, w Workload, size int) (Record, error) {
	b := microBatch(p)
	if w != WorkloadTX {
		b = 1 // RX takes what comes, any count; ping-pong counts round trips
	}
	frames := (r.cfg.Count + b - 1) / b * b
	if w == WorkloadPingPong {
		frames = min(frames, MaxRoundTrips)
	}
	timeout := CountTimeout
	if r.cfg.Count == 0 {
		n := uint64(microPilot)
		if w == WorkloadPingPong {
			n = 1000
		}
		pilot, err := r.microRun(ctx, p, w, size, n, CountTimeout)
		if err != nil {
			return Record{}, err
		}
		if pilot.Partial {
			return pilot, nil
		}
		want := pilot.Mpps * 1e6 * r.cfg.Duration.Seconds()
		frames = uint64(min(max(want, microPilot), 1<<31)) / b * b
		if w == WorkloadPingPong {
			frames = min(max(uint64(want), 1), MaxRoundTrips)
		}
		timeout = max(CountTimeout, 4*r.cfg.Duration)
	}
	return r.microRun(ctx, p, w, size, frames, timeout)
}

// microRun sets up path p, runs the guest's w program for frames frames with the
// far end on a thread of its own, and tears everything down.
func (r *runner) microRun(ctx context.Context, p Path, w Workload, size int, frames uint64, timeout time.Duration) (rec Record, err error) {
	g, err := r.newMicroGuest(p, w, size)
	if err != nil {
		return Record{}, err
	}
	defer func() {
		if cerr := g.close(); cerr != nil && err == nil {
			err = fmt.Errorf("bench: tear down %s: %w", p, cerr)
		}
	}()
	code, err := g.program(w, frames)
	if err != nil {
		return Record{}, err
	}
	mem := g.vm.Memory()
	if err := mem.WriteAt(code, boot.MicroCodeAddr); err != nil {
		return Record{}, fmt.Errorf("bench: load the micro guest: %w", err)
	}
	if err := mem.WriteAt(make([]byte, microFeed+8-microCounters), microCounters); err != nil {
		return Record{}, fmt.Errorf("bench: guest counters: %w", err)
	}
	switch w {
	case WorkloadRX:
		return r.microRX(ctx, g, p, size, frames, timeout)
	case WorkloadPingPong:
		return r.microPingPong(ctx, g, p, size, frames, timeout)
	}
	return r.microTX(ctx, g, p, size, frames, timeout)
}

// microTX runs guest TX with the far end receiving.
func (r *runner) microTX(ctx context.Context, g *microGuest, p Path, size int, frames uint64, timeout time.Duration) (Record, error) {
	mem := g.vm.Memory()
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

// microReceive is the far end of a micro TX run: it drains the port, raises the
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

// microRX runs guest RX with the far end sending: frames counted on both ends (the
// far end's sent, the guest's RXFrames), Frames = Received + Drops.
func (r *runner) microRX(ctx context.Context, g *microGuest, p Path, size int, frames uint64, timeout time.Duration) (Record, error) {
	mem := g.vm.Memory()
	counters, err := mem.Slice(microCounters, micro.RXCountersSize)
	if err != nil {
		return Record{}, fmt.Errorf("bench: guest counters: %w", err)
	}
	flag, err := mem.Slice(microFeed, 8)
	if err != nil {
		return Record{}, fmt.Errorf("bench: guest feed flag: %w", err)
	}
	bell, err := notify.NewDoorbell(g.vm.KVM(), notify.DoorbellSpec{Addr: microFeedBell, Len: 4})
	if err != nil {
		return Record{}, fmt.Errorf("bench: far-end doorbell: %w", err)
	}
	defer bell.Close()

	src := newSource(g.peer, size, driverMAC, peerMAC, frames)
	f := &microFeeder{src: src, frames: counters[micro.RXFrames : micro.RXFrames+8], flag: flag, bell: bell.Event(),
		want: frames, window: g.rxWindow, stop: g.vm.Stop}
	guestDone := make(chan struct{})
	type txOut struct {
		last time.Time
		cpu  time.Duration
	}
	txc := make(chan txOut, 1)
	irq0 := g.irqs()
	m0 := cpuMark{proc: processCPU(), guest: guestTime()}
	start := time.Now()
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t0 := threadCPU()
		last := f.run(guestDone)
		txc <- txOut{last, threadCPU() - t0}
	}()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	runErr := g.vm.Run(rctx)
	cancel()
	close(guestDone)
	tx := <-txc
	m1 := cpuMark{proc: processCPU(), guest: guestTime(), peer: tx.cpu}
	irqs := g.irqs() - irq0
	rd := func(off uint64) uint64 { return loadQword(counters[off : off+8]) }
	got, bytes, seqErrs := rd(micro.RXFrames), rd(micro.RXBytes), rd(micro.RXSeqErrors)
	d := g.done
	partial := false
	why := fmt.Sprintf("guest got %d and %d other frames, kicks %d, empty-ring waits %d, far-end kicks %d; far end sent %d", got,
		rd(micro.RXOther), rd(micro.RXKicks), rd(micro.RXEmptyWaits), rd(micro.RXFeedKicks), src.sent)
	switch {
	case d.ok && uint64(d.value) < frames:
		return Record{}, fmt.Errorf("bench: the micro guest reported %d frames, want %d", d.value, frames)
	case d.ok:
	case ctx.Err() != nil:
		partial = true // Ctrl-C: what the guest got is what was measured
	case f.gaveUp:
		// Frames lost on the way: the far end stopped the guest; they are drops.
	case runErr != nil:
		return Record{}, fmt.Errorf("bench: micro guest on %s: %w (%s)", p, runErr, why)
	default:
		return Record{}, fmt.Errorf("bench: micro guest on %s stopped without reporting (%s)", p, why)
	}
	if src.err != nil {
		return Record{}, fmt.Errorf("bench: generator: %w (%s)", src.err, why)
	}
	if seqErrs > 0 {
		r.cfg.progress("bench: %s rx %d B: %d frames out of sequence (%s)", p, size, seqErrs, why)
	}
	if n := rd(micro.RXOther); n > 0 {
		r.cfg.progress("bench: %s rx %d B: %d frames not the far end's, not counted (a host stack on a TAP)", p, size, n)
	}
	end := tx.last
	if d.ok {
		end = d.at
	}
	if end.IsZero() {
		end = time.Now()
	}
	o := outcome{frames: max(src.sent, got), received: got, elapsed: end.Sub(start), cutShort: partial, irqs: irqs}
	o.drops = o.frames - o.received
	o.denom, o.bytes = got, bytes
	o.guest, o.host, o.peer = cpuSplit(m0, m1)
	o.res.Kicks = rd(micro.RXKicks)
	return r.record(p, WorkloadRX, size, o), nil
}

// microFeeder is the far end of a micro RX run: it sends want frames, at most window
// ahead of the guest's frame count (micro.RXFrames, in guest memory).
//
// Concurrency: run on one goroutine; gaveUp is read after it returned.
type microFeeder struct {
	src          *source
	frames, flag []byte // the guest's RXFrames qword and its feed flag
	bell         *notify.EventFD
	want, window uint64
	stop         func() // stops the guest
	gaveUp       bool   // the guest's count stopped moving: stop was called
}

// run sends until the guest is done. When the window is full (or the port took
// nothing) it sets the flag, looks at the count again (the store is a full barrier;
// the guest stores its count, then loads the flag), and sleeps on the doorbell the
// guest rings while the flag is set. If the count does not move for microQuiet (ten
// times that before the first frame: the guest may be slow to start), frames were
// lost on the way and the guest would wait for them forever: it stops the guest.
// It returns when it last saw the count move.
func (f *microFeeder) run(guestDone <-chan struct{}) (last time.Time) {
	seen := uint64(0)
	moved := time.Now()
	for f.src.err == nil {
		select {
		case <-guestDone:
			return last
		default:
		}
		got := loadQword(f.frames)
		if got != seen {
			seen, moved = got, time.Now()
			last = moved
		}
		if f.src.sent < f.want {
			if inflight := f.src.sent - min(f.src.sent, got); inflight < f.window {
				before := f.src.sent
				f.src.send(int(f.window - inflight))
				if f.src.sent != before {
					continue
				}
			}
		}
		storeQword(f.flag, 1)
		if loadQword(f.frames) != got {
			continue
		}
		if _, err := waitFD(f.bell.FD(), 2*time.Millisecond); err != nil {
			f.src.err = err
			break
		}
		if _, err := f.bell.Read(); err != nil {
			f.src.err = err
			break
		}
		if quiet := time.Since(moved); quiet > microQuiet && (seen > 0 || quiet > 10*microQuiet) {
			f.gaveUp = true
			f.stop()
			<-guestDone
			break
		}
	}
	return last
}

// newMicroGuest builds the VM and path p's NIC and far end, and does the driver's
// probe. The guest's code is a placeholder until the program is loaded.
func (r *runner) newMicroGuest(p Path, w Workload, size int) (_ *microGuest, err error) {
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
	kind := pktgen.KindData
	if w == WorkloadPingPong {
		kind = pktgen.KindPing
	}
	tmpl := pktgen.Template(size, 0, peerMAC, driverMAC, kind)
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
		} else if err := g.virtio(vmm.NIC{Port: "vale0:drv", MAC: driverMAC}, size, kind); err != nil {
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
		if err := g.virtio(vmm.NIC{Tap: name, MAC: driverMAC}, size, kind); err != nil {
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
	magic := binary.LittleEndian.Uint32(tmpl[microMagicOff:])
	bufSize := uint64(reg.BufSize())
	if bits.OnesCount64(bufSize) != 1 {
		return fmt.Errorf("bench: netmap buffers of %d bytes: the micro guest needs a power of two", bufSize)
	}
	// The RX ring's CSB entries and kick follow the TX rings'.
	rk, ri := np.RxRing(0), uint64(np.NumTxRings())
	g.rxWindow = min(microRxWindow, uint64(rk.NumSlots()-1)/2)
	g.program = func(w Workload, frames uint64) ([]byte, error) {
		if w == WorkloadPingPong {
			return micro.PtnetPingPong(boot.MicroCodeAddr, micro.PtnetPingSpec{
				TX: micro.PtnetRing{Slots: bar1 + k.Offset() + netmap.RingSlotsOff, NumSlots: k.NumSlots(),
					Atok: microCSBGH, Ktoa: microCSBHG, Kick: bar0 + ptmemdev.RegKickBase},
				RX: micro.PtnetRing{Slots: bar1 + rk.Offset() + netmap.RingSlotsOff, NumSlots: rk.NumSlots(),
					Atok: microCSBGH + ri*netmap.CSBEntrySize, Ktoa: microCSBHG + ri*netmap.CSBEntrySize,
					Kick: bar0 + ptmemdev.RegKickBase + 4*ri},
				BufBase: bar1 + reg.PoolsInfo().BufPoolOffset, BufShift: uint8(bits.TrailingZeros64(bufSize)),
				NumBufs: reg.NumBufs(), FrameLen: uint16(len(tmpl)), SeqOff: 22, Match: magic, MatchOff: microMagicOff,
				Rounds: frames, Times: microTimes, Counters: microCounters,
			})
		}
		if w == WorkloadRX {
			return micro.PtnetRX(boot.MicroCodeAddr, micro.PtnetRXSpec{
				Slots: bar1 + rk.Offset() + netmap.RingSlotsOff, NumSlots: rk.NumSlots(),
				BufBase: bar1 + reg.PoolsInfo().BufPoolOffset, BufShift: uint8(bits.TrailingZeros64(bufSize)),
				NumBufs: reg.NumBufs(), Atok: microCSBGH + ri*netmap.CSBEntrySize, Ktoa: microCSBHG + ri*netmap.CSBEntrySize,
				Kick: bar0 + ptmemdev.RegKickBase + 4*ri, Batch: uint32(min(g.batch, uint64(rk.NumSlots()-1))),
				Frames: frames, SeqOff: 22, Match: magic, MatchOff: microMagicOff,
				Feed: microFeed, FeedKick: microFeedBell, Counters: microCounters,
			})
		}
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

// virtio adds a virtio-net NIC and probes it as Linux's driver would: VERSION_1
// and EVENT_IDX, an RX queue whose descriptor i is a one-buffer device-writable
// chain at microRxBufs + i*microBufStride (none available: the RX program posts
// them), a TX queue whose descriptor i is a one-buffer chain to a frame (virtio-net
// header and tmpl) at microBufs + i*microBufStride, no interrupts wanted.
func (g *microGuest) virtio(nic vmm.NIC, size int, kind pktgen.Kind) error {
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
	tmpl := pktgen.Template(size, virtioHdrLen, peerMAC, driverMAC, kind)
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
	for i := range uint64(microQueue) {
		d := microRxRings + 16*i
		if err := errors.Join(mem.Write64(d, microRxBufs+i*microBufStride), mem.Write32(d+8, microBufStride),
			mem.Write32(d+12, virtio.DescFWrite)); err != nil {
			return fmt.Errorf("bench: virtio RX descriptors: %w", err)
		}
	}
	for _, base := range []uint64{microRxRings, microTxRings} {
		if err := mem.Write16(base+0x1000, virtio.AvailFNoInterrupt); err != nil {
			return fmt.Errorf("bench: virtio avail ring: %w", err)
		}
	}
	var notifyOff [2]uint64
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
		notifyOff[q] = g.mmioRead(cc+vcQueueNotify, 2)
	}
	_ = g.mmio(cc+vcStatus, 1, st|virtio.StatusDriverOK)
	if !nd.Transport.Active() {
		return fmt.Errorf("bench: virtio-net did not start (status %#x)", nd.Transport.Status())
	}
	rxBell, doorbell := caps.notify+notifyOff[0]*caps.mult, caps.notify+notifyOff[1]*caps.mult
	magic := binary.LittleEndian.Uint32(tmpl[virtioHdrLen+microMagicOff:])
	if max(rxBell, doorbell)+2 > uint64(boot.MicroIdentityGiB)<<30 {
		return fmt.Errorf("bench: virtio doorbells at %#x, %#x: outside the micro guest's identity map", rxBell, doorbell)
	}
	g.rxWindow = microRxWindow
	g.program = func(w Workload, frames uint64) ([]byte, error) {
		if w == WorkloadPingPong {
			return micro.VirtqPingPong(boot.MicroCodeAddr, micro.VirtqPingSpec{
				TX:   micro.VirtqRing{Avail: microTxRings + 0x1000, Used: microTxRings + 0x2000, Doorbell: doorbell, Queue: 1},
				RX:   micro.VirtqRing{Avail: microRxRings + 0x1000, Used: microRxRings + 0x2000, Doorbell: rxBell, Queue: 0},
				Size: microQueue, EventIdx: true, TxBuf0: microBufs, RxBuf0: microRxBufs, Stride: microBufStride,
				SeqOff: virtioHdrLen + 22, Match: magic, MatchOff: virtioHdrLen + microMagicOff,
				Rounds: frames, Times: microTimes, Counters: microCounters,
			})
		}
		if w == WorkloadRX {
			return micro.VirtqRX(boot.MicroCodeAddr, micro.VirtqRXSpec{
				Avail: microRxRings + 0x1000, Used: microRxRings + 0x2000, Size: microQueue, Batch: uint16(g.batch),
				Frames: frames, Doorbell: rxBell, Queue: 0, EventIdx: true,
				Buf0: microRxBufs, Stride: microBufStride, SeqOff: virtioHdrLen + 22, HdrLen: virtioHdrLen,
				Match: magic, MatchOff: virtioHdrLen + microMagicOff,
				Feed: microFeed, FeedKick: microFeedBell, Counters: microCounters,
			})
		}
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

// microPingPong runs guest ping-pong with the far end answering (responder, on a
// thread of its own): rounds round trips, each timed by the guest's TSC. The TSC
// rate comes from the host's clock between the guest's ready report (just before
// its first TSC read) and its done report (just after its last): two VM exits apart
// from a run of round trips, so within a fraction of a percent. A round trip that
// never ends (a frame lost) stops the run after microQuiet: one drop.
func (r *runner) microPingPong(ctx context.Context, g *microGuest, p Path, size int, rounds uint64, timeout time.Duration) (Record, error) {
	mem := g.vm.Memory()
	counters, err := mem.Slice(microCounters, micro.PingCountersSize)
	if err != nil {
		return Record{}, fmt.Errorf("bench: guest counters: %w", err)
	}
	times, err := mem.Slice(microTimes, 8*rounds)
	if err != nil {
		return Record{}, fmt.Errorf("bench: guest round-trip times: %w", err)
	}
	rd := func(off uint64) uint64 { return loadQword(counters[off : off+8]) }
	type peerOut struct {
		pongs uint64
		cpu   time.Duration
		err   error
	}
	pctx, stopPeer := context.WithCancel(context.Background())
	defer stopPeer()
	pc := make(chan peerOut, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var o peerOut
		o.pongs, o.cpu, o.err = responder(pctx, g.peer, peerMAC)
		pc <- o
	}()
	// The watchdog: a lost ping or pong would keep the guest waiting forever.
	guestDone := make(chan struct{})
	var gaveUp bool
	var last time.Time
	wd := make(chan struct{})
	go func() {
		defer close(wd)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		seen, moved := uint64(0), time.Now()
		for {
			select {
			case <-guestDone:
				return
			case <-tick.C:
			}
			if n := rd(micro.PingRounds); n != seen {
				seen, moved = n, time.Now()
				last = moved
				continue
			}
			if quiet := time.Since(moved); quiet > microQuiet && (seen > 0 || quiet > 10*microQuiet) {
				gaveUp = true
				g.vm.Stop()
				return
			}
		}
	}()
	irq0 := g.irqs()
	m0 := cpuMark{proc: processCPU(), guest: guestTime()}
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	runErr := g.vm.Run(rctx)
	cancel()
	close(guestDone)
	<-wd
	stopPeer()
	peer := <-pc
	m1 := cpuMark{proc: processCPU(), guest: guestTime(), peer: peer.cpu}
	irqs := g.irqs() - irq0
	done, seqErrs := rd(micro.PingRounds), rd(micro.PingSeqErrors)
	d := g.done
	why := fmt.Sprintf("round trips %d, kicks %d, other frames %d; far end answered %d", done, rd(micro.PingKicks), rd(micro.PingOther), peer.pongs)
	partial := false
	switch {
	case d.ok && uint64(d.value) != rounds:
		return Record{}, fmt.Errorf("bench: the micro guest reported %d round trips, want %d", d.value, rounds)
	case d.ok:
	case ctx.Err() != nil:
		partial = true
	case gaveUp:
	case runErr != nil:
		return Record{}, fmt.Errorf("bench: micro guest on %s: %w (%s)", p, runErr, why)
	default:
		return Record{}, fmt.Errorf("bench: micro guest on %s stopped without reporting (%s)", p, why)
	}
	if peer.err != nil {
		return Record{}, fmt.Errorf("bench: responder: %w (%s)", peer.err, why)
	}
	if done == 0 {
		return Record{}, fmt.Errorf("bench: micro guest on %s: no round trip (%s)", p, why)
	}
	if seqErrs > 0 {
		r.cfg.progress("bench: %s pingpong %d B: %d frames out of sequence (%s)", p, size, seqErrs, why)
	}
	if n := rd(micro.PingOther); n > 0 {
		r.cfg.progress("bench: %s pingpong %d B: %d frames not the far end's, ignored (a host stack on a TAP)", p, size, n)
	}
	done = min(done, rounds)
	ticks := make([]uint64, done)
	var sum uint64
	for i := range ticks {
		ticks[i] = binary.LittleEndian.Uint64(times[8*i:])
		sum += ticks[i]
	}
	// ns per tick: the guest's whole run when it reported, else its round trips.
	end := last
	if d.ok {
		end = d.at
	}
	wallTicks := sum
	if t0, t1 := rd(micro.PingTSCStart), rd(micro.PingTSCEnd); d.ok && t1 > t0 {
		wallTicks = t1 - t0
	}
	var nsPerTick float64
	if !d.readyAt.IsZero() && end.After(d.readyAt) && wallTicks > 0 {
		nsPerTick = float64(end.Sub(d.readyAt)) / float64(wallTicks)
	}
	slices.Sort(ticks)
	pct := func(q float64) time.Duration {
		k := min(max(int(math.Ceil(q/100*float64(len(ticks)))), 1), len(ticks))
		return time.Duration(float64(ticks[k-1]) * nsPerTick)
	}
	if end.IsZero() {
		end = time.Now()
	}
	lost := uint64(0)
	if gaveUp {
		lost = 1
	}
	o := outcome{frames: done + lost, received: done, drops: lost, elapsed: end.Sub(start), cutShort: partial, irqs: irqs}
	o.denom, o.bytes = done, done*uint64(size)
	o.guest, o.host, o.peer = cpuSplit(m0, m1)
	o.res.Kicks = rd(micro.PingKicks)
	o.isPingPong = true
	o.latP50, o.latP99 = pct(50), pct(99)
	return r.record(p, WorkloadPingPong, size, o), nil
}
