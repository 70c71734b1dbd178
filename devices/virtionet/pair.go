package virtionet

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/notify"
)

// batch bounds the chains handled per queue before the worker looks at its other
// queue, so one busy direction cannot starve the other.
const batch = 256

// txFlushEvery bounds how many TX chains may wait in a batch before used.idx is
// published (see serviceTX); small rings flush every quarter ring.
const txFlushEvery = 32

// pair is one rx/tx queue pair and its worker.
//
// Concurrency: everything here belongs to the worker goroutine once started.
type pair struct {
	d        *Device
	idx      int
	rx, tx   *virtio.QueueHandle
	ctrl     *virtio.QueueHandle
	port     backends.Port
	vport    VectorPort // nil: copy through Send/Recv
	hdrLen   int
	mrg      bool
	maxFrame int // largest frame (header included) the backend may hand us
	st       *pairCounters

	worker *notify.Worker

	chains   []virtio.Chain
	iovs     [][]byte
	scratch  []byte
	stash    []byte // a received frame waiting for guest buffers
	stashLen int

	// rxReady: the port signalled readability and has not returned "nothing
	// pending" since, so a receive attempt is worth a syscall. The port's fd is
	// watched edge-triggered, so it stays set when RX stops for lack of guest
	// buffers: the RX queue's kick then resumes draining.
	rxReady    bool
	readySrc   int // the worker's source index of the port fd; -1: none
	alwaysRead bool
}

func newPair(d *Device, i int, rx, tx *virtio.QueueHandle, features uint64, hl int) *pair {
	p := &pair{d: d, idx: i, rx: rx, tx: tx, port: d.cfg.Ports[i], hdrLen: hl, st: &d.stats[i]}
	p.mrg = features&FMrgRxbuf != 0
	if vp, ok := p.port.(VectorPort); ok && d.cfg.VnetHdr {
		p.vport = vp
	}
	frame := d.mtu + 14 + 4
	if features&(FGuestTSO4|FGuestTSO6|FGuestUFO) != 0 {
		frame = maxGSOFrame
	}
	p.maxFrame = hl + frame
	p.chains = make([]virtio.Chain, 1)
	return p
}

func (p *pair) start() error {
	var err error
	p.worker, err = notify.NewWorker(notify.Config{
		Name: fmt.Sprintf("virtionet-%d", p.idx),
		Mode: p.d.cfg.Mode,
		// Look at everything once: the driver may have filled the queues before its
		// kicks were bound, and frames may be waiting on the port already.
		Init: p.first,
		Handler: func(src int, _ uint64) {
			if src == p.readySrc {
				p.rxReady = true
			}
			p.service()
		},
		Poll:   p.poll,
		Arm:    p.arm,
		Disarm: p.disarm,
	})
	if err != nil {
		return err
	}
	srcs := append([]*notify.EventFD(nil), p.rx.Kicks...)
	srcs = append(srcs, p.tx.Kicks...)
	if p.ctrl != nil {
		srcs = append(srcs, p.ctrl.Kicks...)
	}
	for _, s := range srcs {
		if _, err := p.worker.Add(s); err != nil {
			p.worker.Stop()
			return err
		}
	}
	// The worker waits on the port itself; without a readiness fd the port must be
	// polled on every wakeup.
	p.readySrc = -1
	p.alwaysRead = p.port.ReadyFD() < 0
	if fd := p.port.ReadyFD(); fd >= 0 {
		if p.readySrc, err = p.worker.AddFD(fd); err != nil {
			p.worker.Stop()
			return fmt.Errorf("virtionet: port %s: %w", p.port.Name(), err)
		}
	}
	// Arm both queues before the first wait so that no kick is missed.
	p.rx.EnableNotify()
	p.tx.EnableNotify()
	p.worker.Start()
	return nil
}

// first is the worker's initial pass: an edge-triggered port reports nothing for
// frames that were pending before it was watched, so try to receive.
func (p *pair) first() {
	p.rxReady = true
	p.service()
}

func (p *pair) stop() {
	p.worker.Stop()
}

// service runs after every wakeup: the control queue, then both directions until
// neither has work left.
func (p *pair) service() {
	if p.ctrl != nil {
		p.serviceCtrl()
	}
	for {
		tx := p.serviceTX()
		rx := p.serviceRX()
		if !tx && !rx {
			return
		}
	}
}

// poll is the Poll/Adaptive hook: process without a kick.
func (p *pair) poll() bool {
	p.rxReady = true
	tx := p.serviceTX()
	rx := p.serviceRX()
	return tx || rx
}

func (p *pair) arm() bool {
	a := p.tx.EnableNotify()
	b := p.rx.EnableNotify()
	return a || b
}

func (p *pair) disarm() {
	p.tx.DisableNotify()
	p.rx.DisableNotify()
}

func (p *pair) broken(q *virtio.QueueHandle, err error) {
	if t := p.d.transport.Load(); t != nil {
		t.NeedsReset(fmt.Errorf("queue %d: %w", q.Index, err))
	}
}

func (p *pair) interrupt(q *virtio.QueueHandle) {
	if q.NeedInterrupt() {
		p.st.interrupts.Add(1)
		_ = q.Interrupt()
	}
}

// serviceTX sends up to a batch of chains; it reports whether more may be waiting.
func (p *pair) serviceTX() bool {
	q := p.tx
	if q.Broken() != nil {
		return false
	}
	c := &p.chains[0]
	// Publish used entries now and then within the batch: a driver that reclaims
	// TX buffers from the used ring (Linux does in start_xmit) gets them back
	// before the whole batch is sent, so it need not stop and kick again. The
	// interrupt decision stays once per batch.
	every := min(txFlushEvery, max(1, int(q.Size())/4))
	n := 0
	for ; n < batch; n++ {
		ok, err := q.Pop(c)
		if err != nil {
			p.broken(q, err)
			break
		}
		if !ok {
			break
		}
		p.sendChain(c)
		q.Push(c.Head, 0)
		if (n+1)%every == 0 {
			q.Flush()
		}
	}
	p.interrupt(q)
	if n == batch {
		return true
	}
	return q.EnableNotify() && q.Broken() == nil
}

// sendChain hands one TX chain's frame to the backend.
func (p *pair) sendChain(c *virtio.Chain) {
	st := p.st
	if c.ReadLen < uint64(p.hdrLen)+14 || c.ReadLen > uint64(p.hdrLen+maxGSOFrame) || p.d.gone[p.idx].Load() {
		st.txDropped.Add(1)
		return
	}
	p.iovs = p.iovs[:0]
	for _, b := range c.Readable() {
		p.iovs = append(p.iovs, b.Data)
	}
	var h [1]byte
	peek(p.iovs, 1, h[:])
	gsoType := h[0]
	frameLen := c.ReadLen - uint64(p.hdrLen)
	var err error
	var sent bool
	switch {
	case p.vport != nil && len(p.iovs) <= maxIOV:
		var n int
		n, err = p.vport.Writev(p.iovs)
		sent = n > 0
	default:
		buf := p.linearize(p.iovs, int(c.ReadLen))
		if !p.d.cfg.VnetHdr {
			if gsoType != gsoNone {
				st.txDropped.Add(1) // cannot happen: no offload was offered
				return
			}
			buf = buf[p.hdrLen:]
		}
		var n int
		n, err = p.port.Send([][]byte{buf})
		sent = n == 1
	}
	if err != nil {
		if errors.Is(err, tap.ErrGone) {
			p.d.portGone(p.idx, err)
		}
		st.txDropped.Add(1)
		return
	}
	if !sent {
		st.txDropped.Add(1)
		return
	}
	st.txPackets.Add(1)
	st.txBytes.Add(frameLen)
	if gsoType&0x7f != gsoNone {
		st.txGSO.Add(1)
	}
}

func (p *pair) linearize(iovs [][]byte, n int) []byte {
	if cap(p.scratch) < n {
		p.scratch = make([]byte, n)
	}
	b := p.scratch[:0]
	for _, v := range iovs {
		b = append(b, v...)
	}
	return b
}

// peek copies len(out) bytes at off of the data scattered over iovs into out; false
// if the data is shorter.
func peek(iovs [][]byte, off int, out []byte) bool {
	got := 0
	for _, v := range iovs {
		if off >= len(v) {
			off -= len(v)
			continue
		}
		got += copy(out[got:], v[off:])
		off = 0
		if got == len(out) {
			return true
		}
	}
	return len(out) == 0
}

// poke writes b at off of the data scattered over iovs.
func poke(iovs [][]byte, off int, b []byte) {
	for _, v := range iovs {
		if len(b) == 0 {
			return
		}
		if off >= len(v) {
			off -= len(v)
			continue
		}
		k := copy(v[off:], b)
		b = b[k:]
		off = 0
	}
}

// serviceRX moves frames from the backend into guest buffers; it reports whether it
// stopped with frames possibly still pending (batch exhausted).
func (p *pair) serviceRX() bool {
	q := p.rx
	if q.Broken() != nil || p.d.gone[p.idx].Load() || !(p.rxReady || p.stashLen > 0 || p.alwaysRead) {
		return false
	}
	defer p.interrupt(q)
	for n := 0; n < batch; n++ {
		got, more := p.receiveOne()
		if !got {
			return more
		}
	}
	return true
}

// receiveOne delivers one frame. got: a frame was consumed (delivered or dropped);
// more: stopped for lack of guest buffers but they arrived meanwhile.
func (p *pair) receiveOne() (got, more bool) {
	q := p.rx
	// Gather chains: one without mergeable buffers, else enough for the largest frame.
	p.iovs = p.iovs[:0]
	nch := 0
	var room uint64
	full := false
	for {
		if nch == len(p.chains) {
			p.chains = append(p.chains, virtio.Chain{})
		}
		c := &p.chains[nch]
		ok, err := q.Pop(c)
		if err != nil {
			p.broken(q, err)
			return false, false
		}
		if !ok {
			break
		}
		nch++
		for _, b := range c.Writable() {
			if len(p.iovs) == maxIOV {
				full = true // readv takes no more: the rest of this chain stays empty
				break
			}
			p.iovs = append(p.iovs, b.Data)
			room += uint64(len(b.Data))
		}
		if full || !p.mrg || room >= uint64(p.maxFrame) {
			break
		}
		if len(p.iovs) >= maxIOV {
			full = true // as many buffers as one readv takes: use what we have
			break
		}
	}
	wait := func() (bool, bool) {
		// Wait for the guest to add buffers; ask for a kick once more arrive.
		if nch > 0 {
			q.Unpop(&p.chains[0])
		}
		p.st.rxNoBuffers.Add(1)
		return false, q.EnableNotifyAfter(nch) && q.Broken() == nil
	}
	if nch == 0 {
		return wait()
	}
	var n int
	var err error
	switch {
	case p.stashLen > 0:
		// A frame read earlier waits for enough buffers.
		if uint64(p.stashLen) > room && !full && !p.ringFull(nch) {
			return wait()
		}
		n = min(p.stashLen, int(room))
		poke(p.iovs, 0, p.stash[:n])
		p.stashLen = 0
	case !p.mrg || room >= uint64(p.maxFrame) || full || p.ringFull(nch):
		n, err = p.read(p.iovs, room) // straight into guest buffers
	default:
		// Too little room for the largest frame: read into the bounce buffer and copy
		// if this frame fits, else keep it until the guest adds buffers.
		if cap(p.stash) < p.maxFrame {
			p.stash = make([]byte, p.maxFrame)
		}
		n, err = p.read([][]byte{p.stash[:p.maxFrame]}, uint64(p.maxFrame))
		if err == nil && n > int(room) {
			p.stashLen = n
			return wait()
		}
		poke(p.iovs, 0, p.stash[:n])
	}
	if err != nil || n == 0 {
		q.Unpop(&p.chains[0])
		if n == 0 {
			p.rxReady = false // drained: wait for the next readiness edge
		}
		if err != nil {
			if errors.Is(err, tap.ErrGone) {
				p.d.portGone(p.idx, err)
			}
			p.st.rxDropped.Add(1)
		}
		return false, false
	}
	if n < p.hdrLen+14 {
		q.Unpop(&p.chains[0])
		p.st.rxDropped.Add(1)
		return true, false
	}
	var dst [6]byte
	if !peek(p.iovs, p.hdrLen, dst[:]) || !p.d.accept(dst) {
		q.Unpop(&p.chains[0])
		p.st.rxDropped.Add(1)
		return true, false
	}
	// Hand out the chains the frame filled, in order.
	left := uint64(n)
	used := 0
	for ; used < nch && left > 0; used++ {
		c := &p.chains[used]
		w := min(c.WriteLen, left)
		left -= w
		q.Push(c.Head, uint32(w))
	}
	if used < nch {
		q.Unpop(&p.chains[used])
	}
	if p.hdrLen == modernHdrLen {
		var nb [2]byte
		binary.LittleEndian.PutUint16(nb[:], uint16(used))
		poke(p.iovs, 10, nb[:])
	}
	var g [1]byte
	if peek(p.iovs, 1, g[:]) && g[0]&0x7f != gsoNone {
		p.st.rxGSO.Add(1)
	}
	p.st.rxPackets.Add(1)
	p.st.rxBytes.Add(uint64(n - p.hdrLen))
	return true, false
}

// ringFull reports whether the driver has made its whole ring available, so waiting
// for more buffers would wait forever.
func (p *pair) ringFull(popped int) bool {
	pending, _ := p.rx.Pending()
	return popped+pending >= int(p.rx.Size())
}

// read fetches one frame into iovs: straight from the backend with headers passed
// through, or via a copy with a zero header prepended.
func (p *pair) read(iovs [][]byte, room uint64) (int, error) {
	if p.vport != nil {
		return p.vport.Readv(iovs)
	}
	need := p.maxFrame
	if cap(p.scratch) < need {
		p.scratch = make([]byte, need)
	}
	buf := p.scratch[:need]
	hl := p.hdrLen
	if p.d.cfg.VnetHdr {
		hl = 0 // the port supplies the header
	}
	lens := []int{0}
	k, err := p.port.Recv([][]byte{buf[hl:]}, lens)
	if err != nil || k == 0 {
		return 0, err
	}
	for i := 0; i < hl; i++ {
		buf[i] = 0
	}
	total := min(hl+lens[0], int(room))
	poke(iovs, 0, buf[:total])
	return total, nil
}
