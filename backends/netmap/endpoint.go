package netmap

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
)

var _ backends.Port = (*Endpoint)(nil)

// Endpoint is a backends.Port on ring 0 of a netmap port: it is that port's user
// (application side), so frames sent through it enter the port's TX ring and frames
// the port receives come out of Recv. Frames longer than a buffer use NS_MOREFRAG
// chains.
//
// The ring memory may be shared with a peer that is not trusted (the other end of a
// pipe, ports placed in one region with @share): Send and Recv take head and tail from
// the kernel-side state (Kring), never back from the ring header, read each slot once,
// and bound every walk by the ring size.
//
// Concurrency: as backends.Port (one Send and one Recv may run at once).
type Endpoint struct {
	p      *Port
	own    bool
	txk    *Kring
	rxk    *Kring
	tx, rx *Ring
	efd    int
	roomfd int
	ends   []int // Send scratch
	// armed: the eventfd is empty and the next RX advance must write it. Producers
	// write only on the armed->disarmed edge, so a burst costs one syscall; Recv
	// drains and re-arms only when it leaves nothing behind, so reading a backlog a
	// frame at a time costs none.
	armed atomic.Bool
	// txWait: a Send may leave frames behind; the next TX room notification writes
	// roomfd. roomSet: roomfd was written and not yet drained.
	txWait, roomSet atomic.Bool

	truncated, dropped atomic.Uint64
}

// NewEndpoint wraps p. If own is set, Close also closes p.
func NewEndpoint(p *Port, own bool) (*Endpoint, error) {
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("netmap: endpoint %s: eventfd: %w", p.name, err)
	}
	roomfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(efd)
		return nil, fmt.Errorf("netmap: endpoint %s: eventfd: %w", p.name, err)
	}
	e := &Endpoint{p: p, own: own, txk: p.tx[0], rxk: p.rx[0], efd: efd, roomfd: roomfd}
	e.tx = p.UserRing(e.txk)
	e.rx = p.UserRing(e.rxk)
	e.armed.Store(true)
	e.rxk.SetNotify(e.wake)
	e.txk.SetNotify(e.room)
	return e, nil
}

func (e *Endpoint) wake() {
	if !e.armed.Swap(false) {
		return // already signalled
	}
	var one = [8]byte{1}
	_, _ = unix.Write(e.efd, one[:]) // EAGAIN means already readable
}

// room runs when the TX ring may take more (a pipe peer released RX slots).
func (e *Endpoint) room() {
	if !e.txWait.Swap(false) {
		return // no Send is waiting for room
	}
	var one = [8]byte{1}
	_, _ = unix.Write(e.roomfd, one[:])
	e.roomSet.Store(true)
}

// Name is the port name.
func (e *Endpoint) Name() string { return e.p.name }

// Port is the wrapped port.
func (e *Endpoint) Port() *Port { return e.p }

// Truncated counts received frames cut to the caller's buffer size.
func (e *Endpoint) Truncated() uint64 { return e.truncated.Load() }

// Dropped counts received MOREFRAG chains dropped because they could never end (they
// fill every slot the ring gives its user).
func (e *Endpoint) Dropped() uint64 { return e.dropped.Load() }

// dist is the cyclic distance from a to b in a ring of n slots (a, b < n).
func dist(a, b, n uint32) uint32 { return (b + n - a) % n }

// Send writes frames into free TX slots and runs a txsync. It returns how many frames
// the port took; frames it could not take now (ring or peer full) are taken back from
// the ring, so nothing stays queued behind the caller's back, and RoomFD becomes
// readable once the port may take more.
func (e *Endpoint) Send(frames [][]byte) (int, error) {
	if e.roomSet.Swap(false) {
		var drain [8]byte
		_, _ = unix.Read(e.roomfd, drain[:])
	}
	// Announce before any sync that may leave frames behind: room freed from now on
	// is signalled, so a caller that waits on RoomFD after a short Send cannot miss it.
	e.txWait.Store(true)
	r := e.tx
	num := r.NumSlots()
	bs := min(int(r.BufSize()), 0xffff) // slot len is a u16
	st := e.txk.State()
	start := st.RHead // the kernel's view of our head, not the shared header's
	head, space := start, dist(st.RHead, st.RTail, num)
	synced := false
	written := 0       // slots written in this call
	ends := e.ends[:0] // cumulative slot count at the end of each frame
	for _, f := range frames {
		need := max(1, (len(f)+bs-1)/bs)
		if uint32(need) > space && !synced {
			r.SetHeadCur(head, head)
			if err := e.txk.Sync(ForceReclaim); err != nil && !errors.Is(err, ErrRingReinit) {
				return 0, err
			}
			synced = true
			st = e.txk.State()
			head, space = st.RHead, dist(st.RHead, st.RTail, num)
		}
		if uint32(need) > space {
			if uint32(need) > num-1 && len(ends) == 0 {
				return 0, fmt.Errorf("netmap: %s: frame of %d bytes needs more than %d slots", e.p.name, len(f), num-1)
			}
			break
		}
		for off := 0; ; {
			s := r.Slot(head)
			b := r.Buf(s.BufIdx)
			n := min(bs, len(f)-off)
			if b == nil {
				return 0, fmt.Errorf("netmap: %s: tx slot %d has bad buffer %d", e.p.name, head, s.BufIdx)
			}
			copy(b, f[off:off+n])
			off += n
			s.Len, s.Flags = uint16(n), 0
			if off < len(f) {
				s.Flags = NSMoreFrag
			}
			r.SetSlot(head, s)
			head = r.Next(head)
			if off >= len(f) {
				break
			}
		}
		space -= uint32(need)
		written += need
		ends = append(ends, written)
	}
	e.ends = ends
	r.SetHeadCur(head, head)
	if err := e.txk.Sync(0); err != nil && !errors.Is(err, ErrRingReinit) {
		return 0, err
	}
	e.txk.TxRetract()
	// What the port consumed is how far hwcur moved; a ring reinitialised by a peer's
	// corruption consumed nothing more, and nothing is claimed sent that was not.
	done := int(dist(start, e.txk.State().HwCur, num))
	sent := 0
	for sent < len(ends) && ends[sent] <= done {
		sent++
	}
	if sent == len(frames) {
		e.txWait.Store(false) // nothing left behind (a signal sent meanwhile is spurious)
	}
	return sent, nil
}

// Recv runs an rxsync and copies complete frames into bufs, then releases their slots.
func (e *Endpoint) Recv(bufs [][]byte, lens []int) (int, error) {
	r := e.rx
	num := r.NumSlots()
	// A peer sharing the region may have written our head; the prologue then
	// reinitialises the ring from the kernel state, which is all we use below.
	if err := e.rxk.Sync(ForceRead); err != nil && !errors.Is(err, ErrRingReinit) {
		return 0, err
	}
	st := e.rxk.State()
	head, avail := st.HwCur, dist(st.HwCur, st.HwTail, num)
	n := 0
	unfinished := false
	for n < len(bufs) && n < len(lens) && avail > 0 {
		// One pass over the frame's slots, each read once, at most avail of them.
		dst := bufs[n]
		got, trunc, complete := 0, false, false
		p, k := head, uint32(0)
		for k < avail {
			s := r.Slot(p)
			p = r.Next(p)
			k++
			if b := r.Buf(s.BufIdx); b != nil && int(s.Len) <= len(b) { // a bad slot contributes nothing
				c := copy(dst[got:], b[:s.Len])
				got += c
				trunc = trunc || c < int(s.Len)
			}
			if s.Flags&NSMoreFrag == 0 {
				complete = true
				break
			}
		}
		if !complete {
			if avail == num-1 {
				// The chain fills every slot we own: it can never end. Drop it, or
				// the ring stays stuck.
				e.dropped.Add(1)
				head, avail = p, 0
			}
			unfinished = true // the rest of the frame comes later: its arrival notifies
			break
		}
		if trunc {
			e.truncated.Add(1)
		}
		lens[n] = got
		n++
		head, avail = p, avail-k
	}
	r.SetHeadCur(head, head)
	if head != st.HwCur {
		if err := e.rxk.Sync(0); err != nil && !errors.Is(err, ErrRingReinit) { // release the slots to the sender now
			return n, err
		}
	}
	if avail > 0 && !unfinished {
		// Frames left behind for lack of bufs: stay readable. The descriptor
		// already is, unless nothing signalled since it was last drained.
		if e.armed.Load() {
			e.wake()
		}
		return n, nil
	}
	// Nothing complete left: drain the descriptor and arm it, then look again, since
	// a frame that came while it was disarmed did not signal.
	if !e.armed.Load() {
		var drain [8]byte
		_, _ = unix.Read(e.efd, drain[:])
		e.armed.Store(true)
		if e.rxk.State().HwTail != st.HwTail {
			e.wake()
		}
	}
	return n, nil
}

// ReadyFD is an eventfd that is readable while Recv may return frames: written when
// the RX ring gets new frames, drained only by a Recv that leaves none behind. A
// reader watching it edge-triggered calls Recv until it returns 0.
func (e *Endpoint) ReadyFD() int { return e.efd }

// RoomFD is an eventfd written when a Send that did not take every frame may take
// more (the pipe peer freed room). Send drains it. Safe to watch edge-triggered.
func (e *Endpoint) RoomFD() int { return e.roomfd }

// Close releases the eventfds and, if owned, the port.
func (e *Endpoint) Close() error {
	e.rxk.SetNotify(nil) // waits for a notify running in another port's sync
	e.txk.SetNotify(nil)
	err := errors.Join(unix.Close(e.efd), unix.Close(e.roomfd))
	if e.own {
		err = errors.Join(err, e.p.Close())
	}
	return err
}
