package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/ptvmm/ptvmm/guest/pktgen"
	"github.com/ptvmm/ptvmm/notify"
)

// Tier is where the driver side runs.
type Tier string

const (
	TierProcess Tier = "process" // host goroutines over the same memory and eventfds
	TierMicro   Tier = "micro"   // long-mode micro guests on /dev/kvm
	TierLinux   Tier = "linux"   // Linux guests with the guest pktgen
)

// Path is a data path under test.
type Path string

const (
	PathPtnetSwitch  Path = "ptnet-switch"  // passthrough into a switch port, a receiver on another
	PathPtnetPipe    Path = "ptnet-pipe"    // passthrough over a netmap pipe
	PathVirtioTap    Path = "virtio-tap"    // virtio-net over a TAP, a packet socket reading it
	PathVirtioSwitch Path = "virtio-switch" // virtio-net on a switch port, a receiver on another
)

// Paths is every path, in table order.
var Paths = []Path{PathPtnetSwitch, PathPtnetPipe, PathVirtioTap, PathVirtioSwitch}

// passthrough says p is a ptnet path.
func (p Path) passthrough() bool { return strings.HasPrefix(string(p), "ptnet") }

// Workload is what the driver side does.
type Workload string

const (
	WorkloadTX       Workload = "tx"       // the guest sends, the far end receives
	WorkloadRX       Workload = "rx"       // the far end sends, the guest receives
	WorkloadPingPong Workload = "pingpong" // one frame out, its echo back, repeated
)

// Workloads is every workload, in table order.
var Workloads = []Workload{WorkloadTX, WorkloadRX, WorkloadPingPong}

// Sizes are the default frame sizes (Ethernet, without FCS).
var Sizes = []int{60, 1514}

// Frame size limits: the Ethernet minimum, and a 1500-byte MTU.
const (
	MinSize = pktgen.MinFrameSize
	MaxSize = 1514
)

// DefaultDuration is how long each run lasts when neither Duration nor Count is set.
const DefaultDuration = time.Second

// driverBatch is the most frames the driver hands over per sync (netmap pkt-gen's
// default burst), for every path alike.
const driverBatch = 512

// CountTimeout ends a Count run that has not finished by then (a path that stopped
// taking frames must not hang the benchmark).
const CountTimeout = time.Minute

// MaxRoundTrips bounds a ping-pong run given a Count (one round trip takes tens of
// microseconds, a frame of TX tens of nanoseconds).
const MaxRoundTrips = 100000

// Wait is how the host side of every path (ptnet's host loop, virtio-net's queue
// workers) and the process tier's driver wait for work.
type Wait string

const (
	// WaitAuto (the default) is WaitAdaptive where the machine has a core for every
	// thread a run keeps busy (Wait.For), else WaitBlock: a thread spinning on a
	// shared core only delays the thread it waits for.
	WaitAuto Wait = "auto"
	// WaitAdaptive keeps polling for Config.Spin after the last work found, then
	// sleeps until kicked (notify.Adaptive; the driver polls its ring as long before
	// it sleeps): under load neither side sleeps, so neither kicks nor interrupts
	// are paid; idle, both sleep.
	WaitAdaptive Wait = "adaptive"
	// WaitBlock sleeps as soon as there is no work (notify.Block): ptnet's and
	// virtio-net's default in the vmm library.
	WaitBlock Wait = "block"
)

// DefaultSpin is WaitAdaptive's polling window when Config.Spin is zero.
const DefaultSpin = notify.DefaultSpin

// For resolves WaitAuto for workload wl in tier t on a machine with cores CPUs.
// Busy threads: in the process tier's tx and rx two (the driver's, with the far end
// in it, and the host side's); otherwise three (a far end or a vCPU of its own too;
// a linux guest runs every workload on one NIC).
func (w Wait) For(t Tier, wl Workload, cores int) Wait {
	if w != WaitAuto {
		return w
	}
	busy := 3
	if t == TierProcess && wl != WorkloadPingPong {
		busy = 2
	}
	if cores >= busy {
		return WaitAdaptive
	}
	return WaitBlock
}

// hostWait is how the host side of the path being set up waits: notify's mode and
// its polling window.
func (r *runner) hostWait() (notify.Mode, time.Duration) {
	if r.wait == WaitAdaptive {
		return notify.Adaptive, r.cfg.Spin
	}
	return notify.Block, 0
}

// setWait resolves Config.Wait for the runs about to start.
func (r *runner) setWait(w Workload) {
	r.wait = r.cfg.Wait.For(r.rep.Tier, w, r.rep.Machine.Cores)
}

// Config is one benchmark. Zero values take the defaults: the tier the machine allows,
// every path, workload and size, DefaultDuration per run.
type Config struct {
	Tier      Tier
	Paths     []Path
	Workloads []Workload
	Sizes     []int
	// Duration ends each run after that long; Count after that many frames
	// (ping-pong: round trips, at most MaxRoundTrips), or CountTimeout. Count wins
	// when both are set.
	Duration time.Duration
	Count    uint64
	// Repeat runs each path, workload and size that many times and keeps the
	// fastest run (default 1).
	Repeat int
	// Tap names an existing TAP for the virtio-tap path; empty: create one.
	Tap string
	// Progress receives one line per run as it starts and ends (nil: none).
	Progress io.Writer
	// Agent is the static guest agent the linux tier packs as its guests' /init (a
	// static vmrun carries it: vmrun bench passes itself). Empty: the agent is built
	// with the go command from the ptvmm source tree.
	Agent string
	// KernelDir is the guest kernel cache for the linux tier (the layout `make
	// kernel` fills); empty: where vmrun finds it (kcache.Dir).
	KernelDir string
	// Log receives the linux tier's guest consoles and other detail (nil: none).
	Log io.Writer
	// Wait is how the host side and the process tier's driver wait (default
	// WaitAuto); Spin is WaitAdaptive's window (default DefaultSpin).
	Wait Wait
	Spin time.Duration
}

// Machine says what the figures were measured on.
type Machine struct {
	CPU   string `json:"cpu"`
	Cores int    `json:"cores"`
}

// Record is one run: a path, a workload and a frame size.
type Record struct {
	Tier     Tier     `json:"tier"`
	Path     Path     `json:"path"`
	Workload Workload `json:"workload"`
	Size     int      `json:"size"` // Ethernet frame bytes, no FCS
	// Frames the sender got taken (ping-pong: round trips tried), Received those the
	// receiving end counted (ping-pong: echoes back), Drops the difference.
	Frames   uint64  `json:"frames"`
	Received uint64  `json:"received"`
	Drops    uint64  `json:"drops"`
	Seconds  float64 `json:"seconds"`
	Mpps     float64 `json:"mpps"` // received per second (ping-pong: round trips)
	Gbps     float64 `json:"gbps"` // Ethernet bytes received
	// CPU seconds per million frames: the driver side (the guest's work), the host
	// side (device or host loop, switch, TAP, kernel), and the far end.
	CPUGuest float64 `json:"cpu_guest_s_per_mframe"`
	CPUHost  float64 `json:"cpu_host_s_per_mframe"`
	CPUPeer  float64 `json:"cpu_peer_s_per_mframe"`
	// Kicks the driver wrote and interrupts the host sent, per frame.
	KicksPerFrame float64 `json:"kicks_per_frame"`
	IrqsPerFrame  float64 `json:"irqs_per_frame"`
	// Round-trip percentiles (ping-pong only).
	LatencyP50 *float64 `json:"latency_p50_us,omitempty"`
	LatencyP99 *float64 `json:"latency_p99_us,omitempty"`
	// Runs is how many runs were made; the record is the fastest (Config.Repeat).
	Runs int `json:"runs"`
	// Partial: the run was cut short (Ctrl-C).
	Partial bool `json:"partial,omitempty"`
	// Wait and Spin (microseconds; WaitAdaptive only) as the run had them
	// (WaitAuto resolved).
	Wait    Wait    `json:"wait"`
	SpinUS  float64 `json:"spin_us,omitempty"`
	Machine Machine `json:"machine"`
	Kernel  string  `json:"kernel"`
	Date    string  `json:"date"`
}

// Ratio is passthrough Mpps over virtio-net+TAP Mpps for one workload and size.
type Ratio struct {
	Workload    Workload `json:"workload"`
	Size        int      `json:"size"`
	Passthrough Path     `json:"passthrough"`
	Mpps        float64  `json:"mpps"`
	TapMpps     float64  `json:"tap_mpps"`
	Ratio       float64  `json:"ratio"`
}

// Report is a whole benchmark: records in run order, notes (paths or tiers that did
// not run, and why), and the ratios.
//
// Concurrency: plain data; its methods only read it, from any number of goroutines.
type Report struct {
	Tier        Tier     `json:"tier"`
	Wait        Wait     `json:"wait"`
	SpinUS      float64  `json:"spin_us,omitempty"`
	Machine     Machine  `json:"machine"`
	Kernel      string   `json:"kernel"`
	Date        string   `json:"date"`
	Records     []Record `json:"records"`
	Notes       []string `json:"notes"`
	Ratios      []Ratio  `json:"ratios"`
	Interrupted bool     `json:"interrupted"`
}

// normalize fills the defaults and checks the lists.
func (c Config) normalize() (Config, error) {
	if len(c.Paths) == 0 {
		c.Paths = Paths
	}
	if len(c.Workloads) == 0 {
		c.Workloads = Workloads
	}
	if len(c.Sizes) == 0 {
		c.Sizes = Sizes
	}
	if c.Duration <= 0 && c.Count == 0 {
		c.Duration = DefaultDuration
	}
	if c.Count > 0 {
		c.Duration = 0
	}
	switch c.Wait {
	case "":
		c.Wait = WaitAuto
	case WaitAuto, WaitAdaptive, WaitBlock:
	default:
		return c, fmt.Errorf("bench: unknown wait %q (want auto, adaptive or block)", c.Wait)
	}
	if c.Spin < 0 || c.Spin > time.Second {
		return c, fmt.Errorf("bench: spin %v outside 0..1s", c.Spin)
	}
	if c.Spin == 0 {
		c.Spin = DefaultSpin
	}
	if c.Repeat < 0 || c.Repeat > 100 {
		return c, fmt.Errorf("bench: repeat %d outside 1..100", c.Repeat)
	}
	for _, p := range c.Paths {
		if !slices.Contains(Paths, p) {
			return c, fmt.Errorf("bench: unknown path %q (want %s)", p, joinList(Paths))
		}
	}
	for _, w := range c.Workloads {
		if !slices.Contains(Workloads, w) {
			return c, fmt.Errorf("bench: unknown workload %q (want %s)", w, joinList(Workloads))
		}
	}
	for _, s := range c.Sizes {
		if s < MinSize || s > MaxSize {
			return c, fmt.Errorf("bench: frame size %d outside %d..%d", s, MinSize, MaxSize)
		}
	}
	switch c.Tier {
	case "", TierProcess, TierMicro, TierLinux:
	default:
		return c, fmt.Errorf("bench: unknown tier %q (want process, micro or linux)", c.Tier)
	}
	return c, nil
}

func joinList[T ~string](l []T) string {
	s := make([]string, len(l))
	for i, v := range l {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}

// AutoTier is the most faithful tier this machine allows: linux where KVM has
// hardware virtualization and `make kernel` provided a guest kernel, micro on any
// other /dev/kvm (software KVM included), process elsewhere.
func AutoTier() Tier { return autoTier(probeHost("")) }

// TierStatus says whether tier t can run here, and if not, why and what to do.
func TierStatus(t Tier) (ok bool, why string) { return tierStatus(t, probeHost("")) }

// Run runs cfg and returns what it measured. A cancelled ctx (Ctrl-C) ends the run
// in progress, which is kept and marked partial, and the report is returned with
// Interrupted set. A path that cannot run here, or a run that fails, becomes a note
// and the others still run. The error is for a bad Config only.
//
// Concurrency: one Run at a time per process (runs would share the TAP name and
// the two cores they measure).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	host := probeHost(c.KernelDir)
	if c.Tier == "" {
		c.Tier = autoTier(host)
	}
	rep := &Report{Tier: c.Tier, Wait: c.Wait, SpinUS: us(c.Spin), Machine: machine(), Kernel: kernel(),
		Date: time.Now().UTC().Format(time.RFC3339), Records: []Record{}, Notes: []string{}, Ratios: []Ratio{}}
	if ok, why := tierStatus(c.Tier, host); !ok {
		rep.Notes = append(rep.Notes, why)
		c.progress("bench: %s", why)
		return rep, nil
	}
	if c.KernelDir == "" {
		c.KernelDir = host.kernel
	}
	r := &runner{cfg: c, rep: rep}
	if un := unsupported(c.Tier, c.Workloads); len(un) > 0 {
		note := fmt.Sprintf("tier %s: %s not measured: %s", c.Tier, joinList(un), unsupportedWhy[c.Tier])
		rep.Notes = append(rep.Notes, note)
		c.progress("bench: %s", note)
		r.cfg.Workloads = slices.DeleteFunc(slices.Clone(c.Workloads), func(w Workload) bool { return slices.Contains(un, w) })
	}
	switch c.Tier {
	case TierLinux:
		r.runLinux(ctx)
	default:
		r.run(ctx)
	}
	for i := range rep.Records {
		rec := &rep.Records[i]
		if rec.Wait = c.Wait.For(rec.Tier, rec.Workload, rep.Machine.Cores); rec.Wait == WaitAdaptive {
			rec.SpinUS = rep.SpinUS
		}
	}
	rep.Ratios = append(rep.Ratios, ratios(rep.Records)...)
	return rep, nil
}

// tierWorkloads are the workloads each tier measures.
var tierWorkloads = map[Tier][]Workload{
	TierProcess: Workloads,
	TierMicro:   Workloads,
	TierLinux:   Workloads,
}

// unsupportedWhy says why a tier leaves workloads out (none does now).
var unsupportedWhy = map[Tier]string{}

// unsupported lists the workloads in ws tier t does not measure.
func unsupported(t Tier, ws []Workload) []Workload {
	var out []Workload
	for _, w := range ws {
		if !slices.Contains(tierWorkloads[t], w) {
			out = append(out, w)
		}
	}
	return out
}

func (c Config) progress(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format+"\n", args...)
	}
}

// runner runs a benchmark: the process and micro tiers one run at a time (run),
// the linux tier one guest boot per path (runLinux).
type runner struct {
	cfg  Config
	rep  *Report
	wait Wait // Config.Wait resolved for the path being set up
}

func (r *runner) run(ctx context.Context) {
	total := len(r.cfg.Paths) * len(r.cfg.Workloads) * len(r.cfg.Sizes)
	i := 0
	for _, p := range r.cfg.Paths {
		skipped := false
		for _, w := range r.cfg.Workloads {
			for _, s := range r.cfg.Sizes {
				i++
				if ctx.Err() != nil {
					r.rep.Interrupted = true
					return
				}
				if skipped {
					continue
				}
				what := fmt.Sprintf("[%d/%d] %s %s %d B", i, total, p, w, s)
				r.cfg.progress("bench: %s: %s", what, r.limit(w))
				rec, err := r.best(ctx, p, w, s)
				var skip *SkipError
				switch {
				case errors.As(err, &skip):
					skipped = true
					note := fmt.Sprintf("%s: skipped: %s", p, skip.Why)
					r.rep.Notes = append(r.rep.Notes, note)
					r.cfg.progress("bench: %s", note)
					continue
				case err != nil:
					note := fmt.Sprintf("%s %s %d B: failed: %v", p, w, s, err)
					r.rep.Notes = append(r.rep.Notes, note)
					r.cfg.progress("bench: %s", note)
					if ctx.Err() == nil {
						continue
					}
				default:
					r.rep.Records = append(r.rep.Records, rec)
					r.cfg.progress("bench: %s: %s", what, rec.brief())
				}
				if ctx.Err() != nil {
					r.rep.Interrupted = true
					return
				}
			}
		}
	}
}

// best runs p, w, s Config.Repeat times and keeps the run with the highest rate:
// other load on a shared machine only ever slows a run down.
func (r *runner) best(ctx context.Context, p Path, w Workload, s int) (Record, error) {
	var best Record
	for k := range max(1, r.cfg.Repeat) {
		rec, err := r.runOne(ctx, p, w, s)
		if err != nil {
			if k > 0 && ctx.Err() != nil {
				break // keep what the earlier runs measured
			}
			return rec, err
		}
		if k == 0 || (rec.Mpps > best.Mpps && !rec.Partial) {
			best = rec
		}
		best.Runs = k + 1
		if ctx.Err() != nil {
			break
		}
	}
	return best, nil
}

// limit says how long a run lasts, for the progress line.
func (r *runner) limit(w Workload) string {
	if r.cfg.Count > 0 {
		if w == WorkloadPingPong {
			return fmt.Sprintf("%d round trips", min(r.cfg.Count, MaxRoundTrips))
		}
		return fmt.Sprintf("%d frames", r.cfg.Count)
	}
	return r.cfg.Duration.String()
}

func (rec Record) brief() string {
	s := fmt.Sprintf("%s Mpps, %s Gbit/s, %.5f kicks/frame, %.5f irqs/frame, %d drops", rate(rec.Mpps), rate(rec.Gbps), rec.KicksPerFrame, rec.IrqsPerFrame, rec.Drops)
	if rec.LatencyP50 != nil && rec.LatencyP99 != nil {
		s += fmt.Sprintf(", round trip p50 %.1f us p99 %.1f us", *rec.LatencyP50, *rec.LatencyP99)
	}
	if rec.Partial {
		s += " (partial)"
	}
	return s
}

// outcome is what the driver thread measured.
type outcome struct {
	res        pktgen.Result
	err        error
	frames     uint64 // sender's count
	received   uint64
	drops      uint64
	denom      uint64 // frames the per-frame figures are over
	bytes      uint64
	guest      time.Duration
	host       time.Duration
	peer       time.Duration
	irqs       uint64
	elapsed    time.Duration
	cutShort   bool
	latP50     time.Duration
	latP99     time.Duration
	isPingPong bool
}

// runOne sets up path p, runs workload w with frames of size bytes on a locked
// driver thread, and tears the path down.
func (r *runner) runOne(ctx context.Context, p Path, w Workload, size int) (Record, error) {
	r.setWait(w)
	if r.cfg.Tier == TierMicro {
		return r.runMicro(ctx, p, w, size)
	}
	e, err := r.setup(p)
	if err != nil {
		return Record{}, err
	}
	ch := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		ch <- r.drive(ctx, e, w, size)
	}()
	o := <-ch
	cerr := e.close()
	if o.err != nil {
		return Record{}, o.err
	}
	if cerr != nil {
		return Record{}, fmt.Errorf("bench: tear down %s: %w", p, cerr)
	}
	return r.record(p, w, size, o), nil
}

// record turns what a run measured into its Record.
func (r *runner) record(p Path, w Workload, size int, o outcome) Record {
	rec := Record{Tier: r.rep.Tier, Path: p, Workload: w, Size: size, Frames: o.frames, Received: o.received,
		Seconds: o.elapsed.Seconds(), Partial: o.cutShort, Machine: r.rep.Machine, Kernel: r.rep.Kernel, Date: r.rep.Date}
	rec.Drops = o.drops
	if o.elapsed > 0 {
		rec.Mpps = float64(o.received) / o.elapsed.Seconds() / 1e6
		rec.Gbps = float64(o.bytes) * 8 / o.elapsed.Seconds() / 1e9
	}
	if o.denom > 0 {
		mf := float64(o.denom) / 1e6
		rec.CPUGuest = o.guest.Seconds() / mf
		rec.CPUHost = o.host.Seconds() / mf
		rec.CPUPeer = o.peer.Seconds() / mf
		rec.KicksPerFrame = float64(o.res.Kicks) / float64(o.denom)
		rec.IrqsPerFrame = float64(o.irqs) / float64(o.denom)
	}
	if o.isPingPong {
		p50, p99 := us(o.latP50), us(o.latP99)
		rec.LatencyP50, rec.LatencyP99 = &p50, &p99
	}
	return rec
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// drive runs on the locked driver thread: the workload through pktgen, with the far
// end in this thread (TX, RX) or on its own (ping-pong), and the CPU split.
func (r *runner) drive(ctx context.Context, e *env, w Workload, size int) outcome {
	c := pktgen.Config{FrameSize: size, HdrLen: e.hdrLen, Src: driverMAC, Dst: peerMAC,
		Count: r.cfg.Count, Duration: r.cfg.Duration, Batch: driverBatch, Prefill: true}
	if c.Count > 0 {
		c.Duration = CountTimeout
	}
	var (
		o    outcome
		sk   *sink
		src  *source
		feed *rxFeed
		stop context.CancelFunc
		done chan struct{}
		peer struct {
			pongs uint64
			cpu   time.Duration
			err   error
		}
	)
	switch w {
	case WorkloadTX:
		sk = newSink(e.peer, e.peerRing, size)
		c.Mode, c.Tx = pktgen.ModeTx, &txDrain{r: e.tx, s: sk}
	case WorkloadRX:
		src = newSource(e.peer, size, driverMAC, peerMAC, r.cfg.Count)
		// In flight at most what the ring holds besides a batch the driver consumed
		// and the host has not taken back yet (it learns of releases from the CSB,
		// later than the driver's head moves).
		slots := int(e.rx.Ring().NumSlots())
		feed = &rxFeed{r: e.rx, src: src, window: uint64(max(1, slots-1-min(driverBatch, slots/2))), lastHead: e.rx.Ring().Head()}
		c.Mode, c.Rx, c.Idle = pktgen.ModeRx, feed, 300*time.Millisecond
	case WorkloadPingPong:
		c.Mode, c.Tx, c.Rx = pktgen.ModePing, e.tx, e.rx
		c.RoundTimeout = 200 * time.Millisecond
		if c.Count > MaxRoundTrips {
			c.Count = MaxRoundTrips
		}
		var pctx context.Context
		pctx, stop = context.WithCancel(context.Background())
		done = make(chan struct{})
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			defer close(done)
			peer.pongs, peer.cpu, peer.err = responder(pctx, e.peer, peerMAC)
		}()
	}
	irq0, proc0, thr0 := e.hostIrqs(), processCPU(), threadCPU()
	o.res, o.err = pktgen.Run(ctx, c)
	irq1, thr1 := e.hostIrqs(), threadCPU()
	if stop != nil {
		stop()
		<-done
	}
	proc1 := processCPU()
	o.cutShort = ctx.Err() != nil
	o.irqs = irq1 - irq0
	o.elapsed = o.res.Elapsed
	switch w {
	case WorkloadTX:
		sk.settle(o.res.Frames, 200*time.Millisecond)
		o.frames, o.received = o.res.Frames, min(sk.got, o.res.Frames)
		o.drops = o.frames - o.received
		o.denom, o.bytes = o.res.Frames, o.received*uint64(size)
		o.peer = sk.cpu
		if o.err == nil && sk.err != nil {
			o.err = fmt.Errorf("bench: receiver: %w", sk.err)
		}
	case WorkloadRX:
		got := o.res.Frames - min(o.res.Bad, o.res.Frames)
		// Frames still in flight when the run ended are not lost; sequence gaps are.
		o.frames, o.received, o.drops = max(src.sent, got), got, o.res.Lost
		o.denom, o.bytes = got, o.res.Bytes
		o.peer = src.cpu
		if o.err == nil && src.err != nil {
			o.err = fmt.Errorf("bench: generator: %w", src.err)
		}
	case WorkloadPingPong:
		o.frames, o.received, o.drops = o.res.Frames+o.res.Lost, o.res.Frames, o.res.Lost
		o.denom, o.bytes = o.res.Frames, o.res.Bytes
		o.peer = peer.cpu
		o.isPingPong = true
		o.latP50, o.latP99 = o.res.Latency.P50, o.res.Latency.P99
		if o.err == nil && peer.err != nil {
			o.err = fmt.Errorf("bench: responder: %w", peer.err)
		}
	}
	// The driver thread ran the far end too (TX, RX): its CPU is the guest's less
	// the far end's. Everything else in the process is the host's.
	o.guest = thr1 - thr0
	if w != WorkloadPingPong {
		o.guest -= o.peer
	}
	o.host = proc1 - proc0 - (thr1 - thr0)
	if w == WorkloadPingPong {
		o.host -= o.peer
	}
	if o.host < 0 {
		o.host = 0
	}
	if o.guest < 0 {
		o.guest = 0
	}
	if o.err == nil && o.cutShort && o.res.Frames == 0 {
		o.err = errors.New("bench: interrupted before any frame")
	}
	return o
}
