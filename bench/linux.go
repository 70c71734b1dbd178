package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/guest/initramfs"
	"github.com/ptvmm/ptvmm/guest/pktgen"
	"github.com/ptvmm/ptvmm/internal/kcache"
	"github.com/ptvmm/ptvmm/vmm"
)

// The linux tier: real Linux guests (the kernel `make kernel` provides), booted
// through the vmm library as vmrun boots them, one guest per path with one vCPU and
// the path's NIC, whose agent runs the guest pktgen built-in once per workload and
// frame size: over /dev/ptnet0 (the guest module ptvmm_ptnet) on the ptnet paths,
// over eth0 through a packet socket (pktgen -iface) on the virtio-net paths. The far
// end is a host thread on the switch port, the pipe's other end or the TAP (a packet
// socket) that counts pktgen's data frames by size and answers pings, and in an rx
// run sends data frames, paced by the guest's acks. Each run's frames are counted on
// both ends: the guest's summary line says what it sent or received (or its round
// trips), the far end what arrived or what it sent. The guest's CPU is its vCPU's
// time in guest mode, sampled when the run's marker and summary lines reach the
// console.
//
// On a VT-x/AMD-V host this is what users get. Inside the QEMU test host (`make
// bench-linux`) the emulated CPU is the limit and only the ratios mean anything.

const (
	linuxMemSize = 256 << 20
	// linuxCmdline suits the agent initramfs: serial console, reboot through the
	// keyboard controller at the end, one UART, no timer check, a quiet kernel.
	linuxCmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 no_timer_check quiet"
	// linuxBootBudget bounds a guest's boot and power-off, on top of its runs.
	linuxBootBudget = 3 * time.Minute
	// linuxMarker starts the console line the guest prints before run i.
	linuxMarker = "ptvmm-bench: begin "
	// linuxPeerSlots is the far end's RX ring on a switch: roomy, since in the test
	// host the far end shares one CPU with the guest.
	linuxPeerSlots = 4096
	// linuxRxWindow bounds what the far end of an rx run keeps in flight (sent, not
	// acknowledged by the guest's pktgen): below a TAP's queue (500 frames) and a
	// 1024-slot ring less a guest batch, so nothing on the way overflows and a run
	// measures the path's rate, not its losses. The guest acknowledges every
	// linuxRxAck frames and before it waits (pktgen -ack).
	linuxRxWindow = 448
	linuxRxAck    = 64
	// linuxRxIdle ends a guest's rx run that stopped receiving (frames lost).
	linuxRxIdle = 5 * time.Second
	// linuxAckTimeout: with the window full and no ack for that long (the window's
	// last frames or an ack lost), what is in flight is written off. Generous: an
	// emulated guest is slow.
	linuxAckTimeout = 3 * time.Second
	// linuxFlush is the console line before the guest drains what an earlier rx
	// run left on the way (its time ran out with frames in flight), out of any
	// run's sight.
	linuxFlush = "ptvmm-bench: flush"
)

// linuxRun is one pktgen command in a guest and what was seen of it.
type linuxRun struct {
	w    Workload
	size int
	// Filled from the console (on the vCPU thread) as the run starts and ends.
	began, ended bool
	begin, end   cpuMark
	irq0, irq1   uint64
	data0, data1 uint64    // far end's data frames of this size
	pong0, pong1 uint64    // far end's answered pings of this size
	kick0, kick1 [2]uint64 // virtio-net: the device's TX and RX queue kicks
	sum          pktgen.Summary
	// rx: the far end's sending, from the guest pktgen's first line on.
	job *rxJob
}

// linuxGuest is one boot: the VM, its NIC and the far end.
type linuxGuest struct {
	vm      *vmm.VM
	net     *vmm.Network
	peer    *linuxPeer
	irqs    func() uint64
	kicks   func() [2]uint64
	watch   *vmm.AgentWatcher
	console *consoleLines
	closers []func() error
}

func (g *linuxGuest) close() error {
	var err error
	for _, c := range g.closers {
		err = errors.Join(err, c())
	}
	return err
}

// runLinux boots one guest per path (Repeat times) and keeps, per workload and
// size, the fastest run.
func (r *runner) runLinux(ctx context.Context) {
	agent, cleanup, err := r.linuxAgent()
	if err != nil {
		note := fmt.Sprintf("tier linux: %v", err)
		r.rep.Notes = append(r.rep.Notes, note)
		r.cfg.progress("bench: %s", note)
		return
	}
	defer cleanup()
	if strings.Contains(r.rep.Machine.CPU, "QEMU") {
		note := "tier linux: the CPU is emulated (QEMU): only the ratios between paths mean anything"
		r.rep.Notes = append(r.rep.Notes, note)
		r.cfg.progress("bench: %s", note)
	}
	total := len(r.cfg.Paths) * len(r.cfg.Workloads) * len(r.cfg.Sizes)
	idx := 0
	for _, p := range r.cfg.Paths {
		var best []Record
		var failed error
		for k := range max(1, r.cfg.Repeat) {
			if ctx.Err() != nil {
				break
			}
			r.cfg.progress("bench: %s: booting a Linux guest for %d runs (%s each)", p, len(r.cfg.Workloads)*len(r.cfg.Sizes), r.limit(WorkloadTX))
			recs, err := r.linuxBoot(ctx, p, agent, idx, total)
			var skip *SkipError
			if errors.As(err, &skip) {
				failed = err
				break
			}
			if err != nil && len(recs) == 0 && ctx.Err() == nil {
				// A guest that crashed before any result (nested virtualization under
				// emulation does, now and then) is booted once more.
				r.cfg.progress("bench: %s: %v: booting again once", p, err)
				recs, err = r.linuxBoot(ctx, p, agent, idx, total)
			}
			if err != nil {
				failed = err
				if len(recs) == 0 {
					break
				}
			}
			best = keepFastest(best, recs, k+1)
		}
		idx += len(r.cfg.Workloads) * len(r.cfg.Sizes)
		var skip *SkipError
		switch {
		case errors.As(failed, &skip):
			note := fmt.Sprintf("%s: skipped: %s", p, skip.Why)
			r.rep.Notes = append(r.rep.Notes, note)
			r.cfg.progress("bench: %s", note)
		case failed != nil:
			note := fmt.Sprintf("%s: failed: %v", p, failed)
			r.rep.Notes = append(r.rep.Notes, note)
			r.cfg.progress("bench: %s", note)
		}
		r.rep.Records = append(r.rep.Records, best...)
		if ctx.Err() != nil {
			r.rep.Interrupted = true
			break
		}
	}
}

// keepFastest merges the records of one more boot into best: per workload and
// size the one with the higher rate; runs says how many boots there were.
func keepFastest(best, recs []Record, runs int) []Record {
	for _, n := range recs {
		found := false
		for i := range best {
			if best[i].Workload == n.Workload && best[i].Size == n.Size {
				found = true
				if n.Mpps > best[i].Mpps && !n.Partial {
					best[i] = n
				}
			}
		}
		if !found {
			best = append(best, n)
		}
	}
	for i := range best {
		best[i].Runs = runs
	}
	return best
}

// linuxAgent is the static agent to pack as /init: Config.Agent, or one built
// now with the go command.
func (r *runner) linuxAgent() (string, func(), error) {
	if r.cfg.Agent != "" {
		if _, err := os.Stat(r.cfg.Agent); err != nil {
			return "", nil, fmt.Errorf("guest agent: %w", err)
		}
		return r.cfg.Agent, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "ptvmm-bench-")
	if err != nil {
		return "", nil, fmt.Errorf("guest agent: %w", err)
	}
	path := filepath.Join(dir, "ptvmm-agent")
	if err := initramfs.BuildAgent(path); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("no guest agent: run a static vmrun (make vmrun: bin/vmrun carries the agent), or from the ptvmm checkout with the go command: %w", err)
	}
	return path, func() { os.RemoveAll(dir) }, nil
}

// linuxCommands are the agent's commands for runs: a marker, then pktgen.
func (r *runner) linuxCommands(p Path, runs []*linuxRun) string {
	var b strings.Builder
	limit := func(w Workload) string {
		if r.cfg.Count > 0 {
			n := r.cfg.Count
			if w == WorkloadPingPong {
				n = min(n, MaxRoundTrips)
			}
			return fmt.Sprintf("-count %d", n)
		}
		return fmt.Sprintf("-duration %s", r.cfg.Duration)
	}
	dev := ""
	if !p.passthrough() {
		dev = " -iface eth0"
	}
	src, dst := net.HardwareAddr(driverMAC[:]), net.HardwareAddr(peerMAC[:])
	rxBefore := false
	for i, run := range runs {
		if run.w == WorkloadRX && rxBefore {
			fmt.Fprintf(&b, "/bin/ptvmm-agent echo %s\n", linuxFlush)
			fmt.Fprintf(&b, "/bin/ptvmm-agent pktgen%s -mode rx -duration 300ms\n", dev)
		}
		fmt.Fprintf(&b, "/bin/ptvmm-agent echo %s%d\n", linuxMarker, i)
		switch run.w {
		case WorkloadRX:
			rxBefore = true
			lim := limit(run.w)
			if r.cfg.Count > 0 {
				lim += fmt.Sprintf(" -duration %s", CountTimeout) // a far end that stopped sending
			}
			fmt.Fprintf(&b, "/bin/ptvmm-agent pktgen%s -mode rx -size %d -batch %d %s -idle %s -ack %d -src %s -dst %s\n",
				dev, run.size, driverBatch, lim, linuxRxIdle, linuxRxAck, src, dst)
		case WorkloadTX:
			fmt.Fprintf(&b, "/bin/ptvmm-agent pktgen%s -mode tx -size %d -batch %d %s -src %s -dst %s -drain 30s\n",
				dev, run.size, driverBatch, limit(run.w), src, dst)
		case WorkloadPingPong:
			fmt.Fprintf(&b, "/bin/ptvmm-agent pktgen%s -mode ping -size %d %s -src %s -dst %s -round-timeout 1s\n",
				dev, run.size, limit(run.w), src, dst)
		}
	}
	return b.String()
}

// linuxBoot boots a guest on path p that runs every workload and size, and
// returns the records of the runs that completed (with an error for the rest).
func (r *runner) linuxBoot(ctx context.Context, p Path, agent string, idx, total int) ([]Record, error) {
	var runs []*linuxRun
	for _, w := range r.cfg.Workloads {
		for _, s := range r.cfg.Sizes {
			runs = append(runs, &linuxRun{w: w, size: s})
		}
	}
	k, err := kcache.Load(r.cfg.KernelDir)
	if err != nil {
		return nil, err
	}
	var mods []string
	if p.passthrough() {
		m := k.ModulePath("ptvmm_ptnet")
		if _, err := os.Stat(m); err != nil {
			return nil, &SkipError{Why: fmt.Sprintf("the guest driver ptvmm_ptnet.ko is not built for kernel %s: run `make kernel` (it needs the linux-headers-%s package)", k.Version, k.Version)}
		}
		mods = []string{m}
	} else {
		names, err := k.Modules("virtio-net")
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			mods = append(mods, k.ModulePath(n))
		}
	}
	var img bytes.Buffer
	if err := initramfs.Build(&img, initramfs.Spec{Init: agent, Modules: mods, Cmd: r.linuxCommands(p, runs)}); err != nil {
		return nil, fmt.Errorf("guest initramfs: %w", err)
	}

	g, err := r.newLinuxGuest(p, k.Vmlinuz(), img.Bytes(), runs, idx, total)
	if err != nil {
		return nil, err
	}
	defer g.close()
	budget := linuxBootBudget
	for range runs {
		if r.cfg.Count > 0 {
			budget += CountTimeout
		} else {
			budget += r.cfg.Duration + 30*time.Second
		}
	}
	pctx, stopPeer := context.WithCancel(context.Background())
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		g.peer.run(pctx)
	}()
	rctx, cancel := context.WithTimeout(ctx, budget)
	runErr := g.vm.Run(rctx)
	cancel()
	g.peer.settle(200*time.Millisecond, 2*time.Second)
	stopPeer()
	<-peerDone

	var recs []Record
	missing := 0
	for _, run := range runs {
		rec, ok := r.linuxRecord(p, run, g.peer)
		if !ok {
			missing++
			continue
		}
		recs = append(recs, rec)
	}
	status, hasStatus := g.watch.ExitStatus()
	var why string
	switch {
	case g.peer.err != nil:
		return recs, fmt.Errorf("far end: %w", g.peer.err)
	case ctx.Err() != nil:
		return recs, nil // Ctrl-C: the runs that finished are kept
	case runErr != nil:
		why = fmt.Sprintf("guest: %v", runErr)
	case missing == 0 && hasStatus && status == 0:
		return recs, nil
	case hasStatus:
		why = fmt.Sprintf("the guest's pktgen failed (agent exit status %d)", status)
	default:
		why = "the guest ended without the agent's exit status"
	}
	if msg, ok := g.watch.Panic(); ok {
		why = "the guest kernel panicked: " + msg
	}
	// One line for the note; the console for whoever reads the progress.
	r.cfg.progress("bench: %s: %s; last console lines:\n%s", p, why, g.console.tail())
	return recs, fmt.Errorf("%s; %d of %d runs without a result", why, missing, len(runs))
}

// linuxRecord turns a finished run into a Record; false when it did not finish.
func (r *runner) linuxRecord(p Path, run *linuxRun, peer *linuxPeer) (Record, bool) {
	if !run.began || !run.ended || run.sum == nil {
		return Record{}, false
	}
	u := func(k string) uint64 { v, _ := run.sum.Uint(k); return v }
	f := func(k string) float64 { v, _ := run.sum.Float(k); return v }
	secs := f("secs")
	o := outcome{elapsed: time.Duration(secs * float64(time.Second))}
	switch run.w {
	case WorkloadTX:
		o.frames = u("frames")
		// Frames of this size that reached the far end during the run, or after it
		// (still in flight when the guest printed its summary).
		o.received = min(peer.data(run.size)-run.data0, o.frames)
		o.drops = o.frames - o.received
		o.denom, o.bytes = o.frames, o.received*uint64(run.size)
	case WorkloadRX:
		// The far end's count of frames sent; the guest's of frames received and
		// of sequence gaps (lost). Frames still on the way when the guest's time ran
		// out are neither.
		var sent uint64
		if run.job != nil {
			sent = run.job.sent.Load()
		}
		got := u("frames") - min(u("bad"), u("frames"))
		o.received = min(got, sent)
		o.drops = min(u("lost"), sent-o.received)
		o.frames = o.received + o.drops
		o.denom, o.bytes = o.received, o.received*uint64(run.size)
	case WorkloadPingPong:
		o.received, o.drops = u("rtts"), u("lost")
		o.frames = o.received + o.drops
		o.denom, o.bytes = o.received, o.received*uint64(run.size)
		o.isPingPong = true
		o.latP50 = time.Duration(f("p50us") * float64(time.Microsecond))
		o.latP99 = time.Duration(f("p99us") * float64(time.Microsecond))
	}
	o.guest, o.host, o.peer = cpuSplit(run.begin, run.end)
	if p.passthrough() {
		// The rings the run used (rx: not the acks' TX ring).
		o.res.Kicks, o.irqs = u("kicks"), u("irqs")
	} else {
		// The device's doorbells: the TX queue's for tx, the RX queue's (the
		// driver's refills) for rx, both for a round trip.
		o.irqs = run.irq1 - run.irq0
		tx, rx := run.kick1[0]-run.kick0[0], run.kick1[1]-run.kick0[1]
		switch run.w {
		case WorkloadTX:
			o.res.Kicks = tx
		case WorkloadRX:
			o.res.Kicks = rx
		default:
			o.res.Kicks = tx + rx
		}
	}
	rec := r.record(p, run.w, run.size, o)
	if o.frames == 0 {
		rec.Mpps, rec.Gbps = 0, 0
	}
	return rec, true
}

// newLinuxGuest builds the VM with path p's NIC and far end; its console feeds
// the runs' marks.
func (r *runner) newLinuxGuest(p Path, kernel string, initrd []byte, runs []*linuxRun, idx, total int) (_ *linuxGuest, err error) {
	n := vmm.NewNetwork()
	g := &linuxGuest{net: n}
	r.setWait(WorkloadTX) // one NIC for every workload: all alike in this tier
	mode, spin := r.hostWait()
	defer func() {
		if err != nil {
			_ = g.close()
		}
	}()
	cur := -1
	g.console = &consoleLines{log: r.cfg.Log}
	g.console.fn = func(line string) {
		t := strings.TrimSpace(line)
		if t == linuxFlush {
			g.peer.stopRx()
			cur = -1
			return
		}
		if rest, ok := strings.CutPrefix(t, linuxMarker); ok {
			g.peer.stopRx() // an rx run that ended without its summary
			var i int
			if _, err := fmt.Sscan(rest, &i); err == nil && i >= 0 && i < len(runs) && !runs[i].began {
				cur = i
				run := runs[i]
				run.began = true
				run.begin = cpuMark{proc: processCPU(), guest: guestTime(), peer: g.peer.cpu()}
				run.irq0 = g.irqs()
				run.kick0 = g.kicks()
				run.data0 = g.peer.data(run.size)
				run.pong0 = g.peer.pongs(run.size)
				r.cfg.progress("bench: [%d/%d] %s %s %d B: %s", idx+i+1, total, p, run.w, run.size, r.limit(run.w))
			}
			return
		}
		if cur < 0 || runs[cur].ended {
			return
		}
		run := runs[cur]
		if s, ok := pktgen.ParseSummary(line); ok {
			g.peer.stopRx()
			run.ended = true
			run.end = cpuMark{proc: processCPU(), guest: guestTime(), peer: g.peer.cpu()}
			run.irq1 = g.irqs()
			run.kick1 = g.kicks()
			run.data1 = g.peer.data(run.size)
			run.pong1 = g.peer.pongs(run.size)
			run.sum = s
			far := fmt.Sprintf("far end %d (+%d pings answered)", run.data1-run.data0, run.pong1-run.pong0)
			if run.job != nil {
				far = fmt.Sprintf("far end sent %d (%d acks back, %d written off)", run.job.sent.Load(), run.job.acks.Load(), run.job.writtenOff.Load())
			}
			r.cfg.progress("bench: [%d/%d] %s %s %d B: guest %s frames in %s s (%s lost), %s",
				idx+cur+1, total, p, run.w, run.size, s["frames"], s["secs"], s["lost"], far)
			return
		}
		if run.w == WorkloadRX && run.job == nil && strings.HasPrefix(t, "pktgen: ") {
			// The guest's pktgen has its rings (it says so first): send.
			run.job = g.peer.startRx(run.size, r.cfg.Count)
		}
	}
	g.watch = vmm.NewAgentWatcher(g.console)
	kimg, err := os.ReadFile(kernel)
	if err != nil {
		_ = n.Close()
		return nil, fmt.Errorf("guest kernel: %w", err)
	}
	g.vm, err = vmm.New(vmm.Config{KernelImage: kimg, InitrdImage: initrd, Cmdline: linuxCmdline,
		MemSize: linuxMemSize, CPUs: 1, Network: n, Console: g.watch})
	if err != nil {
		_ = n.Close()
		return nil, fmt.Errorf("guest: %w", err)
	}
	vmClose := func() error { return errors.Join(g.vm.Close(), n.Close()) }
	var peer backends.Port
	switch p {
	case PathPtnetSwitch, PathVirtioSwitch:
		ep, err := n.Switches().OpenEndpoint("vale0:peer", netmap.PortConfig{RxSlots: linuxPeerSlots})
		if err != nil {
			g.closers = append(g.closers, vmClose)
			return nil, fmt.Errorf("switch port: %w", err)
		}
		peer = ep
		g.closers = append(g.closers, ep.Close, vmClose)
		model := vmm.NICVirtio
		if p == PathPtnetSwitch {
			model = vmm.NICPtnet
		}
		nd, err := g.vm.AddNIC(0, vmm.NIC{Model: model, Port: "vale0:drv", MAC: driverMAC, Mode: mode, Spin: spin})
		if err != nil {
			return nil, fmt.Errorf("NIC: %w", err)
		}
		g.irqs, g.kicks = nicIrqs(nd), nicKicks(nd)
		learnBoth(n.Switches().Get("vale0"), "drv", ep)
	case PathPtnetPipe:
		slave, relSlave, err := n.OpenPort("bp}1", netmap.PortConfig{})
		if err != nil {
			g.closers = append(g.closers, vmClose)
			return nil, fmt.Errorf("pipe: %w", err)
		}
		ep, err := netmap.NewEndpoint(slave, false)
		if err != nil {
			_ = relSlave()
			g.closers = append(g.closers, vmClose)
			return nil, fmt.Errorf("pipe end: %w", err)
		}
		peer = ep
		g.closers = append(g.closers, ep.Close, vmClose, relSlave)
		nd, err := g.vm.AddNIC(0, vmm.NIC{Model: vmm.NICPtnet, Port: "bp{1", MAC: driverMAC, Mode: mode, Spin: spin})
		if err != nil {
			return nil, fmt.Errorf("NIC: %w", err)
		}
		g.irqs, g.kicks = nicIrqs(nd), nicKicks(nd)
	case PathVirtioTap:
		g.closers = append(g.closers, vmClose)
		name := r.cfg.Tap
		if name == "" {
			name = tapName()
			if ok, why := tap.CanCreate(); !ok {
				return nil, &SkipError{Why: fmt.Sprintf("cannot create a TAP (%s): run as root, or create one with `ip tuntap add ptvb0 mode tap user $USER && ip link set ptvb0 up` and pass -tap ptvb0", why)}
			}
		} else if !tap.Exists(name) {
			return nil, &SkipError{Why: fmt.Sprintf("TAP %s does not exist: create it with `ip tuntap add %s mode tap user $USER && ip link set %s up`", name, name, name)}
		}
		nd, err := g.vm.AddNIC(0, vmm.NIC{Tap: name, MAC: driverMAC, Mode: mode, Spin: spin})
		if err != nil {
			return nil, fmt.Errorf("NIC: %w", err)
		}
		g.irqs, g.kicks = nicIrqs(nd), nicKicks(nd)
		quietIPv6(name)
		pk, err := openPacket(name)
		if err != nil {
			return nil, &SkipError{Why: fmt.Sprintf("cannot read TAP %s from the host: %v (needs CAP_NET_RAW: run as root)", name, err)}
		}
		peer = pk
		g.closers = append([]func() error{pk.Close}, g.closers...)
	default:
		g.closers = append(g.closers, vmClose)
		return nil, fmt.Errorf("unknown path %q", p)
	}
	g.peer = newLinuxPeer(peer)
	return g, nil
}

// nicIrqs counts the interrupts nd's device sent.
func nicIrqs(nd *vmm.NICDevice) func() uint64 {
	return func() uint64 {
		var s uint64
		if nd.Ptnet != nil {
			for _, st := range nd.Ptnet.Ptnet.LoopStats() {
				s += st.Interrupts
			}
			return s
		}
		for _, st := range nd.Net.Stats() {
			s += st.Interrupts
		}
		return s
	}
}

// nicKicks counts the kicks nd's virtio-net device received: TX queues', RX
// queues' (zero for ptnet, whose kicks the guest's pktgen counts).
func nicKicks(nd *vmm.NICDevice) func() [2]uint64 {
	return func() [2]uint64 {
		var k [2]uint64
		if nd.Net == nil {
			return k
		}
		for _, st := range nd.Net.Stats() {
			k[0] += st.TxKicks
			k[1] += st.RxKicks
		}
		return k
	}
}

// linuxPeer is the far end of a linux-tier guest: on a locked thread of its own it
// receives from the port, counts pktgen's data frames by size and answers pings
// with pongs (as the process tier's responder does); during an rx run it sends
// (startRx).
//
// Concurrency: run on one goroutine; data, pongs, cpu, startRx and stopRx from
// any goroutine; err after run returned.
type linuxPeer struct {
	p      backends.Port
	job    atomic.Pointer[rxJob] // nil: nothing to send
	window uint64
	// ackTimeout is linuxAckTimeout (tests shorten it).
	ackTimeout time.Duration
	byData     [MaxSize + 1]atomic.Uint64
	byPong     [MaxSize + 1]atomic.Uint64
	other      atomic.Uint64
	cpuNS      atomic.Int64
	lastRx     atomic.Int64 // unix nanoseconds of the last frame
	err        error
}

func newLinuxPeer(p backends.Port) *linuxPeer {
	return &linuxPeer{p: p, window: linuxRxWindow, ackTimeout: linuxAckTimeout}
}

// rxJob is the far end's part of an rx run: pktgen data frames of size to the
// guest, sequence numbers from 0, at most the peer's window ahead of what the
// guest acknowledged, up to limit frames (0: until stopped).
//
// Concurrency: the peer's goroutine sends and counts; the counters may be read
// from any goroutine.
type rxJob struct {
	size  int
	limit uint64
	sent  atomic.Uint64
	// acked is the next sequence number the guest expects, from its acks.
	acked      atomic.Uint64
	acks       atomic.Uint64
	writtenOff atomic.Uint64 // frames given up on after the peer's ackTimeout
}

// startRx makes the peer send for an rx run (ending the one before, if any).
func (lp *linuxPeer) startRx(size int, limit uint64) *rxJob {
	j := &rxJob{size: size, limit: limit}
	lp.job.Store(j)
	return j
}

// stopRx ends the rx run's sending (frames in the peer's hands are still sent).
func (lp *linuxPeer) stopRx() { lp.job.Store(nil) }

// rxSender is the peer goroutine's side of the rx jobs.
type rxSender struct {
	lp     *linuxPeer
	cur    *rxJob
	frames [][]byte
	base   uint64    // in flight counts from here at least (moved by a write-off)
	moved  time.Time // the window last moved
}

// send sends what the window allows now; it says whether it sent anything.
func (s *rxSender) send() (bool, error) {
	j := s.lp.job.Load()
	if j != s.cur {
		s.cur = j
		if j != nil {
			s.frames = s.frames[:0]
			for range peerBatch {
				s.frames = append(s.frames, pktgen.Template(j.size, 0, driverMAC, peerMAC, pktgen.KindData))
			}
			s.base, s.moved = 0, time.Now()
		}
	}
	if j == nil {
		return false, nil
	}
	sent := j.sent.Load()
	done := max(min(j.acked.Load(), sent), s.base)
	n := s.lp.window - min(s.lp.window, sent-done)
	if j.limit > 0 {
		n = min(n, j.limit-min(sent, j.limit))
	}
	n = min(n, uint64(len(s.frames)))
	if n == 0 {
		if sent-done >= s.lp.window && time.Since(s.moved) >= s.lp.ackTimeout {
			j.writtenOff.Add(sent - done)
			s.base, s.moved = sent, time.Now()
		}
		return false, nil
	}
	for i := range n {
		pktgen.Stamp(s.frames[i], sent+i, 0)
	}
	k, err := s.lp.p.Send(s.frames[:n])
	j.sent.Add(uint64(k))
	return k > 0, err
}

// ack takes an ack from the guest: seq is the next sequence number it expects.
func (s *rxSender) ack(seq uint64) {
	j := s.cur
	if j == nil {
		return
	}
	j.acks.Add(1)
	if seq > j.acked.Load() && seq <= j.sent.Load() {
		j.acked.Store(seq)
		s.moved = time.Now()
	}
}

func (lp *linuxPeer) data(size int) uint64 {
	if size < 0 || size > MaxSize {
		return 0
	}
	return lp.byData[size].Load()
}

func (lp *linuxPeer) pongs(size int) uint64 {
	if size < 0 || size > MaxSize {
		return 0
	}
	return lp.byPong[size].Load()
}

func (lp *linuxPeer) cpu() time.Duration { return time.Duration(lp.cpuNS.Load()) }

// settle waits until no frame came for quiet (at most limit): frames in flight
// when the guest went down are counted.
func (lp *linuxPeer) settle(quiet, limit time.Duration) {
	end := time.Now().Add(limit)
	for time.Now().Before(end) {
		if time.Since(time.Unix(0, lp.lastRx.Load())) >= quiet {
			return
		}
		time.Sleep(quiet / 4)
	}
}

func (lp *linuxPeer) run(ctx context.Context) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0 := threadCPU()
	bufs := make([][]byte, peerBatch)
	lens := make([]int, peerBatch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	out := make([][]byte, 0, peerBatch)
	fd := lp.p.ReadyFD()
	tx := &rxSender{lp: lp}
	for ctx.Err() == nil {
		busy, err := tx.send()
		if err != nil {
			lp.err = err
			return
		}
		n, err := lp.p.Recv(bufs, lens)
		if err != nil {
			lp.err = err
			return
		}
		if n == 0 {
			lp.cpuNS.Store(int64(threadCPU() - t0))
			if busy {
				continue
			}
			// Sending: an ack opens the window (it makes the port readable).
			wait := 20 * time.Millisecond
			if tx.cur != nil {
				wait = time.Millisecond
			}
			if fd >= 0 {
				if _, err := waitFD(fd, wait); err != nil {
					lp.err = err
					return
				}
			} else {
				time.Sleep(100 * time.Microsecond)
			}
			continue
		}
		lp.lastRx.Store(time.Now().UnixNano())
		out = out[:0]
		for i := range n {
			e := bufs[i][:lens[i]]
			h, err := pktgen.Parse(e)
			switch {
			case err != nil || len(e) > MaxSize:
				lp.other.Add(1)
			case h.Kind == pktgen.KindData:
				lp.byData[len(e)].Add(1)
			case h.Kind == pktgen.KindAck:
				tx.ack(h.Seq)
			case h.Kind == pktgen.KindPing:
				copy(e[0:6], h.Src[:])
				copy(e[6:12], peerMAC[:])
				binary.LittleEndian.PutUint16(e[18:], uint16(pktgen.KindPong))
				out = append(out, e)
			default:
				lp.other.Add(1)
			}
		}
		for try := 0; len(out) > 0 && try < 100 && ctx.Err() == nil; try++ {
			k, err := lp.p.Send(out)
			if err != nil {
				lp.err = err
				return
			}
			for _, e := range out[:k] {
				lp.byPong[len(e)].Add(1)
			}
			out = out[k:]
			if len(out) > 0 {
				time.Sleep(10 * time.Microsecond) // the port is full: let it drain
			}
		}
		lp.cpuNS.Store(int64(threadCPU() - t0))
	}
}

// consoleLines splits a guest console into lines for fn (called on the writer's
// goroutine: the vCPU thread), copies it to log, and keeps the last lines.
//
// Concurrency: Write from one goroutine at a time; tail from any.
type consoleLines struct {
	fn   func(line string)
	log  io.Writer
	mu   sync.Mutex
	part []byte
	last []string
}

const consoleTail = 40

func (c *consoleLines) Write(p []byte) (int, error) {
	if c.log != nil {
		_, _ = c.log.Write(p)
	}
	c.mu.Lock()
	c.part = append(c.part, p...)
	var lines []string
	for {
		i := bytes.IndexByte(c.part, '\n')
		if i < 0 {
			break
		}
		l := strings.TrimRight(string(c.part[:i]), "\r")
		c.part = c.part[i+1:]
		lines = append(lines, l)
		c.last = append(c.last, l)
		if len(c.last) > consoleTail {
			c.last = c.last[len(c.last)-consoleTail:]
		}
	}
	if len(c.part) > 4096 { // a line that never ends: keep its tail
		c.part = append([]byte(nil), c.part[len(c.part)-4096:]...)
	}
	c.mu.Unlock()
	if c.fn != nil {
		for _, l := range lines {
			c.fn(l)
		}
	}
	return len(p), nil
}

func (c *consoleLines) tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return "    " + strings.Join(c.last, "\n    ")
}
