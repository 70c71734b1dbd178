package netmap

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/notify"
)

// DriverConfig describes the app/guest side of a port whose host loop runs over a
// CSB (SPECS 3.6).
type DriverConfig struct {
	Mem  []byte // the port's region as the app maps it (BAR1, or the memfd)
	Nifp uint64 // netmap_if offset in Mem (ptnet NIFP_OFS)
	CSB  *CSB
	// Kick writes the doorbell of CSB ring i (a store to KICK(i), an eventfd write).
	Kick func(ring int) error
	// Wait blocks until CSB ring i's interrupt or timeout (negative: no timeout) and
	// reports whether the interrupt came. Nil: the driver polls the CSB instead.
	Wait func(ring int, timeout time.Duration) (bool, error)
	// Spin, if set, makes DriverRing.Wait poll ktoa for up to this long before it
	// arms interrupts and blocks: a host loop that is still running publishes
	// within microseconds, and an interrupt round trip (host eventfd write, wakeup)
	// costs more than that. Zero: block at once.
	Spin time.Duration
}

// DriverRingStats are one driver ring's counters (monotonic).
type DriverRingStats struct {
	Syncs      uint64 // Sync calls
	Kicks      uint64 // doorbell writes
	Waits      uint64 // times Wait blocked (in Config.Wait, or polling without it)
	Interrupts uint64 // Config.Wait calls that returned true
	Reinits    uint64 // bad head/cur from the ring's user: user ring reinitialised
	Errors     uint64 // failed kicks or waits, impossible values from the host
}

// Driver is the app side of a port whose host loop runs over a CSB: the netmap user
// view of its rings plus txsync/rxsync over the CSB, written once for a Linux guest
// process (Mem = BAR1, Kick = a register store), a host process and benchmarks.
//
// Concurrency: each DriverRing is used by one goroutine at a time (as a netmap ring
// has one user); different rings may be used concurrently.
type Driver struct {
	cfg    DriverConfig
	nif    *If
	tx, rx []*DriverRing
}

// DriverRing is one ring of a Driver: Ring() is the user view (head/cur/tail in the
// netmap_ring header in Mem, which in CSB mode only the app reads and writes; the
// host never looks at it), Sync publishes it through the CSB.
type DriverRing struct {
	d    *Driver
	idx  int // CSB ring index
	dir  Dir
	ring *Ring
	num  uint32
	csb  *CSB

	// The app-side kring (netmap guest kring): what was last published to atok and
	// last read from ktoa.
	rhead, rcur   uint32
	hwcur, hwtail uint32
	// kickGen is the host's kick generation our last kick answered (0: none, or
	// a host that writes none); skipped says a sync left out a kick since.
	kickGen uint32
	skipped bool

	syncs, kicks, waits, irqs, reinits, errs atomic.Uint64
}

// NewDriver opens the netmap_if at cfg.Nifp and its HW rings, and takes the ring
// state from the CSB (which the host side initialised: InitCSB on PTCTL CREATE).
func NewDriver(cfg DriverConfig) (*Driver, error) {
	if cfg.CSB == nil {
		return nil, errors.New("netmap: driver: no CSB")
	}
	if cfg.Kick == nil {
		return nil, errors.New("netmap: driver: no Kick function")
	}
	nif, err := OpenIf(cfg.Mem, cfg.Nifp)
	if err != nil {
		return nil, fmt.Errorf("netmap: driver: %w", err)
	}
	ntx, nrx := nif.TxRings(), nif.RxRings()
	if ntx < 1 || nrx < 1 || ntx+nrx != cfg.CSB.NumRings() {
		return nil, fmt.Errorf("netmap: driver: port %q has %d+%d rings, the CSB %d", nif.Name(), ntx, nrx, cfg.CSB.NumRings())
	}
	d := &Driver{cfg: cfg, nif: nif}
	for i := 0; i < ntx+nrx; i++ {
		var ring *Ring
		dir := TX
		if i < ntx {
			ring, err = nif.TxRing(i)
		} else {
			dir = RX
			ring, err = nif.RxRing(i - ntx)
		}
		if err != nil {
			return nil, fmt.Errorf("netmap: driver: %w", err)
		}
		if ring.Dir() != dir {
			return nil, fmt.Errorf("netmap: driver: %s ring %d says it is %s", dir, i, ring.Dir())
		}
		r := &DriverRing{d: d, idx: i, dir: dir, ring: ring, num: ring.NumSlots(), csb: cfg.CSB}
		if err := r.load(); err != nil {
			return nil, err
		}
		if dir == TX {
			d.tx = append(d.tx, r)
		} else {
			d.rx = append(d.rx, r)
		}
	}
	return d, nil
}

// load copies head/cur/hwcur/hwtail from the CSB into the app kring and the user
// ring, as netmap's guest does after PTCTL CREATE.
func (r *DriverRing) load() error {
	c, i := r.csb, r.idx
	head, cur := c.Head(i), c.Cur(i)
	hwcur, hwtail := c.ReadKtoa(i)
	if head >= r.num || cur >= r.num || hwcur >= r.num || hwtail >= r.num {
		return fmt.Errorf("netmap: driver: %s ring %d: CSB head %d cur %d hwcur %d hwtail %d outside %d slots",
			r.dir, i, head, cur, hwcur, hwtail, r.num)
	}
	r.rhead, r.rcur, r.hwcur, r.hwtail = head, cur, hwcur, hwtail
	r.ring.SetHeadCur(head, cur)
	r.setTail(hwtail)
	return nil
}

// Mem is the mapped region; If the netmap_if read at open.
func (d *Driver) Mem() []byte { return d.cfg.Mem }
func (d *Driver) If() *If     { return d.nif }

// NumTx and NumRx are the HW ring counts.
func (d *Driver) NumTx() int { return len(d.tx) }
func (d *Driver) NumRx() int { return len(d.rx) }

// TxRing and RxRing return ring i, or nil when out of range.
func (d *Driver) TxRing(i int) *DriverRing {
	if i < 0 || i >= len(d.tx) {
		return nil
	}
	return d.tx[i]
}

func (d *Driver) RxRing(i int) *DriverRing {
	if i < 0 || i >= len(d.rx) {
		return nil
	}
	return d.rx[i]
}

// Ring is the netmap user view: fill or consume slots in [head, tail), then advance
// head/cur (Ring.Advance, SetHeadCur) and Sync.
func (r *DriverRing) Ring() *Ring { return r.ring }

// Index is the CSB ring index (TX rings first): the ring's kick and interrupt number.
func (r *DriverRing) Index() int { return r.idx }

// Dir is the ring's direction.
func (r *DriverRing) Dir() Dir { return r.dir }

func (r *DriverRing) setTail(t uint32) { store32(r.ring.mem, r.ring.off+RingTailOff, t) }

// within says x is in the cyclic interval [a, b] (all < num).
func (r *DriverRing) within(a, x, b uint32) bool {
	return distSlots(a, x, r.num) <= distSlots(a, b, r.num)
}

// readKtoa loads hwtail then hwcur (SPECS 3.6 reader order) and keeps them if they
// are inside the ring; a host writing garbage is counted, never followed.
func (r *DriverRing) readKtoa() bool {
	hwcur, hwtail := r.csb.ReadKtoa(r.idx)
	if hwcur >= r.num || hwtail >= r.num {
		r.errs.Add(1)
		return false
	}
	r.hwcur, r.hwtail = hwcur, hwtail
	return true
}

// Sync is a non-blocking txsync (TX) or rxsync (RX) over the CSB, netmap's
// netmap_pt_guest_txsync/rxsync: disable interrupts (appl_need_kick = 0), publish
// the user's head/cur (cur, then head), kick only when the host asked
// (kern_need_kick) and there is something for it, or when flags has ForceReclaim
// (TX); then tail = hwtail in the user ring. TX reads hwtail back only when the ring
// is full or with ForceReclaim (completions are reclaimed lazily, as netmap does);
// RX reads it on every call. A head/cur outside [last head, tail] reinitialises the
// user ring (head = cur = last head, tail = hwtail) and returns ErrRingReinit.
func (r *DriverRing) Sync(flags SyncFlags) error {
	r.syncs.Add(1)
	c, i := r.csb, r.idx
	head, cur := r.ring.Head(), r.ring.Cur()
	tail := r.hwtail
	if head >= r.num || cur >= r.num || !r.within(r.rhead, head, tail) || !r.within(head, cur, tail) {
		r.reinits.Add(1)
		r.ring.SetHeadCur(r.rhead, r.rcur)
		r.setTail(tail)
		return fmt.Errorf("netmap: driver %s ring %d: head %d cur %d outside [%d, %d]: %w", r.dir, i, head, cur, r.rhead, tail, ErrRingReinit)
	}
	if c.ApplNeedKick(i) != 0 {
		c.SetApplNeedKick(i, 0)
	}
	kick, force := false, false
	var gen uint32
	if r.dir == TX {
		if hwcur := c.HwCur(i); hwcur < r.num {
			r.hwcur = hwcur
		}
		r.publish(head, cur)
		txempty := r.rhead == r.hwtail
		if r.rhead != r.hwcur || txempty {
			kick, gen = r.hostWantsKick()
		}
		force = flags&ForceReclaim != 0
		if txempty || force {
			r.readKtoa()
		}
	} else {
		r.readKtoa()
		r.publish(head, cur)
		if r.rhead != r.hwcur {
			kick, gen = r.hostWantsKick()
		}
	}
	r.setTail(r.hwtail)
	if kick || force {
		c.SetSyncFlags(i, flags)
		return r.kick(gen)
	}
	return nil
}

// hostWantsKick reads kern_need_kick and, when it is set, the kick generation
// (CSBKickGenOff), and says whether to kick. While the host wakes up from a kick,
// kern_need_kick is still set, and netmap's guest kicks again on every sync
// meanwhile: a host run that found nothing new leaves hwcur where it was, so
// nothing else tells "not run yet" from "ran and asked again". The generation
// does: the host writes a new one before every kern_need_kick = 1. If it is the
// one our last kick answered, the host has not asked again since; the run that
// kick causes starts by clearing kern_need_kick (after our load) and then reads
// atok, so it sees this sync's head: no kick needed. Generation 0 (a host that
// writes none): kick, as netmap's guest does. gen is what to remember if we kick.
func (r *DriverRing) hostWantsKick() (kick bool, gen uint32) {
	if r.csb.KernNeedKick(r.idx) == 0 {
		return false, 0
	}
	// Loaded after kern_need_kick: the host stores the generation before it.
	gen = r.csb.KickGen(r.idx)
	if gen != 0 && gen == r.kickGen {
		r.skipped = true
		return false, gen
	}
	return true, gen
}

// publish writes (cur, head) to atok when they changed: slot writes the user made
// before are ordered before the head store (Go atomics), as netmap's wmb.
func (r *DriverRing) publish(head, cur uint32) {
	if head != r.rhead || cur != r.rcur {
		r.csb.SetHeadCur(r.idx, head, cur)
		r.rhead, r.rcur = head, cur
	}
}

// kick rings the doorbell; gen is the kick generation it answers (0: unknown).
func (r *DriverRing) kick(gen uint32) error {
	r.kicks.Add(1)
	if err := r.d.cfg.Kick(r.idx); err != nil {
		r.errs.Add(1)
		return fmt.Errorf("netmap: driver %s ring %d: kick: %w", r.dir, r.idx, err)
	}
	r.kickGen, r.skipped = gen, false
	return nil
}

// blocked says the user could not progress: TX no free slot (rhead == hwtail), RX no
// unread slot (rhead == hwtail), as netmap's nm_kr_txempty/nm_kr_rxempty.
func (r *DriverRing) blocked() bool { return r.rhead == r.hwtail }

// Ready syncs and reports whether the user can progress without waiting: TX has a
// free slot, RX an unread one.
func (r *DriverRing) Ready() (bool, error) {
	err := r.Sync(0)
	return !r.blocked(), err
}

// Wait blocks until the ring has a free TX slot or an unread RX slot, or timeout
// passes (negative: no timeout; zero: check once), and reports which. It syncs, and
// when still blocked arms interrupts (appl_need_kick = 1), re-reads ktoa after that
// full barrier (the host stores hwtail then loads appl_need_kick; we store
// appl_need_kick then load hwtail: one of us sees the other), sends a kick a sync
// skipped on the kick-generation rule, and only then waits in Config.Wait (or polls
// ktoa when Wait is nil). A Sync follows every wake-up, which also disarms interrupts.
func (r *DriverRing) Wait(timeout time.Duration) (bool, error) {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	remaining := func() time.Duration {
		switch {
		case timeout < 0:
			return -1
		case timeout == 0:
			return 0
		}
		return max(time.Until(deadline), 0)
	}
	c, i := r.csb, r.idx
	for {
		if ok, err := r.Ready(); ok || err != nil {
			return ok, err
		}
		left := remaining()
		if spin := r.d.cfg.Spin; spin > 0 && left != 0 && r.d.cfg.Wait != nil {
			if left > 0 {
				spin = min(spin, left)
			}
			if r.pollKtoa(time.Now().Add(spin)) {
				continue
			}
			left = remaining()
		}
		c.SetApplNeedKick(i, 1)
		r.readKtoa()
		if !r.blocked() {
			c.SetApplNeedKick(i, 0)
			r.setTail(r.hwtail)
			return true, nil
		}
		if left == 0 {
			c.SetApplNeedKick(i, 0)
			return false, nil
		}
		if r.skipped {
			// Kicks skipped on the generation rule are owed before sleeping: a
			// generation that came round again (2^32 host arms between two of
			// our syncs) must cost a kick, never a hang.
			if c.KernNeedKick(i) != 0 {
				if err := r.kick(c.KickGen(i)); err != nil {
					c.SetApplNeedKick(i, 0)
					return false, err
				}
			}
			r.skipped = false
		}
		r.waits.Add(1)
		if r.d.cfg.Wait == nil {
			r.pollKtoa(deadline)
			continue
		}
		got, err := r.d.cfg.Wait(i, left)
		if err != nil {
			r.errs.Add(1)
			c.SetApplNeedKick(i, 0)
			return false, fmt.Errorf("netmap: driver %s ring %d: wait: %w", r.dir, i, err)
		}
		if got {
			r.irqs.Add(1)
		}
	}
}

// pollKtoa spins until hwtail moves (true) or the deadline (zero: none) passes:
// Config.Spin, or a guest with no interrupts (no Config.Wait). It yields the
// processor and reads the clock only every pollYield loads: a Gosched takes the
// scheduler's global lock, and the host publishes within a few loads when it runs.
func (r *DriverRing) pollKtoa(deadline time.Time) bool {
	start := r.hwtail
	for n := 1; ; n++ {
		if t := r.csb.HwTail(r.idx); t != start {
			return true
		}
		if n%pollYield == 0 && !deadline.IsZero() && time.Now().After(deadline) {
			return false
		}
	}
}

// pollYield is how many ktoa loads pollKtoa makes between yields (about a
// microsecond of polling).
const pollYield = 256

// Stats returns the ring's counters.
func (r *DriverRing) Stats() DriverRingStats {
	return DriverRingStats{Syncs: r.syncs.Load(), Kicks: r.kicks.Load(), Waits: r.waits.Load(),
		Interrupts: r.irqs.Load(), Reinits: r.reinits.Load(), Errors: r.errs.Load()}
}

// EventFDKick returns a DriverConfig.Kick that signals kicks[ring] (in-process use:
// the same eventfds are the host loop's KloopConfig.Kicks).
func EventFDKick(kicks []*notify.EventFD) func(int) error {
	return func(ring int) error {
		if ring < 0 || ring >= len(kicks) || kicks[ring] == nil {
			return fmt.Errorf("netmap: no kick eventfd for ring %d", ring)
		}
		return kicks[ring].Signal()
	}
}

// EventFDWait returns a DriverConfig.Wait that waits for irqs[ring] to become
// readable (ppoll) and consumes its count (in-process use: the host loop's
// KloopConfig.Irqs).
func EventFDWait(irqs []*notify.EventFD) func(int, time.Duration) (bool, error) {
	return func(ring int, timeout time.Duration) (bool, error) {
		if ring < 0 || ring >= len(irqs) || irqs[ring] == nil {
			return false, fmt.Errorf("netmap: no interrupt eventfd for ring %d", ring)
		}
		e := irqs[ring]
		var ts *unix.Timespec
		if timeout >= 0 {
			t := unix.NsecToTimespec(timeout.Nanoseconds())
			ts = &t
		}
		fds := []unix.PollFd{{Fd: int32(e.FD()), Events: unix.POLLIN}}
		for {
			n, err := unix.Ppoll(fds, ts, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return false, fmt.Errorf("netmap: interrupt wait: %w", err)
			}
			if n == 0 {
				return false, nil
			}
			v, err := e.Read()
			return v > 0, err
		}
	}
}

// Local is a port driven in-process through the passthrough protocol: a CSB in Go
// memory, eventfd doorbells and interrupts, the port's host loop, and a Driver over
// the port's region. Host processes (a packet generator on a switch or pipe port) and
// benchmarks use it; a guest does the same over ptnet.
//
// Concurrency: as Driver; Close once, after the driver's users are done.
type Local struct {
	Driver *Driver
	Loop   *Kloop
	CSB    *CSB
	Kicks  []*notify.EventFD
	Irqs   []*notify.EventFD
}

// LocalConfig tunes StartLocalConfig. Zero values: Block mode, no spinning.
type LocalConfig struct {
	Mode       notify.Mode   // the host loop's mode
	Spin       time.Duration // the host loop's adaptive window (Adaptive mode)
	DriverSpin time.Duration // DriverConfig.Spin
}

// StartLocal initialises a CSB for p (InitCSB), starts its host loop in mode and
// opens a Driver on it. The port stays owned by the caller (close it after Local).
func StartLocal(p *Port, mode notify.Mode) (*Local, error) {
	return StartLocalConfig(p, LocalConfig{Mode: mode})
}

// StartLocalConfig is StartLocal with the loop's and the driver's spinning set.
func StartLocalConfig(p *Port, cfg LocalConfig) (*Local, error) {
	n := p.NumTxRings() + p.NumRxRings()
	mem := make([]byte, 2*n*CSBEntrySize) // Go's allocator aligns this to 8 bytes at least
	csb, err := NewCSB(mem[:n*CSBEntrySize], mem[n*CSBEntrySize:], n)
	if err != nil {
		return nil, err
	}
	l := &Local{CSB: csb}
	for i := 0; i < n; i++ {
		k, err := notify.NewEventFD()
		if err != nil {
			l.Close()
			return nil, err
		}
		l.Kicks = append(l.Kicks, k)
		q, err := notify.NewEventFD()
		if err != nil {
			l.Close()
			return nil, err
		}
		l.Irqs = append(l.Irqs, q)
	}
	for i := 0; i < n; i++ {
		// As ptnet's register: interrupts wanted on RX rings only at first.
		if i >= p.NumTxRings() {
			csb.SetApplNeedKick(i, 1)
		}
	}
	if err := InitCSB(p, csb); err != nil {
		l.Close()
		return nil, err
	}
	if l.Loop, err = StartKloop(KloopConfig{Name: p.Name(), Port: p, CSB: csb, Kicks: l.Kicks, Irqs: l.Irqs,
		Mode: cfg.Mode, Spin: cfg.Spin}); err != nil {
		l.Close()
		return nil, err
	}
	l.Driver, err = NewDriver(DriverConfig{Mem: p.Region().Bytes(), Nifp: p.NifpOffset(), CSB: csb,
		Kick: EventFDKick(l.Kicks), Wait: EventFDWait(l.Irqs), Spin: cfg.DriverSpin})
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Close stops the host loop and closes the eventfds. The port stays open.
func (l *Local) Close() error {
	var err error
	if l.Loop != nil {
		err = l.Loop.Stop()
	}
	for _, e := range append(append([]*notify.EventFD(nil), l.Kicks...), l.Irqs...) {
		e.Close()
	}
	l.Kicks, l.Irqs = nil, nil
	return err
}
