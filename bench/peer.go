package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/guest/pktgen"
)

// The far end of every path is a backends.Port on the host: a switch port, a pipe
// end, or a TAP's packet socket. For TX and RX it runs inside the driver's thread,
// between the driver's syncs (so only two threads are busy: the driver's and the
// host's), and its CPU time is measured apart; for ping-pong it is a responder on a
// thread of its own, asleep on the port's readiness descriptor between frames.

const peerBatch = 256

// threadCPU is the calling thread's CPU time (the thread must be locked).
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// processCPU is the process's user and system time.
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// sink receives and counts pktgen data frames at the far end: from a netmap ring
// in place, as netmap's pkt-gen receives (rxsync, count the slots of the expected
// length, release; the first frame of every sync is parsed, so a path that
// delivers something else is caught), or through Recv (a packet socket: one copy
// per frame, as any reader of a TAP pays; every frame parsed, since the host's
// stack may send on a TAP too).
type sink struct {
	p    backends.Port
	size int           // the frames' length
	k    *netmap.Kring // nil: use p.Recv
	r    *netmap.Ring
	bufs [][]byte
	lens []int
	got  uint64
	bad  uint64
	// cpu is the time spent in drain: the thread CPU clock around Recv (system
	// calls anyway), the vDSO clock around a ring drain, which makes none and never
	// blocks (the thread CPU clock is a system call, too dear for every sync).
	cpu    time.Duration
	err    error
	frames uint64 // Recv calls that returned frames (for the batch size)
}

func newSink(p backends.Port, rx *netmap.Port, size int) *sink {
	s := &sink{p: p, size: size, bufs: make([][]byte, peerBatch), lens: make([]int, peerBatch)}
	if rx != nil {
		s.k = rx.RxRing(0)
		s.r = rx.UserRing(s.k)
	}
	for i := range s.bufs {
		s.bufs[i] = make([]byte, 2048)
	}
	return s
}

// drain receives everything pending (bounded: a few batches).
func (s *sink) drain() {
	if s.k != nil {
		t0 := time.Now()
		s.drainRing()
		s.cpu += time.Since(t0)
		return
	}
	t0 := threadCPU()
	for range 8 {
		n, err := s.p.Recv(s.bufs, s.lens)
		if err != nil {
			s.err = err
			break
		}
		if n == 0 {
			break
		}
		s.frames++
		for i := range n {
			e := s.bufs[i][:s.lens[i]]
			if h, err := pktgen.Parse(e); err != nil || h.Kind != pktgen.KindData {
				s.bad++
				continue
			}
			s.got++
		}
	}
	s.cpu += threadCPU() - t0
}

// drainRing is a netmap receiver: rxsync, count the frames, release them all.
// Slots are peer data: lengths and buffer indices are checked.
func (s *sink) drainRing() {
	if err := s.k.Sync(0); err != nil && !errors.Is(err, netmap.ErrRingReinit) {
		s.err = err
		return
	}
	h, t := s.r.Head(), s.r.Tail()
	for n := uint32(0); h != t && n < s.r.NumSlots(); n++ {
		sl := s.r.Slot(h)
		b := s.r.Buf(sl.BufIdx)
		ok := int(sl.Len) == s.size && int(sl.Len) <= len(b) && sl.Flags&netmap.NSMoreFrag == 0
		if ok && n == 0 {
			hd, err := pktgen.Parse(b[:sl.Len])
			ok = err == nil && hd.Kind == pktgen.KindData
		}
		if ok {
			s.got++
		} else {
			s.bad++
		}
		h = s.r.Next(h)
	}
	s.r.SetHeadCur(h, h)
	s.frames++
	// Release now, not at the next drain: the host keeps delivering meanwhile, and a
	// full ring on a switch port drops.
	if err := s.k.Sync(0); err != nil && !errors.Is(err, netmap.ErrRingReinit) {
		s.err = err
	}
}

// settle drains until want frames arrived or nothing came for quiet (the frames
// still in flight when the sender stopped).
func (s *sink) settle(want uint64, quiet time.Duration) {
	last := time.Now()
	for s.got < want && time.Since(last) < quiet {
		before := s.got
		s.drain()
		if s.got != before {
			last = time.Now()
			continue
		}
		if fd := s.p.ReadyFD(); fd >= 0 {
			_, _ = waitFD(fd, time.Millisecond)
		} else {
			time.Sleep(100 * time.Microsecond)
		}
	}
}

// txDrain is the driver's TX ring with the receiver run after every sync and
// around every wait.
type txDrain struct {
	r pktgen.Ring
	s *sink
}

func (t *txDrain) Ring() *netmap.Ring            { return t.r.Ring() }
func (t *txDrain) Stats() netmap.DriverRingStats { return t.r.Stats() }

func (t *txDrain) Sync(f netmap.SyncFlags) error {
	err := t.r.Sync(f)
	t.s.drain()
	return err
}

func (t *txDrain) Wait(d time.Duration) (bool, error) {
	t.s.drain()
	ok, err := t.r.Wait(d)
	t.s.drain()
	return ok, err
}

// source sends pktgen data frames from the far end.
type source struct {
	p      backends.Port
	frames [][]byte
	seq    uint64
	sent   uint64
	limit  uint64 // 0: none
	cpu    time.Duration
	err    error
}

func newSource(p backends.Port, size int, dst, src [6]byte, limit uint64) *source {
	s := &source{p: p, limit: limit, frames: make([][]byte, peerBatch)}
	for i := range s.frames {
		s.frames[i] = pktgen.Template(size, 0, dst, src, pktgen.KindData)
	}
	return s
}

// send offers up to n frames (sequence numbers continue from the last one taken).
func (s *source) send(n int) {
	if s.limit > 0 {
		n = int(min(uint64(n), s.limit-min(s.sent, s.limit)))
	}
	n = min(n, len(s.frames))
	if n <= 0 || s.err != nil {
		return
	}
	t0 := threadCPU()
	for i := range n {
		pktgen.Stamp(s.frames[i], s.seq+uint64(i), 0)
	}
	k, err := s.p.Send(s.frames[:n])
	if err != nil {
		s.err = err
	}
	s.seq += uint64(k)
	s.sent += uint64(k)
	s.cpu += threadCPU() - t0
}

// rxFeed is the driver's RX ring with the generator run before every sync and wait:
// it keeps at most window frames in flight (sent, not yet consumed by the driver),
// so that a path without flow control measures its rate, not its losses. Frames
// still missing when a wait times out are written off as lost.
type rxFeed struct {
	r        pktgen.Ring
	src      *source
	window   uint64
	lastHead uint32
	consumed uint64
	lost     uint64
}

func (r *rxFeed) Ring() *netmap.Ring            { return r.r.Ring() }
func (r *rxFeed) Stats() netmap.DriverRingStats { return r.r.Stats() }

func (r *rxFeed) feed() {
	ring := r.r.Ring()
	head := ring.Head()
	r.consumed += uint64((head + ring.NumSlots() - r.lastHead) % ring.NumSlots())
	r.lastHead = head
	if inflight := r.src.sent - min(r.src.sent, r.consumed+r.lost); inflight < r.window {
		r.src.send(int(r.window - inflight))
	}
}

// Sync releases what the driver consumed first, then sends: sending first would
// find those slots still taken, and a switch drops what a full ring cannot take.
func (r *rxFeed) Sync(f netmap.SyncFlags) error {
	err := r.r.Sync(f)
	r.feed()
	return err
}

// Wait writes off what is in flight when nothing came for a whole wait: frames a
// path lost, so the generator goes on. Only a full wait counts: a wake-up that finds
// nothing new proves no loss, and writing off frames still on their way would let
// the window overrun the ring.
func (r *rxFeed) Wait(d time.Duration) (bool, error) {
	r.feed()
	t0 := time.Now()
	ok, err := r.r.Wait(d)
	if err == nil && !ok && time.Since(t0) >= d {
		r.lost = r.src.sent - min(r.src.sent, r.consumed)
	}
	return ok, err
}

// responder echoes pings at the far end on a locked thread of its own until ctx
// ends; it returns the pongs sent and its thread's CPU time.
func responder(ctx context.Context, p backends.Port, mac [6]byte) (pongs uint64, cpu time.Duration, err error) {
	bufs := make([][]byte, peerBatch)
	lens := make([]int, peerBatch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	out := make([][]byte, 0, peerBatch)
	t0 := threadCPU()
	defer func() { cpu = threadCPU() - t0 }()
	fd := p.ReadyFD()
	for ctx.Err() == nil {
		n, err := p.Recv(bufs, lens)
		if err != nil {
			return pongs, 0, err
		}
		if n == 0 {
			if fd >= 0 {
				if _, err := waitFD(fd, 20*time.Millisecond); err != nil {
					return pongs, 0, err
				}
			} else {
				time.Sleep(50 * time.Microsecond)
			}
			continue
		}
		out = out[:0]
		for i := range n {
			e := bufs[i][:lens[i]]
			h, err := pktgen.Parse(e)
			if err != nil || h.Kind != pktgen.KindPing {
				continue
			}
			// Back to the sender, as a pong (frame layout: guest/pktgen/frame.go).
			copy(e[0:6], h.Src[:])
			copy(e[6:12], mac[:])
			binary.LittleEndian.PutUint16(e[18:], uint16(pktgen.KindPong))
			out = append(out, e)
		}
		for len(out) > 0 && ctx.Err() == nil {
			k, err := p.Send(out)
			if err != nil {
				return pongs, 0, err
			}
			pongs += uint64(k)
			out = out[k:]
			if len(out) > 0 {
				time.Sleep(10 * time.Microsecond) // the port is full: let it drain
			}
		}
	}
	return pongs, 0, nil
}
