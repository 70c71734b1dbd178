package vale

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
)

// BackendOptions configure AttachBackend. Zero values take the defaults.
type BackendOptions struct {
	// Slots per ring of the switch-side port (default netmap.DefaultSlots).
	Slots int
	// BufSize is the buffer size (default 2048). A frame the backend hands over that
	// is longer is truncated by the backend's Recv (it counts those); raise it for
	// backends carrying large (GSO) frames.
	BufSize int
	// Burst is the most frames moved per direction per Poll (default 256).
	Burst int
}

// BackendStats count what a BackendPort could not pass on.
type BackendStats struct {
	SendDropped uint64 // frames from the switch the backend's Send did not take
	SendErrors  uint64 // failed Send calls
	RecvErrors  uint64 // failed Recv calls
	BadFrames   uint64 // frames from the switch with no valid slot (ring memory corrupted)
}

// pumpRounds bounds the Polls the pump runs between two looks at its stop event.
const pumpRounds = 16

// BackendPort attaches any backends.Port (a TAP, a netmap Endpoint, a test double) to
// a switch. It is the user of a switch port's ring pair: frames from the backend's
// Recv are received straight into TX slot buffers and forwarded by a TX sync; frames
// the switch delivers are handed to the backend's Send from the RX ring. Frames the
// backend does not take are dropped and counted (the switch never waits). Ring
// positions come from the kernel-side state, never back from the ring header (a port
// placed in a shared region has other writers), and every walk is bounded by the ring.
//
// Concurrency: Poll moves frames both ways once, without blocking; calls are
// serialised by a mutex, so the backend sees at most one Send or Recv at a time.
// Start runs Poll in a goroutine (locked to its OS thread) that sleeps in poll(2) on
// the backend's ReadyFD and on an eventfd the RX ring's notify writes; with ReadyFD
// -1 it polls the backend every millisecond. Close stops it. The backend stays open:
// its owner closes it after Close.
type BackendPort struct {
	port     *Port
	be       backends.Port
	txk, rxk *netmap.Kring
	tx, rx   *netmap.Ring
	efd      int // RX notify eventfd
	stopfd   int
	burst    int

	mu     sync.Mutex // one Poll at a time
	closed bool       // guarded by mu: the rings are gone
	bufs   [][]byte
	lens   []int
	out    [][]byte
	arena  []byte // MOREFRAG frames joined for Send; MaxFrags buffers, made on first use
	frags  [netmap.MaxFrags]netmap.Slot

	running   atomic.Bool
	done      chan struct{}
	closeOnce sync.Once

	sendDropped, sendErrors, recvErrors, badFrames atomic.Uint64
}

// AttachBackend creates a switch port named name (one ring pair) and connects be to
// it. be must carry plain Ethernet frames: a TAP opened without a virtio-net header
// (IFF_VNET_HDR), since the switch reads MAC addresses at offset 0. Call Start, or call Poll yourself when be's ReadyFD is readable or the port's
// ReadyFD (see ReadyFD) is.
func (s *Switch) AttachBackend(name string, be backends.Port, opt BackendOptions) (*BackendPort, error) {
	if be == nil {
		return nil, fmt.Errorf("vale: %s: attach backend %q: nil port", s.name, name)
	}
	if opt.Burst <= 0 {
		opt.Burst = 256
	}
	p, err := s.NewPort(name, netmap.PortConfig{TxSlots: opt.Slots, RxSlots: opt.Slots, BufSize: opt.BufSize})
	if err != nil {
		return nil, err
	}
	np := p.Netmap()
	b := &BackendPort{port: p, be: be, txk: np.TxRing(0), rxk: np.RxRing(0), burst: opt.Burst,
		efd: -1, stopfd: -1, done: make(chan struct{})}
	b.tx, b.rx = np.UserRing(b.txk), np.UserRing(b.rxk)
	b.burst = min(b.burst, int(b.tx.NumSlots())-1, int(b.rx.NumSlots())-1)
	if b.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err == nil {
		b.stopfd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	}
	if err != nil {
		b.closeFDs()
		p.Detach()
		return nil, fmt.Errorf("vale: %s: attach backend %q: eventfd: %w", s.name, name, err)
	}
	b.bufs = make([][]byte, b.burst)
	b.lens = make([]int, b.burst)
	b.out = make([][]byte, 0, b.burst)
	b.rxk.SetNotify(b.wake)
	return b, nil
}

func (b *BackendPort) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(b.efd, one[:]) // EAGAIN: already readable
}

// Port is the switch port.
func (b *BackendPort) Port() *Port { return b.port }

// ReadyFD becomes readable when the switch delivered frames for the backend.
func (b *BackendPort) ReadyFD() int { return b.efd }

// Stats returns the adapter's counters.
func (b *BackendPort) Stats() BackendStats {
	return BackendStats{SendDropped: b.sendDropped.Load(), SendErrors: b.sendErrors.Load(), RecvErrors: b.recvErrors.Load(),
		BadFrames: b.badFrames.Load()}
}

// Poll moves up to Burst frames from the backend into the switch and up to Burst
// frames from the switch to the backend. It returns how many moved each way.
func (b *BackendPort) Poll() (in, out int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, 0, fmt.Errorf("vale: %s:%s: backend port closed", b.port.sw.name, b.port.name)
	}
	in, err1 := b.ingress()
	out, err2 := b.egress()
	return in, out, errors.Join(err1, err2)
}

// dist is the cyclic distance from a to b in a ring of n slots (a, b < n).
func dist(a, b, n uint32) uint32 { return (b + n - a) % n }

// ingress: backend Recv straight into TX slot buffers, then a TX sync forwards them.
func (b *BackendPort) ingress() (int, error) {
	r := b.tx
	num := r.NumSlots()
	st := b.txk.State()
	if st.RHead == st.RTail { // no free slot: reclaim
		if err := b.txk.Sync(netmap.ForceReclaim); err != nil && !errors.Is(err, netmap.ErrRingReinit) {
			return 0, err
		}
		st = b.txk.State()
	}
	m := min(int(dist(st.RHead, st.RTail, num)), b.burst)
	head := st.RHead
	for i, pos := 0, head; i < m; i, pos = i+1, r.Next(pos) {
		buf := r.SlotBuf(pos)
		if buf == nil {
			m = i // a bad buf_idx in our own slot: only a peer sharing the region writes it
			break
		}
		b.bufs[i] = buf
	}
	if m == 0 {
		return 0, nil
	}
	n, err := b.be.Recv(b.bufs[:m], b.lens[:m])
	clear(b.bufs[:m])
	if err != nil {
		b.recvErrors.Add(1)
		err = fmt.Errorf("vale: %s:%s: backend recv: %w", b.port.sw.name, b.port.name, err)
	}
	n = min(max(n, 0), m)
	if n == 0 {
		return 0, err
	}
	pos := head
	for i := 0; i < n; i++ {
		s := r.Slot(pos)
		s.Len, s.Flags = uint16(min(max(b.lens[i], 0), int(b.tx.BufSize()))), 0
		r.SetSlot(pos, s)
		pos = r.Next(pos)
	}
	r.SetHeadCur(pos, pos)
	if serr := b.txk.Sync(0); serr != nil {
		err = errors.Join(err, serr)
	}
	return n, err
}

// egress: frames the switch delivered go to the backend's Send, then back to the switch.
func (b *BackendPort) egress() (int, error) {
	var drain [8]byte
	_, _ = unix.Read(b.efd, drain[:]) // reset readiness before looking
	r := b.rx
	num := r.NumSlots()
	if err := b.rxk.Sync(netmap.ForceRead); err != nil && !errors.Is(err, netmap.ErrRingReinit) {
		return 0, err
	}
	st := b.rxk.State()
	head, avail := st.HwCur, dist(st.HwCur, st.HwTail, num)
	out := b.out[:0]
	pos := head
	for len(out) < b.burst && avail > 0 {
		// Read the frame's slots once each: it ends at a slot without MOREFRAG, at
		// tail, or after MaxFrags slots (the switch delivers only whole chains of at
		// most MaxFrags; anything else is a corrupted ring, cut there).
		nf, need, p := 0, 0, pos
		for nf < len(b.frags) && uint32(nf) < avail {
			s := r.Slot(p)
			p = r.Next(p)
			b.frags[nf] = s
			nf++
			if s.Len > 0 && int(s.Len) <= int(r.BufSize()) {
				need += int(s.Len)
			}
			if s.Flags&netmap.NSMoreFrag == 0 {
				break
			}
		}
		if nf == 1 {
			s := b.frags[0]
			if buf := r.Buf(s.BufIdx); buf != nil && int(s.Len) <= len(buf) {
				out = append(out, buf[:s.Len])
			} else {
				b.badFrames.Add(1)
			}
			pos, avail = p, avail-1
			continue
		}
		// A MOREFRAG chain: joined in the arena, which holds the longest chain; when
		// this burst has used too much of it, the chain waits for the next Poll.
		if b.arena == nil {
			b.arena = make([]byte, 0, netmap.MaxFrags*int(r.BufSize()))
		}
		if len(b.arena)+need > cap(b.arena) && len(out) > 0 {
			break
		}
		start := len(b.arena)
		for _, s := range b.frags[:nf] {
			if buf := r.Buf(s.BufIdx); buf != nil && int(s.Len) <= len(buf) && len(b.arena)+int(s.Len) <= cap(b.arena) {
				b.arena = append(b.arena, buf[:s.Len]...)
			}
		}
		if len(b.arena) > start {
			out = append(out, b.arena[start:len(b.arena):len(b.arena)])
		} else {
			b.badFrames.Add(1)
		}
		pos, avail = p, avail-uint32(nf)
	}
	var err error
	if len(out) > 0 {
		n, serr := b.be.Send(out)
		n = min(max(n, 0), len(out))
		if serr != nil {
			b.sendErrors.Add(1)
			err = fmt.Errorf("vale: %s:%s: backend send: %w", b.port.sw.name, b.port.name, serr)
		}
		if n < len(out) {
			b.sendDropped.Add(uint64(len(out) - n))
		}
	}
	moved := len(out)
	clear(out)
	b.out = out[:0]
	b.arena = b.arena[:0]
	if pos != head {
		r.SetHeadCur(pos, pos)
		if serr := b.rxk.Sync(0); serr != nil {
			err = errors.Join(err, serr)
		}
	}
	if avail > 0 {
		b.wake() // more left than one burst: stay readable
	}
	return moved, err
}

// Start runs the pump goroutine. Errors from the backend are counted in Stats and the
// pump keeps going; it stops at Close.
func (b *BackendPort) Start() error {
	if !b.running.CompareAndSwap(false, true) {
		return fmt.Errorf("vale: %s:%s: pump already started", b.port.sw.name, b.port.name)
	}
	go b.pump()
	return nil
}

func (b *BackendPort) pump() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(b.done)
	fds := []unix.PollFd{{Fd: int32(b.stopfd), Events: unix.POLLIN}, {Fd: int32(b.efd), Events: unix.POLLIN}}
	timeout := -1
	if fd := b.be.ReadyFD(); fd >= 0 {
		fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	} else {
		timeout = 1 // ms: the backend has no readiness fd
	}
	for {
		// A bounded number of Polls, then a look at the stop event: a backend or a
		// switch that never runs dry cannot keep Close waiting.
		busy := false
		for i := 0; i < pumpRounds; i++ {
			in, out, _ := b.Poll()
			if busy = in != 0 || out != 0; !busy {
				break
			}
		}
		for i := range fds {
			fds[i].Revents = 0
		}
		wait := timeout
		if busy {
			wait = 0
		}
		if _, err := unix.Poll(fds, wait); err != nil && err != unix.EINTR {
			return
		}
		if fds[0].Revents != 0 {
			return
		}
	}
}

// Close stops the pump, detaches the port from the switch and releases it. The
// backend is not closed.
func (b *BackendPort) Close() error {
	var err error
	b.closeOnce.Do(func() {
		if b.running.Load() {
			one := [8]byte{1}
			_, _ = unix.Write(b.stopfd, one[:])
			<-b.done
		}
		b.rxk.SetNotify(nil)
		b.mu.Lock()
		b.closed = true
		err = b.port.Detach()
		b.mu.Unlock()
		b.closeFDs()
	})
	return err
}

func (b *BackendPort) closeFDs() {
	for _, fd := range []*int{&b.efd, &b.stopfd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}
