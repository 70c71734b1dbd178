package vale

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
)

var _ backends.Port = (*DriverEndpoint)(nil)

// DriverEndpoint is a backends.Port on ring pair 0 of a HostPort: what a virtio-net
// device uses to sit on a service port, as a driver-side user of the port's host
// loop in the service. Send fills TX slots (NS_MOREFRAG chains for frames longer than
// a buffer) and syncs; Recv syncs, copies frames out and releases their slots;
// ReadyFD is ring 0's interrupt eventfd, armed (appl_need_kick) whenever Recv
// leaves the ring empty. Frames are plain Ethernet.
//
// The region and the CSB are shared with the service only: slot contents are
// checked (buffer index, length) and chains bounded, since a service bug must not
// become a panic in a VMM.
//
// Concurrency: as backends.Port (one Send and one Recv at a time, concurrently).
type DriverEndpoint struct {
	h        *HostPort
	tx, rx   *netmap.DriverRing
	txr, rxr *netmap.Ring
	rxIdx    int
	irq      *notify.EventFD
	bufSize  int

	closed                       atomic.Bool
	truncated, dropped, badSlots atomic.Uint64
}

// OnDown registers fn to run once if the switch service goes away while the
// endpoint is open (a virtio-net device then reports its link down).
func (e *DriverEndpoint) OnDown(fn func()) {
	e.h.Port.c.OnDown(func(error) {
		if !e.closed.Load() {
			fn()
		}
	})
}

// OpenEndpoint attaches port name in the service and returns it as a backends.Port
// (one ring pair is used).
func (c *Client) OpenEndpoint(name string) (*DriverEndpoint, error) {
	h, err := c.OpenHostPort(name, HostPortConfig{})
	if err != nil {
		return nil, err
	}
	return NewDriverEndpoint(h), nil
}

// NewDriverEndpoint wraps ring pair 0 of h; Close closes h.
func NewDriverEndpoint(h *HostPort) *DriverEndpoint {
	e := &DriverEndpoint{h: h, tx: h.TxRing(0), rx: h.RxRing(0)}
	e.txr, e.rxr = e.tx.Ring(), e.rx.Ring()
	e.rxIdx = e.rx.Index()
	e.irq = h.Irqs[e.rxIdx]
	e.bufSize = int(e.txr.BufSize())
	return e
}

// Name is the port name.
func (e *DriverEndpoint) Name() string { return e.h.Name() }

// HostPort is the underlying port.
func (e *DriverEndpoint) HostPort() *HostPort { return e.h }

// ReadyFD becomes readable when Recv may return frames.
func (e *DriverEndpoint) ReadyFD() int { return e.irq.FD() }

// Stats: frames cut to the caller's buffer, frames dropped (too long for a chain,
// or a broken chain received), slots with a bad buffer index or length.
func (e *DriverEndpoint) Stats() (truncated, dropped, badSlots uint64) {
	return e.truncated.Load(), e.dropped.Load(), e.badSlots.Load()
}

// Close detaches the port.
func (e *DriverEndpoint) Close() error {
	e.closed.Store(true)
	return e.h.Close()
}

// Send writes frames into free TX slots and syncs once. A frame too long for a
// chain of netmap.MaxFrags buffers is taken and dropped (counted).
func (e *DriverEndpoint) Send(frames [][]byte) (int, error) {
	r := e.txr
	if r.Space() == 0 {
		// Reclaim lazily, as netmap does: a sync reads hwtail back when the ring
		// is full (ForceReclaim would kick the host every time).
		if err := e.tx.Sync(0); err != nil && !errors.Is(err, netmap.ErrRingReinit) {
			return 0, err
		}
	}
	space := r.Space()
	h := r.Head()
	sent := 0
	for _, f := range frames {
		nsl := (len(f) + e.bufSize - 1) / e.bufSize
		if nsl == 0 {
			nsl = 1
		}
		if nsl > netmap.MaxFrags {
			e.dropped.Add(1)
			sent++
			continue
		}
		if uint32(nsl) > space {
			break
		}
		for off, i := 0, 0; i < nsl; i++ {
			sl := r.Slot(h)
			b := r.Buf(sl.BufIdx)
			if b == nil || len(b) < e.bufSize {
				// The service handed back a slot without a usable buffer.
				e.badSlots.Add(1)
				b = nil
			}
			n := 0
			if b != nil {
				n = copy(b, f[off:])
			}
			off += n
			sl.Len, sl.Flags = uint16(n), 0
			if i < nsl-1 {
				sl.Flags = netmap.NSMoreFrag
			}
			r.SetSlot(h, sl)
			h = r.Next(h)
		}
		space -= uint32(nsl)
		sent++
	}
	if h == r.Head() {
		return sent, nil
	}
	r.SetHeadCur(h, h)
	if err := e.tx.Sync(0); err != nil {
		return sent, fmt.Errorf("vale: %s: txsync: %w", e.Name(), err)
	}
	return sent, nil
}

// Recv copies up to len(bufs) received frames; it never blocks. When it leaves
// the ring empty it consumes ReadyFD's readiness and arms the interrupt, so ReadyFD
// fires on the next frame; a reader taking a backlog a few frames at a time pays
// no system call until then.
func (e *DriverEndpoint) Recv(bufs [][]byte, lens []int) (int, error) {
	if err := e.rx.Sync(0); err != nil && !errors.Is(err, netmap.ErrRingReinit) {
		return 0, err
	}
	r := e.rxr
	h0 := r.Head()
	h, t := h0, r.Tail()
	num := r.NumSlots()
	n := 0
	for n < len(bufs) && n < len(lens) && h != t {
		start, off, done, walked, cut := h, 0, false, 0, false
		out := bufs[n]
		for walked < netmap.MaxFrags && walked < int(num) && h != t {
			sl := r.Slot(h)
			b := r.Buf(sl.BufIdx)
			ln := int(sl.Len)
			if b == nil || ln > len(b) {
				e.badSlots.Add(1)
				ln = 0
			}
			c := 0
			if off < len(out) {
				c = copy(out[off:], b[:ln])
				off += c
			}
			cut = cut || c < ln
			h = r.Next(h)
			walked++
			if sl.Flags&netmap.NSMoreFrag == 0 {
				done = true
				break
			}
		}
		if !done {
			if h == t && walked < netmap.MaxFrags {
				h = start // the chain's end has not arrived yet
				break
			}
			e.dropped.Add(1) // a chain longer than any frame: drop its slots
			continue
		}
		if cut {
			e.truncated.Add(1)
		}
		lens[n] = off
		n++
	}
	if h != h0 {
		r.SetHeadCur(h, h)
		if err := e.rx.Sync(0); err != nil && !errors.Is(err, netmap.ErrRingReinit) {
			return n, err
		}
	}
	if n < len(bufs) {
		_, _ = e.irq.Read() // the readiness acted on: nothing is left
		e.arm()
	}
	return n, nil
}

// arm asks for an interrupt on the RX ring, then looks again (the host stores
// hwtail, then loads appl_need_kick; we store appl_need_kick, then load hwtail):
// frames that slipped in make ReadyFD readable at once.
func (e *DriverEndpoint) arm() {
	c := e.h.CSB
	c.SetApplNeedKick(e.rxIdx, 1)
	if c.HwTail(e.rxIdx) != e.rxr.Tail() {
		_ = e.irq.Signal()
	}
}
