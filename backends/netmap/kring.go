package netmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Dir is a ring's direction as stored in netmap_ring.dir.
type Dir uint16

// Ring directions.
const (
	TX Dir = 0
	RX Dir = 1
)

func (d Dir) String() string {
	if d == TX {
		return "tx"
	}
	return "rx"
}

// SyncFlags are netmap's NAF_* sync flags (also the CSB sync_flags values).
type SyncFlags uint32

// Sync flags.
const (
	ForceRead      SyncFlags = 1
	ForceReclaim   SyncFlags = 2
	CanForwardDown SyncFlags = 4
)

// ErrRingReinit is returned (wrapped) by a sync whose head/cur from the ring's user
// failed the prologue checks: the ring was reinitialised (head=cur=hwcur,
// tail=hwtail) and nothing was transmitted or received. Counted in Stats().Reinits.
var ErrRingReinit = errors.New("ring reinitialised: head/cur from its user were out of range")

// ErrClosed is returned by a sync on a ring whose port was closed.
var ErrClosed = errors.New("netmap: port closed")

// SyncFunc moves frames for a kring: a TX one takes [HwCur, RHead) (TxScan/TxDone), an
// RX one may import frames (RX release, hwcur = rhead, is already done when it runs).
// It runs with the kring's lock held and must not sync this kring. Lock order: a TX
// kring's lock may be held while taking RX kring locks (RxReserve/RxComplete), never
// the reverse.
type SyncFunc func(k *Kring, flags SyncFlags) error

// KringStats are the kring's counters.
type KringStats struct {
	Reinits  uint64 // prologue failures (ring reinitialised)
	BadSlots uint64 // frames dropped or slots zeroed because of a bad buf_idx or len
	Dropped  uint64 // frames dropped for other reasons (too many fragments, no peer)
}

// KringState is a snapshot of the kernel-side ring state.
type KringState struct {
	HwCur, HwTail, HwLease uint32
	RHead, RCur, RTail     uint32
}

// Kring is the kernel side of one netmap ring: the shadow state netmap keeps in a
// netmap_kring, the prologue checks, and the primitives a backend (pipe, switch, ptnet
// host loop) uses to consume TX slots and fill RX slots. The ring itself lives in
// region memory shared with the ring's user, which is not trusted.
//
// Concurrency: Sync/SyncCSB serialise on the kring's lock; RxReserve/RxComplete may be
// called from any goroutine; TxScan/TxDone/HwCur/RHead... only from inside a SyncFunc.
type Kring struct {
	mu   sync.Mutex
	port *Port
	reg  *Region
	mem  []byte
	name string
	off  uint64 // ring offset in the region
	num  uint32
	dir  Dir
	id   uint16
	host bool

	// Kernel-side state, guarded by mu.
	hwcur, hwtail, hwlease uint32
	rhead, rcur, rtail     uint32
	leases                 leaseQueue
	released               uint32 // RX slots released by the running sync
	closed                 bool   // port closed: no syncs, no new leases
	leaseDone              sync.Cond

	sync      SyncFunc
	notify    atomic.Pointer[func()]
	notifying atomic.Int32 // Notify calls running

	reinits, badSlots, dropped atomic.Uint64
}

func newKring(p *Port, reg *Region, off uint64, num uint32, dir Dir, id uint16, host bool) *Kring {
	k := &Kring{port: p, reg: reg, mem: reg.mem, off: off, num: num, dir: dir, id: id, host: host}
	k.name = fmt.Sprintf("%s %s%d", p.name, dir, id)
	if host {
		k.name += "(host)"
	}
	k.leases.init(num)
	k.leaseDone.L = &k.mu
	if dir == TX {
		k.hwtail = num - 1
		k.rtail = num - 1
	}
	k.hwlease = k.hwtail
	return k
}

// Name says port, direction and ring id, for messages.
func (k *Kring) Name() string { return k.name }

// Port is the port the ring belongs to.
func (k *Kring) Port() *Port { return k.port }

// Region is the region the ring lives in.
func (k *Kring) Region() *Region { return k.reg }

// Dir is the ring's direction.
func (k *Kring) Dir() Dir { return k.dir }

// ID is netmap_ring.ringid (host rings come after the HW rings).
func (k *Kring) ID() uint16 { return k.id }

// IsHost says whether this is a host ring.
func (k *Kring) IsHost() bool { return k.host }

// NumSlots is the ring size.
func (k *Kring) NumSlots() uint32 { return k.num }

// Offset is the ring's byte offset in the region.
func (k *Kring) Offset() uint64 { return k.off }

// Next is nm_ring_next for this ring.
func (k *Kring) Next(i uint32) uint32 {
	if i+1 >= k.num {
		return 0
	}
	return i + 1
}

func (k *Kring) prev(i uint32) uint32 {
	if i == 0 {
		return k.num - 1
	}
	return i - 1
}

func (k *Kring) add(i, n uint32) uint32 { return uint32((uint64(i) + uint64(n)) % uint64(k.num)) }

// dist is the cyclic distance from a to b.
func (k *Kring) dist(a, b uint32) uint32 { return (b + k.num - a) % k.num }

// within says x is in the cyclic interval [a, b].
func (k *Kring) within(a, x, b uint32) bool { return k.dist(a, x) <= k.dist(a, b) }

// SetSync installs the backend's sync function (nil: TX discards, RX only releases).
// Call before the ring is used or with no sync running.
func (k *Kring) SetSync(fn SyncFunc) {
	k.mu.Lock()
	k.sync = fn
	k.mu.Unlock()
}

// SetNotify installs the function called when the ring's user should look again: RX
// hwtail advanced, or (pipes) the peer released RX slots a blocked TX ring may now
// fill. It must not block and must not sync any ring. SetNotify returns only after
// calls of the previous function have returned, so after SetNotify(nil) its resources
// (an eventfd) may be released. Never call it from inside the notify function.
func (k *Kring) SetNotify(fn func()) {
	if fn == nil {
		k.notify.Store(nil)
	} else {
		k.notify.Store(&fn)
	}
	// Pairs with Notify: it counts itself in before loading the function, so a
	// call that still sees the old one is counted here (sequentially consistent).
	for k.notifying.Load() != 0 {
		runtime.Gosched()
	}
}

// Notify calls the notify function, if any.
func (k *Kring) Notify() {
	k.notifying.Add(1)
	if f := k.notify.Load(); f != nil {
		(*f)()
	}
	k.notifying.Add(-1)
}

// Stats returns the counters.
func (k *Kring) Stats() KringStats {
	return KringStats{Reinits: k.reinits.Load(), BadSlots: k.badSlots.Load(), Dropped: k.dropped.Load()}
}

// CountDropped adds n to the Dropped counter (for backends dropping frames).
func (k *Kring) CountDropped(n uint64) { k.dropped.Add(n) }

// State returns a snapshot of the kernel-side state.
func (k *Kring) State() KringState {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stateLocked()
}

func (k *Kring) stateLocked() KringState {
	return KringState{HwCur: k.hwcur, HwTail: k.hwtail, HwLease: k.hwlease, RHead: k.rhead, RCur: k.rcur, RTail: k.rtail}
}

// HwCur, HwTail, RHead and RCur read the kernel state from inside a SyncFunc.
func (k *Kring) HwCur() uint32  { return k.hwcur }
func (k *Kring) HwTail() uint32 { return k.hwtail }
func (k *Kring) RHead() uint32  { return k.rhead }
func (k *Kring) RCur() uint32   { return k.rcur }

// Released is how many RX slots the running sync released (from inside a SyncFunc).
func (k *Kring) Released() uint32 { return k.released }

func (k *Kring) slotOff(i uint32) uint64 { return k.off + RingSlotsOff + uint64(i)*SlotSize }

// SlotAt reads slot i (i < NumSlots) once. The caller must own the slot.
func (k *Kring) SlotAt(i uint32) Slot {
	if i >= k.num {
		return Slot{}
	}
	return getSlot(k.mem, k.slotOff(i))
}

// SetSlotAt writes slot i (i < NumSlots). The caller must own the slot.
func (k *Kring) SetSlotAt(i uint32, s Slot) {
	if i >= k.num {
		return
	}
	putSlot(k.mem, k.slotOff(i), s)
}

// Sync runs a txsync or rxsync for a ring whose user writes head/cur in the
// netmap_ring header (the NIOCTXSYNC/NIOCRXSYNC path): prologue, the backend's sync,
// then tail = hwtail. A bad head/cur reinitialises the ring and returns ErrRingReinit.
func (k *Kring) Sync(flags SyncFlags) error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return ErrClosed
	}
	head := load32(k.mem, k.off+RingHeadOff)
	cur := load32(k.mem, k.off+RingCurOff)
	err := k.syncLocked(head, cur, flags, true)
	k.mu.Unlock()
	return err
}

// SyncCSB runs a sync with head/cur taken from elsewhere (a ptnet CSB): the ring
// header is neither read nor written. It returns the new hwcur and hwtail to publish.
func (k *Kring) SyncCSB(head, cur uint32, flags SyncFlags) (hwcur, hwtail uint32, err error) {
	k.mu.Lock()
	err = k.syncLocked(head, cur, flags, false)
	hwcur, hwtail = k.hwcur, k.hwtail
	k.mu.Unlock()
	return hwcur, hwtail, err
}

func (k *Kring) syncLocked(head, cur uint32, flags SyncFlags, ring bool) error {
	if k.closed {
		return ErrClosed
	}
	if !k.prologue(head, cur) {
		k.reinit(ring)
		return fmt.Errorf("netmap: %s: head %d cur %d (hwcur %d hwtail %d): %w", k.name, head, cur, k.hwcur, k.hwtail, ErrRingReinit)
	}
	k.rhead, k.rcur = head, cur
	var err error
	if k.dir == RX {
		k.released = k.dist(k.hwcur, k.rhead)
		k.hwcur = k.rhead // the user released [hwcur, head)
	}
	if k.sync != nil {
		err = k.sync(k, flags)
	} else if k.dir == TX {
		k.TxDone(k.rhead)
	}
	k.rtail = k.hwtail
	if ring {
		store32(k.mem, k.off+RingTailOff, k.hwtail)
		if k.dir == RX && load32(k.mem, k.off+RingFlagsOff)&NRTimestamp != 0 {
			now := time.Now()
			binary.LittleEndian.PutUint64(k.mem[k.off+RingTSOff:], uint64(now.Unix()))
			binary.LittleEndian.PutUint64(k.mem[k.off+RingTSOff+8:], uint64(now.Nanosecond()/1000))
		}
	}
	return err
}

// prologue checks head/cur from the user against the kernel state (cyclic intervals):
// TX rhead <= head <= cur <= rtail; RX hwcur <= head <= cur <= hwtail.
func (k *Kring) prologue(head, cur uint32) bool {
	if head >= k.num || cur >= k.num {
		return false
	}
	if k.dir == TX {
		return k.within(k.rhead, head, k.rtail) && k.within(head, cur, k.rtail)
	}
	return k.within(k.hwcur, head, k.hwtail) && k.within(head, cur, k.hwtail)
}

// reinit forgets the user's head/cur: head = cur = hwcur, tail = hwtail, and (ring
// mode) repairs user-owned slots with a bad buffer index or length.
func (k *Kring) reinit(ring bool) {
	k.reinits.Add(1)
	k.rhead, k.rcur, k.rtail = k.hwcur, k.hwcur, k.hwtail
	if !ring {
		return
	}
	bufSize := k.reg.BufSize()
	for i := k.hwcur; i != k.hwtail; i = k.Next(i) {
		s := k.SlotAt(i)
		switch {
		case !k.reg.ValidBuf(s.BufIdx):
			s.BufIdx, s.Len = 0, 0
		case uint32(s.Len) > bufSize:
			s.Len = 0
		default:
			continue
		}
		k.badSlots.Add(1)
		k.SetSlotAt(i, s)
	}
	store32(k.mem, k.off+RingCurOff, k.hwcur)
	store32(k.mem, k.off+RingHeadOff, k.hwcur)
	store32(k.mem, k.off+RingTailOff, k.hwtail)
}

// Frag is one slot of a TX frame, read once from the ring.
type Frag struct {
	Slot   uint32 // position in the ring
	BufIdx uint32
	Len    uint16
	Flags  uint16 // NSMoreFrag on all but the last frag of a frame
	Data   []byte // the Len payload bytes inside the region
}

// TxScan reads pending TX slots from position from (HwCur, or the next returned by an
// earlier call) towards RHead into frags, whole frames only, and returns how many frags
// it stored and the position after the last frame it consumed. Frames with a bad slot
// (reserved or out-of-range buf_idx, len above the buffer size) or with more slots than
// len(frags) are skipped and counted. A frame still open at RHead (NS_MOREFRAG on its
// last slot) stays pending unless it fills the whole ring, then it is dropped. Loop
// until next == from, then call TxDone. Only from inside a SyncFunc.
func (k *Kring) TxScan(from uint32, frags []Frag) (n int, next uint32) {
	end := k.rhead
	if from >= k.num || !k.within(k.hwcur, from, end) {
		return 0, from
	}
	reg := k.reg
	bufSize := reg.BufSize()
	slots := k.slots()
	pos := from
	for pos != end {
		o := uint64(pos) * SlotSize
		w := binary.LittleEndian.Uint64(slots[o : o+8 : o+8]) // buf_idx, len, flags: read once
		if flags := uint16(w >> 48); flags&NSMoreFrag == 0 {
			// A one-slot frame, the common case: the chain bookkeeping below
			// reduced to what it does for one slot.
			idx, l := uint32(w), uint16(w>>32)
			b := reg.Buf(idx)
			switch {
			case b == nil || uint32(l) > bufSize:
				k.badSlots.Add(1)
			case len(frags) == 0:
				k.dropped.Add(1)
			case n >= len(frags):
				return n, pos // does not fit this batch; caller flushes and calls again
			default:
				fr := &frags[n]
				fr.Slot, fr.BufIdx, fr.Len, fr.Flags, fr.Data = pos, idx, l, flags, b[:l]
				n++
			}
			pos = k.Next(pos)
			continue
		}
		p, nf, bad, complete := pos, 0, false, false
		for p != end {
			o := k.slotOff(p)
			sb := k.mem[o : o+8 : o+8] // buf_idx, len, flags: read once
			f := Frag{Slot: p, BufIdx: binary.LittleEndian.Uint32(sb), Len: binary.LittleEndian.Uint16(sb[4:]),
				Flags: binary.LittleEndian.Uint16(sb[6:])}
			if b := reg.Buf(f.BufIdx); b != nil && uint32(f.Len) <= bufSize {
				f.Data = b[:f.Len]
			} else {
				bad = true
			}
			if n+nf < len(frags) {
				frags[n+nf] = f
			}
			nf++
			p = k.Next(p)
			if f.Flags&NSMoreFrag == 0 {
				complete = true
				break
			}
		}
		if !complete {
			if end == k.rtail { // the user cannot add the rest: drop it
				k.dropped.Add(1)
				pos = p
			}
			break
		}
		switch {
		case bad:
			k.badSlots.Add(1)
		case nf > len(frags):
			k.dropped.Add(1)
		case n+nf > len(frags):
			return n, pos // does not fit this batch; caller flushes and calls again
		default:
			n += nf
		}
		pos = p
	}
	return n, pos
}

// slots is the ring's slot array.
func (k *Kring) slots() []byte {
	o := k.off + RingSlotsOff
	return k.mem[o : o+uint64(k.num)*SlotSize : o+uint64(k.num)*SlotSize]
}

// TxDone completes TX slots up to next (all copied or handed over): hwcur = next and,
// since nothing stays in flight, hwtail = next-1. Only from inside a SyncFunc; a next
// outside [hwcur, rhead] is ignored.
func (k *Kring) TxDone(next uint32) {
	if next >= k.num || !k.within(k.hwcur, next, k.rhead) {
		return
	}
	k.hwcur = next
	k.hwtail = k.prev(next)
}

// TxRetract takes back the TX slots the ring's user gave but the backend has not
// consumed ([hwcur, rhead), e.g. frames a full pipe peer could not take): rhead and
// rcur return to hwcur and, in the ring header, head and cur too. It returns how many
// slots were taken back. For a user that would rather drop or retry frames itself than
// leave them queued until its next sync.
func (k *Kring) TxRetract() uint32 {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.dir != TX || k.closed {
		return 0
	}
	n := k.dist(k.hwcur, k.rhead)
	k.rhead, k.rcur = k.hwcur, k.hwcur
	store32(k.mem, k.off+RingCurOff, k.hwcur)
	store32(k.mem, k.off+RingHeadOff, k.hwcur)
	return n
}

// Lease is a run of RX slots reserved for filling outside the kring lock.
type Lease struct {
	Start uint32 // first slot
	N     uint32 // slots reserved
	seq   uint64
}

// RxSpace is how many RX slots can still be leased (netmap: N-1-(hwlease-hwcur)).
func (k *Kring) RxSpace() uint32 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.rxSpaceLocked()
}

func (k *Kring) rxSpaceLocked() uint32 { return k.num - 1 - k.dist(k.hwcur, k.hwlease) }

// RxReserve leases up to n free RX slots starting at hwlease. The caller fills them
// (RxFill, RxSlotBuf/SetSlotLen) without the lock, then calls RxComplete. A lease with
// N == 0 means the ring is full (a switch drops, never blocks).
func (k *Kring) RxReserve(n uint32) Lease {
	k.mu.Lock()
	defer k.mu.Unlock()
	n = min(n, k.rxSpaceLocked())
	if n == 0 || k.closed {
		return Lease{}
	}
	l := Lease{Start: k.hwlease, N: n}
	k.hwlease = k.add(k.hwlease, n)
	l.seq = k.leases.push(k.hwlease)
	return l
}

// RxComplete ends a lease of which the first used slots were filled. Unused slots are
// given back if this is the newest lease, else they become zero-length frames. hwtail
// advances over every finished lease in order; the ring is then notified.
func (k *Kring) RxComplete(l Lease, used uint32) {
	if l.N == 0 {
		return
	}
	used = min(used, l.N)
	k.mu.Lock()
	end := k.add(l.Start, l.N)
	if used < l.N {
		if k.leases.isNewest(l.seq) && k.hwlease == end {
			end = k.add(l.Start, used)
			k.hwlease = end
		} else {
			for i := used; i < l.N; i++ {
				o := k.slotOff(k.add(l.Start, i))
				binary.LittleEndian.PutUint32(k.mem[o+SlotLenOff:], 0) // len and flags
			}
		}
	}
	k.leases.finish(l.seq, end)
	old := k.hwtail
	k.hwtail = k.leases.advance(k.hwtail)
	moved := old != k.hwtail
	if k.closed {
		k.leaseDone.Broadcast()
	}
	k.mu.Unlock()
	if moved {
		k.Notify()
	}
}

// RxSlotBuf is the buffer of RX slot pos, or nil when its buf_idx (last written by the
// ring's user) is reserved or out of range. Only for slots the caller leased.
func (k *Kring) RxSlotBuf(pos uint32) []byte {
	if pos >= k.num {
		return nil
	}
	return k.reg.Buf(binary.LittleEndian.Uint32(k.mem[k.slotOff(pos):]))
}

// SetSlotLen writes len and flags of slot pos. Only for slots the caller owns. It
// stores only when they change: a switch delivering frames of one size then leaves
// the slot lines shared with the ring's user on another core, instead of taking
// them back on every lap (about twice the switch's throughput across cores).
func (k *Kring) SetSlotLen(pos uint32, n, flags uint16) {
	if pos >= k.num {
		return
	}
	o := k.slotOff(pos)
	v := uint32(n) | uint32(flags)<<16 // len, then flags (little-endian u16s)
	if binary.LittleEndian.Uint32(k.mem[o+SlotLenOff:]) != v {
		binary.LittleEndian.PutUint32(k.mem[o+SlotLenOff:], v)
	}
}

// RxFill copies data into leased RX slot pos and sets its len and flags. A bad buffer
// index or data longer than a buffer (or than a u16 len) makes a zero-length slot
// (counted); false then.
func (k *Kring) RxFill(pos uint32, data []byte, flags uint16) bool {
	b := k.RxSlotBuf(pos)
	if b == nil || len(data) > len(b) || len(data) > 0xffff {
		k.badSlots.Add(1)
		k.SetSlotLen(pos, 0, flags)
		return false
	}
	copy(b, data)
	k.SetSlotLen(pos, uint16(len(data)), flags)
	return true
}

// leaseQueue tracks outstanding leases in reservation order (at most num-1).
type leaseQueue struct {
	end        []uint32
	done       []bool
	head, tail uint64 // outstanding sequence numbers are [head, tail)
}

func (q *leaseQueue) init(n uint32) {
	q.end = make([]uint32, n)
	q.done = make([]bool, n)
}

func (q *leaseQueue) push(end uint32) uint64 {
	s := q.tail
	i := s % uint64(len(q.end))
	q.end[i], q.done[i] = end, false
	q.tail++
	return s
}

func (q *leaseQueue) isNewest(s uint64) bool { return s+1 == q.tail }

func (q *leaseQueue) finish(s uint64, end uint32) {
	if s < q.head || s >= q.tail {
		return
	}
	i := s % uint64(len(q.end))
	q.end[i], q.done[i] = end, true
}

// advance pops finished leases from the front and returns the new hwtail.
func (q *leaseQueue) advance(hwtail uint32) uint32 {
	for q.head < q.tail {
		i := q.head % uint64(len(q.end))
		if !q.done[i] {
			break
		}
		hwtail = q.end[i]
		q.head++
	}
	return hwtail
}
