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
// Concurrency: as backends.Port (one Send and one Recv may run at once).
type Endpoint struct {
	p      *Port
	own    bool
	txk    *Kring
	rxk    *Kring
	tx, rx *Ring
	efd    int
	ends   []int // Send scratch
	// armed: the eventfd is empty and the next RX advance must write it. Producers
	// write only on the armed->disarmed edge, so a burst costs one syscall.
	armed atomic.Bool

	truncated atomic.Uint64
}

// NewEndpoint wraps p. If own is set, Close also closes p.
func NewEndpoint(p *Port, own bool) (*Endpoint, error) {
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("netmap: endpoint %s: eventfd: %w", p.name, err)
	}
	e := &Endpoint{p: p, own: own, txk: p.tx[0], rxk: p.rx[0], efd: efd}
	e.tx = p.UserRing(e.txk)
	e.rx = p.UserRing(e.rxk)
	e.armed.Store(true)
	e.rxk.SetNotify(e.wake)
	return e, nil
}

func (e *Endpoint) wake() {
	if !e.armed.Swap(false) {
		return // already signalled
	}
	var one = [8]byte{1}
	_, _ = unix.Write(e.efd, one[:]) // EAGAIN means already readable
}

// Name is the port name.
func (e *Endpoint) Name() string { return e.p.name }

// Port is the wrapped port.
func (e *Endpoint) Port() *Port { return e.p }

// Truncated counts received frames cut to the caller's buffer size.
func (e *Endpoint) Truncated() uint64 { return e.truncated.Load() }

// Send writes frames into free TX slots and runs a txsync. It returns how many frames
// the port took; frames it could not take now (ring or peer full) are taken back from
// the ring, so nothing stays queued behind the caller's back.
func (e *Endpoint) Send(frames [][]byte) (int, error) {
	r := e.tx
	bs := min(int(r.BufSize()), 0xffff) // slot len is a u16
	head := r.Head()
	space := r.Space()
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
			head, space = r.Head(), r.Space()
		}
		if uint32(need) > space {
			if uint32(need) > r.NumSlots()-1 && len(ends) == 0 {
				return 0, fmt.Errorf("netmap: %s: frame of %d bytes needs more than %d slots", e.p.name, len(f), r.NumSlots()-1)
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
	if err := e.txk.Sync(0); err != nil {
		return 0, err
	}
	done := written - int(e.txk.TxRetract())
	sent := 0
	for sent < len(ends) && ends[sent] <= done {
		sent++
	}
	return sent, nil
}

// Recv runs an rxsync and copies complete frames into bufs, then releases their slots.
func (e *Endpoint) Recv(bufs [][]byte, lens []int) (int, error) {
	if !e.armed.Load() {
		var drain [8]byte
		_, _ = unix.Read(e.efd, drain[:])
	}
	// Re-arm before looking at the ring: an advance after this point signals again.
	e.armed.Store(true)
	r := e.rx
	if err := e.rxk.Sync(ForceRead); err != nil {
		return 0, err
	}
	head, tail := r.Head(), r.Tail()
	n := 0
	for n < len(bufs) && n < len(lens) && head != tail {
		// Find the end of the frame first; an unfinished chain stays for later.
		p, complete := head, false
		for p != tail {
			fl := r.Slot(p).Flags
			p = r.Next(p)
			if fl&NSMoreFrag == 0 {
				complete = true
				break
			}
		}
		if !complete {
			break
		}
		dst := bufs[n]
		got, trunc := 0, false
		for i := head; i != p; i = r.Next(i) {
			s := r.Slot(i)
			b := r.Buf(s.BufIdx)
			if b == nil || int(s.Len) > len(b) {
				continue // a bad slot contributes nothing
			}
			c := copy(dst[got:], b[:s.Len])
			got += c
			trunc = trunc || c < int(s.Len)
		}
		if trunc {
			e.truncated.Add(1)
		}
		lens[n] = got
		n++
		head = p
	}
	r.SetHeadCur(head, head)
	if n > 0 {
		if err := e.rxk.Sync(0); err != nil { // release the slots to the sender now
			return n, err
		}
	}
	if r.Head() != r.Tail() {
		e.wake() // frames left behind: stay readable
	}
	return n, nil
}

// ReadyFD is an eventfd written whenever the RX ring gets new frames.
func (e *Endpoint) ReadyFD() int { return e.efd }

// Close releases the eventfd and, if owned, the port.
func (e *Endpoint) Close() error {
	e.rxk.SetNotify(nil) // waits for a notify running in another port's sync
	err := unix.Close(e.efd)
	if e.own {
		err = errors.Join(err, e.p.Close())
	}
	return err
}
