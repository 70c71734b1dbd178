package netmap

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/notify"
)

// KloopConfig describes a host loop (netmap's sync kloop, SPECS 3.7) for a port's HW
// rings driven through a CSB.
type KloopConfig struct {
	Name string
	Port *Port // HW TX rings then HW RX rings are CSB rings 0..n-1
	CSB  *CSB  // NumRings() == Port.NumTxRings()+Port.NumRxRings()
	// Kicks are the app's doorbells, one per ring (an ioeventfd's eventfd). A nil
	// entry is allowed only in Poll mode (that ring is polled, never kicked).
	Kicks []*notify.EventFD
	// Irqs are written to interrupt the app, one per ring (an irqfd's eventfd); a nil
	// entry (or a nil slice) = never interrupt that ring.
	Irqs []*notify.EventFD
	Mode notify.Mode   // Block (default), Adaptive, Poll
	Spin time.Duration // adaptive polling window (notify.DefaultSpin if zero)
	// Logf receives ring reinitialisations and sync errors, at most one line per ring
	// per second (nil: silent).
	Logf func(format string, args ...any)
}

// KloopStats are one ring's host-loop counters (monotonic).
type KloopStats struct {
	Syncs      uint64 // SyncCSB calls
	Wakeups    uint64 // ring runs caused by a kick or a backend notification
	Kicks      uint64 // doorbell counts read
	Notifies   uint64 // backend notifications (RX frames arrived, TX room appeared)
	Interrupts uint64 // interrupts sent
	Reinits    uint64 // bad CSB head/cur: ring reinitialised
	Errors     uint64 // other sync errors, failed interrupt writes
}

// KloopTotals are the loop's port-wide figures.
type KloopTotals struct {
	Worker notify.Stats // the worker's own counters (wakeups, blocks, kicks)
	// CPU is the worker thread's CPU time while the loop ran (read from the thread's
	// CPU clock; frozen at Stop).
	CPU time.Duration
}

// Kloop is a running host loop: one notify.Worker (one locked OS thread) for all the
// rings of the port. See the package documentation for why one per port.
//
// Concurrency: Stop, Stats and Totals may be called from any goroutine, Stop more
// than once.
type Kloop struct {
	cfg   KloopConfig
	csb   *CSB
	rings []*kloopRing
	w     *notify.Worker
	wake  *notify.EventFD // written by backend notifications while the worker sleeps
	src   []int           // worker source index -> ring (-1: wake)
	arm   bool            // Block mode: ring runs arm kern_need_kick themselves
	kicks bool            // not Poll: the app kicks when asked

	// sleeping is 1 while the worker is (about to be) blocked in epoll: a backend
	// notification then writes wake. Pairs with kloopRing.pending (Dekker: each side
	// stores its flag, then loads the other's; Go atomics are sequentially
	// consistent, so at least one side sees the other).
	sleeping atomic.Uint32
	stopping atomic.Bool
	stopOnce sync.Once
	stopErr  error

	tid      atomic.Int64 // worker thread id, 0 until it runs
	cpuStart atomic.Int64 // the thread's CPU clock when the worker started (ns)
	cpuLast  atomic.Int64 // last CPU reading (ns)
}

// kloopRing is the host loop's state for one CSB ring. Only the worker touches the
// plain fields.
type kloopRing struct {
	i   int
	k   *Kring
	tx  bool
	num uint32
	irq *notify.EventFD

	// Shadow state (netmap's kring rhead/rtail as the loop last saw them).
	rhead   uint32 // head of the last accepted sync
	hwtail  uint32 // hwtail of the last sync
	pubCur  uint32 // last hwcur written to ktoa (^0: none yet)
	pubTail uint32 // last hwtail written to ktoa
	more    bool   // the last run stopped at its round limit with work left
	dead    bool   // the port closed: never run again
	lastLog time.Time
	quiet   uint64 // log lines suppressed since lastLog

	syncs, wakeups, kicks, irqs, reinits, errs atomic.Uint64

	// Written by notifiers (other goroutines), on a cache line of their own so
	// that the worker's counter updates do not bounce it.
	_        [64]byte
	pending  atomic.Uint32 // a kick or a backend notification is waiting
	notifies atomic.Uint64
	_        [48]byte
}

// kloopMaxRounds bounds the sync rounds of one ring run, so that under continuous
// traffic the other rings of the port, and Stop, still get their turn.
const kloopMaxRounds = 16

// rxDryCycles is how many rounds without new frames end an RX run (netmap: 2).
const rxDryCycles = 2

// StartKloop starts the host loop. It does not InitCSB (the device does on CREATE):
// the loop starts from the krings' state and the CSB as it is.
func StartKloop(cfg KloopConfig) (*Kloop, error) {
	ks, err := csbKrings(cfg.Port, cfg.CSB)
	if err != nil {
		return nil, fmt.Errorf("netmap: kloop %s: %w", cfg.Name, err)
	}
	n := len(ks)
	if len(cfg.Kicks) != n {
		return nil, fmt.Errorf("netmap: kloop %s: %d kick eventfds for %d rings", cfg.Name, len(cfg.Kicks), n)
	}
	if cfg.Irqs != nil && len(cfg.Irqs) != n {
		return nil, fmt.Errorf("netmap: kloop %s: %d interrupt eventfds for %d rings", cfg.Name, len(cfg.Irqs), n)
	}
	if cfg.Mode != notify.Poll {
		for i, e := range cfg.Kicks {
			if e == nil {
				return nil, fmt.Errorf("netmap: kloop %s: ring %d has no kick eventfd (only Poll mode can do without)", cfg.Name, i)
			}
		}
	}
	l := newKloop(cfg, ks)
	if cfg.Mode == notify.Poll {
		// A polling loop never asks for kicks (CREATE set kern_need_kick = 1).
		for _, r := range l.rings {
			l.clearKick(r)
		}
	}
	if l.wake, err = notify.NewEventFD(); err != nil {
		return nil, fmt.Errorf("netmap: kloop %s: %w", cfg.Name, err)
	}
	wc := notify.Config{Name: "kloop " + cfg.Name, Mode: cfg.Mode, Spin: cfg.Spin,
		Handler: l.handle, Init: l.init, Poll: l.poll}
	if cfg.Mode == notify.Adaptive {
		wc.Arm, wc.Disarm = l.armAll, l.disarmAll
	}
	if l.w, err = notify.NewWorker(wc); err != nil {
		l.wake.Close()
		return nil, fmt.Errorf("netmap: kloop %s: %w", cfg.Name, err)
	}
	fail := func(err error) (*Kloop, error) {
		_ = l.w.Stop()
		l.wake.Close()
		return nil, fmt.Errorf("netmap: kloop %s: %w", cfg.Name, err)
	}
	for i, e := range cfg.Kicks {
		if e == nil {
			continue
		}
		idx, err := l.w.Add(e)
		if err != nil {
			return fail(err)
		}
		l.setSrc(idx, i)
	}
	idx, err := l.w.Add(l.wake)
	if err != nil {
		return fail(err)
	}
	l.setSrc(idx, -1)
	// Backend notifications: frames for an RX ring, room for a TX ring (a pipe
	// peer released slots).
	for _, r := range l.rings {
		r.k.SetNotify(func() { l.notifyRing(r) })
	}
	l.w.Start()
	return l, nil
}

// newKloop makes the loop's state without a worker (tests run rings directly).
func newKloop(cfg KloopConfig, ks []*Kring) *Kloop {
	l := &Kloop{cfg: cfg, csb: cfg.CSB, arm: cfg.Mode == notify.Block, kicks: cfg.Mode != notify.Poll}
	for i, k := range ks {
		st := k.State()
		r := &kloopRing{i: i, k: k, tx: k.Dir() == TX, num: k.NumSlots(),
			rhead: st.RHead, hwtail: st.HwTail, pubCur: ^uint32(0), pubTail: ^uint32(0)}
		if cfg.Irqs != nil {
			r.irq = cfg.Irqs[i]
		}
		l.rings = append(l.rings, r)
	}
	return l
}

func (l *Kloop) setSrc(idx, ring int) {
	for len(l.src) <= idx {
		l.src = append(l.src, -1)
	}
	l.src[idx] = ring
}

// notifyRing runs in the backend's goroutine (a sender's sync, a pipe peer's
// rxsync): mark the ring and wake the worker only if it sleeps.
func (l *Kloop) notifyRing(r *kloopRing) {
	r.notifies.Add(1)
	r.pending.Store(1)
	// Load first: a failed CAS still takes the line from the worker.
	if l.sleeping.Load() != 0 && l.sleeping.CompareAndSwap(1, 0) {
		_ = l.wake.Signal() // EAGAIN (counter full) still leaves it readable
	}
}

// handle is the worker's Handler: a doorbell fired (or the wake eventfd, whose news
// is already in the rings' pending flags).
func (l *Kloop) handle(src int, kicks uint64) {
	if src < 0 || src >= len(l.src) {
		return
	}
	if i := l.src[src]; i >= 0 {
		r := l.rings[i]
		r.kicks.Add(kicks)
		r.pending.Store(1)
	}
}

func (l *Kloop) init() {
	tid := int64(unix.Gettid())
	l.cpuStart.Store(threadCPU(tid)) // the runtime thread may have run other goroutines before
	l.cpuLast.Store(l.cpuStart.Load())
	l.tid.Store(tid)
	// Work published before the worker ran (a kick before the eventfd was
	// watched is still counted by it, but the CSB may already hold new heads).
	for _, r := range l.rings {
		r.pending.Store(1)
	}
	// The worker waits before its first Poll call: run now, which also announces
	// sleep, so that notifications from now on wake it.
	l.poll()
}

// poll is the worker's Poll hook. Block mode: run the rings that have news until
// none has, then announce sleep (sleeping = 1) and re-check the pending flags, so
// that a notification between the last run and epoll_wait is not lost. Poll and
// Adaptive: rounds over every ring for up to pollBudget, or until pollIdleRounds
// rounds in a row found nothing; the worker then checks its eventfds (a system
// call) and calls again.
func (l *Kloop) poll() bool {
	if l.sleeping.Load() != 0 {
		l.sleeping.Store(0)
	}
	if l.cfg.Mode != notify.Block {
		return l.pollRounds()
	}
	found := false
	for !l.stopping.Load() {
		did := l.round(true)
		found = found || did
		if !did {
			l.sleeping.Store(1)
			if !l.anyPending() {
				break
			}
			l.sleeping.Store(0)
		}
	}
	return found
}

// pollIdleRounds and pollBudget bound one Poll call in Poll and Adaptive modes. A
// round that finds nothing costs two loads per ring; returning to the worker costs
// an epoll_wait system call, which would otherwise be paid every round.
const (
	pollIdleRounds = 256
	pollBudget     = 20 * time.Microsecond
)

func (l *Kloop) pollRounds() bool {
	found := false
	start := time.Now()
	idle := 0
	for n := 1; !l.stopping.Load(); n++ {
		if l.round(false) {
			found, idle = true, 0
		} else if idle++; idle >= pollIdleRounds {
			break
		}
		if n%16 == 0 && time.Since(start) >= pollBudget {
			break
		}
	}
	return found
}

// round runs every ring that has news once and reports whether any did something.
// block: only notified rings run (Block mode); else also rings whose atok head moved.
func (l *Kloop) round(block bool) bool {
	did := false
	for _, r := range l.rings {
		// Load before swapping: the flag's line is shared with the notifiers, and
		// a swap writes it even when it was clear.
		woken := r.pending.Load() != 0 && r.pending.Swap(0) != 0
		if r.dead {
			continue
		}
		if !woken && !r.more {
			// Polling: a ring runs only when its app published a new head (one
			// load); the backend's news come as notifications. Running every
			// ring every round would take the kring locks the backend's other
			// users need.
			if block || l.csb.Head(r.i) == r.rhead {
				continue
			}
		}
		if woken {
			r.wakeups.Add(1)
		}
		work, more := l.runRing(r, l.arm)
		r.more = more
		did = did || work || more || woken
	}
	return did
}

func (l *Kloop) anyPending() bool {
	for _, r := range l.rings {
		if r.pending.Load() != 0 && !r.dead {
			return true
		}
	}
	return false
}

// armAll (Adaptive mode, before blocking) asks for kicks where a ring needs them and
// reports whether work slipped in: the same double check as a Block-mode ring run.
func (l *Kloop) armAll() bool {
	c := l.csb
	for _, r := range l.rings {
		if r.dead {
			continue
		}
		if r.tx || r.hwtail == prevSlot(c.Head(r.i), r.num) {
			l.armKick(r)
		}
	}
	l.sleeping.Store(1)
	// Full barrier: the stores above are sequentially consistent, so the loads
	// below cannot be satisfied before them (netmap's nm_stld_barrier).
	work := l.anyPending()
	for _, r := range l.rings {
		if !r.dead && c.Head(r.i) != r.rhead {
			work = true
		}
	}
	if work {
		l.sleeping.Store(0)
		l.disarmAll()
	}
	return work
}

// disarmAll (Adaptive mode, polling again): kicks are not needed.
func (l *Kloop) disarmAll() {
	l.sleeping.Store(0)
	for _, r := range l.rings {
		if !r.dead && l.csb.KernNeedKick(r.i) != 0 {
			l.csb.SetKernNeedKick(r.i, 0)
		}
	}
}

func prevSlot(i, num uint32) uint32 {
	if i == 0 || i >= num {
		return num - 1
	}
	return i - 1
}

// runRing runs one ring: TX or RX per SPECS 3.7. arm: when out of work, set
// kern_need_kick and double-check (Block mode). It reports whether it moved anything
// and whether it stopped at the round limit with more to do.
func (l *Kloop) runRing(r *kloopRing, arm bool) (work, more bool) {
	if r.tx {
		return l.runTx(r, arm)
	}
	return l.runRx(r, arm)
}

// clearKick writes kern_need_kick = 0 only when it is set: the ktoa line is shared
// with the app, and a store there costs a cache-line transfer the app then pays for.
func (l *Kloop) clearKick(r *kloopRing) {
	if l.csb.KernNeedKick(r.i) != 0 {
		l.csb.SetKernNeedKick(r.i, 0)
	}
}

// kickGens hands out kick generations (CSBKickGenOff) process-wide, never 0, so
// that no ring's arm reuses one until 2^32 arms have passed.
var kickGens atomic.Uint32

// armKick asks the app for kicks: a new kick generation, then kern_need_kick = 1
// (a full barrier; the caller re-reads atok after it, the double check). The
// generation comes first, so an app that sees the new kern_need_kick also sees
// the new generation, and a kick it sent for an earlier arm does not count.
func (l *Kloop) armKick(r *kloopRing) {
	g := kickGens.Add(1)
	if g == 0 {
		g = kickGens.Add(1)
	}
	l.csb.SetKickGen(r.i, g)
	l.csb.SetKernNeedKick(r.i, 1)
}

// publish writes hwcur then hwtail to ktoa (SPECS 3.6 writer order; the slot writes
// of the sync happened before, under the kring lock, and Go's atomic stores keep them
// first), skipping an unchanged pair.
func (l *Kloop) publish(r *kloopRing, hwcur, hwtail uint32) {
	if hwcur != r.pubCur || hwtail != r.pubTail {
		l.csb.SetHwCurTail(r.i, hwcur, hwtail)
		r.pubCur, r.pubTail = hwcur, hwtail
	}
}

// interrupt signals the app if it asked (appl_need_kick), loaded after the ktoa
// stores of publish: an app that armed before our load gets the interrupt, one that
// arms after re-reads ktoa and sees the new hwtail (its double check).
func (l *Kloop) interrupt(r *kloopRing) bool {
	if r.irq == nil || l.csb.ApplNeedKick(r.i) == 0 {
		return false
	}
	if err := r.irq.Signal(); err != nil {
		r.errs.Add(1)
		l.logf(r, "interrupt: %v", err)
		return false
	}
	r.irqs.Add(1)
	return true
}

// sync runs SyncCSB and handles its errors: a reinit (bad head/cur) republishes the
// kring state and asks for kicks, so the app can recover; a closed port retires the
// ring. ok is false when the run must end.
func (l *Kloop) sync(r *kloopRing, head, cur uint32, flags SyncFlags) (hwcur, hwtail uint32, ok bool) {
	r.syncs.Add(1)
	hwcur, hwtail, err := r.k.SyncCSB(head, cur, flags)
	if err == nil {
		r.rhead = head
		return hwcur, hwtail, true
	}
	switch {
	case errors.Is(err, ErrClosed):
		r.dead = true
		return hwcur, hwtail, false
	case errors.Is(err, ErrRingReinit):
		r.reinits.Add(1)
		r.rhead = hwcur // reinit: rhead = rcur = hwcur
	default:
		r.errs.Add(1)
	}
	l.logf(r, "%v", err)
	l.publish(r, hwcur, hwtail)
	r.hwtail = hwtail
	if l.kicks {
		l.armKick(r)
	}
	return hwcur, hwtail, false
}

func (l *Kloop) runTx(r *kloopRing, arm bool) (work, more bool) {
	c := l.csb
	l.clearKick(r) // running: no kicks needed
	// Reader order (SPECS 3.6): head, then cur and sync_flags; every later slot read
	// (in the backend's sync) is ordered after these atomic loads.
	head, cur, flags := c.ReadAtok(r.i)
	moreSpace := false
	for round := 0; ; round++ {
		if round == kloopMaxRounds {
			more = true
			break
		}
		if distSlots(r.rhead, r.hwtail, r.num) <= r.num/2 {
			flags |= ForceReclaim // nm_kr_txspace <= N/2
		}
		prevHead := r.rhead
		hwcur, hwtail, ok := l.sync(r, head, cur, flags)
		if !ok {
			break
		}
		if head != prevHead {
			work = true
		}
		l.publish(r, hwcur, hwtail)
		if hwtail != r.hwtail {
			r.hwtail = hwtail
			moreSpace = true
			work = true
		}
		if moreSpace && l.interrupt(r) {
			moreSpace = false
		}
		head, cur, flags = c.ReadAtok(r.i)
		if head == r.rhead {
			if !arm {
				break
			}
			// Nothing new: ask for a kick, then look again. The store is
			// sequentially consistent (a full barrier, netmap's nm_stld_barrier):
			// the app stores head before loading kern_need_kick, we store
			// kern_need_kick before loading head, so either it sees the flag and
			// kicks or we see its head.
			l.armKick(r)
			head, cur, flags = c.ReadAtok(r.i)
			if head != r.rhead {
				c.SetKernNeedKick(r.i, 0)
				continue
			}
			break
		}
		if r.rhead == r.hwtail {
			// The app gave every slot and the backend holds them (a full pipe
			// peer): stop without kicks; the backend's notification restarts us.
			break
		}
	}
	if moreSpace {
		l.interrupt(r)
	}
	return work, more
}

func (l *Kloop) runRx(r *kloopRing, arm bool) (work, more bool) {
	c := l.csb
	l.clearKick(r)
	head, cur, flags := c.ReadAtok(r.i)
	dry := 0
	recvd := false
	for round := 0; ; round++ {
		if round == kloopMaxRounds {
			more = true
			break
		}
		prevHead := r.rhead
		hwcur, hwtail, ok := l.sync(r, head, cur, flags)
		if !ok {
			break
		}
		if head != prevHead {
			work = true // slots released to the backend
		}
		l.publish(r, hwcur, hwtail)
		if hwtail != r.hwtail {
			r.hwtail = hwtail
			recvd, work = true, true
			dry = 0
		} else {
			dry++
		}
		if recvd && l.interrupt(r) {
			recvd = false
		}
		head, cur, flags = c.ReadAtok(r.i)
		if hwtail == prevSlot(head, r.num) {
			// Every slot is the app's: nothing can arrive until it releases
			// some. Ask for a kick, then look again (same barrier argument as TX).
			if !arm {
				break
			}
			l.armKick(r)
			head, cur, flags = c.ReadAtok(r.i)
			if hwtail != prevSlot(head, r.num) {
				c.SetKernNeedKick(r.i, 0)
				continue
			}
			break
		}
		if hwtail == r.rhead || dry >= rxDryCycles {
			// Nothing more from the backend: its notification restarts us.
			break
		}
	}
	if recvd {
		l.interrupt(r)
	}
	return work, more
}

// distSlots is the cyclic distance from a to b in a ring of num slots (a, b < num
// for a meaningful result; anything else still returns a value below num).
func distSlots(a, b, num uint32) uint32 {
	return uint32((uint64(b) + uint64(num) - uint64(a)%uint64(num)) % uint64(num))
}

func (l *Kloop) logf(r *kloopRing, format string, args ...any) {
	if l.cfg.Logf == nil {
		return
	}
	now := time.Now()
	if now.Sub(r.lastLog) < time.Second {
		r.quiet++
		return
	}
	msg := fmt.Sprintf(format, args...)
	if r.quiet > 0 {
		msg += fmt.Sprintf(" (%d more suppressed)", r.quiet)
	}
	r.lastLog, r.quiet = now, 0
	l.cfg.Logf("netmap: kloop %s ring %d: %s", l.cfg.Name, r.i, msg)
}

// sampleCPU records the worker thread's CPU time (a system call: only from Totals
// and Stop, never on the data path).
func (l *Kloop) sampleCPU() {
	if t := threadCPU(l.tid.Load()); t > 0 {
		l.cpuLast.Store(t)
	}
}

// threadCPU reads a thread's CPU clock (Linux MAKE_THREAD_CPUCLOCK(tid, SCHED)).
func threadCPU(tid int64) int64 {
	if tid <= 0 {
		return 0
	}
	clk := int32(^uint32(tid)<<3 | 6)
	var ts unix.Timespec
	if err := unix.ClockGettime(clk, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// Stop stops the loop and returns when its goroutine is gone and no backend
// notification still runs into it; the rings keep their state (a later StartKloop
// resumes from it). Idempotent. The eventfds of the config stay open.
func (l *Kloop) Stop() error {
	l.stopOnce.Do(func() {
		l.stopping.Store(true)
		l.stopErr = l.w.Stop()
		l.sampleCPU() // the thread went back to the runtime's pool just now
		for _, r := range l.rings {
			r.k.SetNotify(nil) // waits for notifications still running
		}
		l.finalSync()
		l.wake.Close()
	})
	return l.stopErr
}

// finalSync runs every ring's sync once more, with the app's last head/cur, after
// the worker is gone: an app that advanced head without a kick (an RX ring whose
// host asked for none, or one that stopped before kicking) must not see those
// slots again after the next CREATE, which starts from the kring's state. No
// interrupt is raised: the app is going away.
func (l *Kloop) finalSync() {
	for _, r := range l.rings {
		if r.dead {
			continue
		}
		head, cur, flags := l.csb.ReadAtok(r.i)
		if hwcur, hwtail, ok := l.sync(r, head, cur, flags); ok {
			l.publish(r, hwcur, hwtail)
			r.hwtail = hwtail
		}
	}
}

// Stats returns per-ring counters, in CSB ring order.
func (l *Kloop) Stats() []KloopStats {
	out := make([]KloopStats, len(l.rings))
	for i, r := range l.rings {
		out[i] = KloopStats{Syncs: r.syncs.Load(), Wakeups: r.wakeups.Load(), Kicks: r.kicks.Load(),
			Notifies: r.notifies.Load(), Interrupts: r.irqs.Load(), Reinits: r.reinits.Load(), Errors: r.errs.Load()}
	}
	return out
}

// Totals returns the worker's counters and CPU time.
func (l *Kloop) Totals() KloopTotals {
	if !l.stopping.Load() {
		l.sampleCPU()
	}
	return KloopTotals{Worker: l.w.Stats(), CPU: time.Duration(l.cpuLast.Load() - l.cpuStart.Load())}
}
