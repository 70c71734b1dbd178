package virtionet

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/notify"
)

// batch bounds the chains handled per queue before the worker looks at its other
// queue, so one busy direction cannot starve the other.
const batch = 256

// passRounds bounds the TX/RX rounds of one service pass. A pass that ends with work
// left signals the worker's own again eventfd and returns, so the worker looks at its
// stop event between passes: no guest can hold it, and a reset always stops it.
const passRounds = 4

// txFlushEvery bounds how many TX chains may wait in a batch before used.idx is
// published (see serviceTX); small rings flush every quarter ring.
const txFlushEvery = 32

// ctrlBatch bounds the control commands run per pass.
const ctrlBatch = 64

// RoomPort is a port with flow control (a netmap pipe Endpoint): when its Send takes
// nothing it is full, and RoomFD becomes readable once it may take more. The TX path
// then leaves the frame in the guest's ring and retries on that signal, instead of
// dropping it; the guest sees a paused link, not loss. RoomFD is watched edge-triggered
// and neither read nor closed by the device.
type RoomPort interface {
	RoomFD() int
}

// pair is one rx/tx queue pair and its worker.
//
// Concurrency: everything here belongs to the worker goroutine once started, and to
// the goroutine that called stop once the worker has ended.
type pair struct {
	d        *Device
	idx      int
	rx, tx   *virtio.QueueHandle
	ctrl     *virtio.QueueHandle
	port     backends.Port
	vport    VectorPort // nil: copy through Send/Recv
	roomy    bool       // the port is a RoomPort: keep TX frames it does not take
	hdrLen   int
	mrg      bool
	maxFrame int // largest frame (header included) the backend may hand us
	st       *pairCounters

	worker *notify.Worker
	again  *notify.EventFD // a pass ended with work left: come back after the stop check

	txChain, ctrlChain virtio.Chain
	iovs               [][]byte
	scratch            []byte

	// TX frames for a plain port (sendBatched), sent with one Send per txBatch:
	// their chains' heads in ring order, the frames to send (views of guest memory,
	// or of txBufs when a chain had to be linearized), one buffer per frame.
	txHeads  []uint16
	txFrames [][]byte
	txBufs   [][]byte

	// Receive buffers popped from the RX ring and not filled yet, in ring order. They
	// are kept rather than given back to the ring, so nothing is popped twice (a
	// malformed chain skipped behind them is returned to the guest exactly once).
	held      []virtio.Chain
	nheld     int
	heldRoom  int // writable bytes in held
	heldBufs  int // writable buffers in held
	heldDescs int // ring descriptors held
	spare     virtio.Chain
	iovRoom   []int // per gathered chain: its bytes in iovs

	stash    []byte // a received frame waiting for guest buffers
	stashLen int

	// rxReady: the port signalled readability and has not returned "nothing
	// pending" since, so a receive attempt is worth a syscall. The port's fd is
	// watched edge-triggered, so it stays set when RX stops for lack of guest
	// buffers: the RX queue's kick then resumes draining.
	rxReady    bool
	readySrc   int    // the worker's source index of the port fd; -1: none
	roomSrc    int    // ... of the port's RoomFD; -1: none
	rxSrcs     [2]int // ... of the RX queue's kicks: [first, end)
	txSrcs     [2]int // ... of the TX queue's kicks: [first, end)
	alwaysRead bool
	// txBlocked: a RoomPort took nothing; TX waits for its RoomFD.
	txBlocked bool
	progress  uint64 // chains and frames handled, for poll's answer
}

func newPair(d *Device, i int, rx, tx *virtio.QueueHandle, features uint64, hl int) *pair {
	p := &pair{d: d, idx: i, rx: rx, tx: tx, port: d.cfg.Ports[i], hdrLen: hl, st: &d.stats[i], readySrc: -1, roomSrc: -1}
	p.mrg = features&FMrgRxbuf != 0
	if vp, ok := p.port.(VectorPort); ok && d.cfg.VnetHdr {
		p.vport = vp
	}
	if rp, ok := p.port.(RoomPort); ok && rp.RoomFD() >= 0 {
		p.roomy = true
	}
	frame := d.mtu + 14 + 4
	if features&(FGuestTSO4|FGuestTSO6|FGuestUFO) != 0 {
		frame = maxGSOFrame
	}
	p.maxFrame = hl + frame
	return p
}

func (p *pair) start() (err error) {
	if p.again, err = notify.NewEventFD(); err != nil {
		return err
	}
	p.worker, err = notify.NewWorker(notify.Config{
		Name: fmt.Sprintf("virtionet-%d", p.idx),
		Mode: p.d.cfg.Mode,
		Spin: p.d.cfg.Spin,
		// Look at everything once: the driver may have filled the queues before its
		// kicks were bound, and frames may be waiting on the port already.
		Init: p.first,
		Handler: func(src int, kicks uint64) {
			switch {
			case src == p.readySrc:
				p.rxReady = true
			case src == p.roomSrc:
				p.txBlocked = false
			case src >= p.rxSrcs[0] && src < p.rxSrcs[1]:
				p.st.rxKicks.Add(kicks)
			case src >= p.txSrcs[0] && src < p.txSrcs[1]:
				p.st.txKicks.Add(kicks)
			}
			p.pass()
		},
		Poll:   p.poll,
		Arm:    p.arm,
		Disarm: p.disarm,
	})
	if err != nil {
		p.again.Close()
		return err
	}
	fail := func(err error) error {
		p.worker.Stop()
		p.again.Close()
		return err
	}
	srcs := append([]*notify.EventFD(nil), p.rx.Kicks...)
	srcs = append(srcs, p.tx.Kicks...)
	if p.ctrl != nil {
		srcs = append(srcs, p.ctrl.Kicks...)
	}
	srcs = append(srcs, p.again)
	first := 0
	for i, s := range srcs {
		idx, err := p.worker.Add(s)
		if err != nil {
			return fail(err)
		}
		if i == 0 {
			first = idx
		}
	}
	// The queues' kick sources, for the kick counters: the worker numbers sources
	// in the order they were added, RX's kicks first, then TX's.
	nrx, ntx := len(p.rx.Kicks), len(p.tx.Kicks)
	p.rxSrcs = [2]int{first, first + nrx}
	p.txSrcs = [2]int{first + nrx, first + nrx + ntx}
	// The worker waits on the port itself; without a readiness fd the port must be
	// polled on every wakeup.
	p.alwaysRead = p.port.ReadyFD() < 0
	if fd := p.port.ReadyFD(); fd >= 0 {
		if p.readySrc, err = p.worker.AddFD(fd); err != nil {
			return fail(fmt.Errorf("virtionet: port %s: %w", p.port.Name(), err))
		}
	}
	if p.roomy {
		if p.roomSrc, err = p.worker.AddFD(p.port.(RoomPort).RoomFD()); err != nil {
			return fail(fmt.Errorf("virtionet: port %s room: %w", p.port.Name(), err))
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
	p.pass()
}

// stop ends the worker (it returns within one bounded pass) and counts a frame still
// waiting for guest buffers as dropped: the reset discards it.
func (p *pair) stop() {
	p.worker.Stop()
	p.again.Close()
	if p.stashLen > 0 {
		p.st.rxDropped.Add(1)
		p.stashLen = 0
	}
}

// pass runs after every wakeup: the control queue, then both directions in turns
// until neither has work left or passRounds rounds ran. Work left over is not lost:
// the again eventfd brings the worker back once it has looked at its stop event.
func (p *pair) pass() {
	more := p.ctrl != nil && p.serviceCtrl()
	for i := 0; ; i++ {
		tx := p.serviceTX()
		rx := p.serviceRX()
		if !tx && !rx {
			break
		}
		if i+1 == passRounds {
			more = true
			break
		}
	}
	if more {
		_ = p.again.Signal()
	}
}

// poll is the Poll/Adaptive hook: process without a kick; it reports whether anything
// was handled.
func (p *pair) poll() bool {
	p.rxReady = true
	before := p.progress
	p.pass()
	return p.progress != before
}

func (p *pair) arm() bool {
	a := p.tx.EnableNotify() && !p.txBlocked // a full port: wait for its RoomFD, not spin
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

// serviceTX sends up to a batch of chains; it reports whether it must run again
// without a wakeup.
func (p *pair) serviceTX() bool {
	q := p.tx
	if q.Broken() != nil || p.txBlocked {
		return false
	}
	// Publish used entries now and then within the batch: a driver that reclaims
	// TX buffers from the used ring (Linux does in start_xmit) gets them back
	// before the whole batch is sent, so it need not stop and kick again. The
	// interrupt decision stays once per batch.
	every := min(txFlushEvery, max(1, int(q.Size())/4))
	n := 0
	if p.sendBatched() {
		more := q.Drain(&p.txChain, batch, func(c *virtio.Chain) virtio.Verdict {
			p.queueChain(c)
			if len(p.txHeads) == txBatch {
				p.flushTX(q, &n, every)
			}
			return virtio.Next
		})
		p.flushTX(q, &n, every)
		p.progress += uint64(n)
		if err := q.Broken(); err != nil {
			p.broken(q, err)
		}
		p.interrupt(q)
		return more
	}
	more := q.Drain(&p.txChain, batch, func(c *virtio.Chain) virtio.Verdict {
		if !p.sendChain(c) {
			p.txBlocked = true // stays first in the ring until the port has room
			return virtio.Refuse
		}
		q.Push(c.Head, 0)
		if n++; n%every == 0 {
			q.Flush()
		}
		return virtio.Next
	})
	p.progress += uint64(n)
	if err := q.Broken(); err != nil {
		p.broken(q, err)
	}
	p.interrupt(q)
	return more && !p.txBlocked
}

// sendChain hands one TX chain's frame to the backend. It returns false when a
// RoomPort took nothing: the chain is not consumed. Otherwise the frame was sent or
// dropped (counted).
func (p *pair) sendChain(c *virtio.Chain) bool {
	st := p.st
	if c.ReadLen < uint64(p.hdrLen)+14 || c.ReadLen > uint64(p.hdrLen+maxGSOFrame) || p.d.gone[p.idx].Load() {
		st.txDropped.Add(1)
		return true
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
				return true
			}
			buf = buf[p.hdrLen:]
		}
		var n int
		n, err = p.port.Send([][]byte{buf})
		sent = n == 1
	}
	if err != nil {
		if errors.Is(err, backends.ErrGone) {
			p.d.portGone(p.idx, err)
		}
		st.txDropped.Add(1)
		return true
	}
	if !sent {
		if p.roomy {
			return false
		}
		st.txDropped.Add(1)
		return true
	}
	st.txPackets.Add(1)
	st.txBytes.Add(frameLen)
	if gsoType&0x7f != gsoNone {
		st.txGSO.Add(1)
	}
	return true
}

// txBatch is the most frames one Send to a plain port carries: a switch port then
// forwards them in one pass (one lock, one lease) instead of one pass a frame.
const txBatch = 64

// sendBatched says TX frames go to the port in batches: plain Ethernet (no header
// for the port, no vectored writes) to a port without flow control, which takes or
// drops each frame at once, so a chain never has to stay in the ring.
func (p *pair) sendBatched() bool { return p.vport == nil && !p.roomy && !p.d.cfg.VnetHdr }

// queueChain takes one TX chain for flushTX: its frame (a view of guest memory when
// the chain is one buffer, else a copy), or none when it is dropped (counted).
func (p *pair) queueChain(c *virtio.Chain) {
	p.txHeads = append(p.txHeads, c.Head)
	hl := uint64(p.hdrLen)
	if c.ReadLen < hl+14 || c.ReadLen > hl+maxGSOFrame || p.d.gone[p.idx].Load() {
		p.st.txDropped.Add(1)
		return
	}
	rd := c.Readable()
	var h [1]byte
	if len(rd) == 1 {
		if len(rd[0].Data) < int(c.ReadLen) {
			p.st.txDropped.Add(1)
			return
		}
		h[0] = rd[0].Data[1]
		if h[0] != gsoNone {
			p.st.txDropped.Add(1) // cannot happen: no offload was offered
			return
		}
		p.txFrames = append(p.txFrames, rd[0].Data[hl:c.ReadLen:c.ReadLen])
		return
	}
	p.iovs = p.iovs[:0]
	for _, b := range rd {
		p.iovs = append(p.iovs, b.Data)
	}
	peek(p.iovs, 1, h[:])
	if h[0] != gsoNone {
		p.st.txDropped.Add(1)
		return
	}
	// One buffer per batch position, grown to the largest frame copied there.
	i := len(p.txFrames)
	for len(p.txBufs) <= i {
		p.txBufs = append(p.txBufs, nil)
	}
	b := p.txBufs[i][:0]
	for _, v := range p.iovs {
		b = append(b, v...)
	}
	p.txBufs[i] = b
	p.txFrames = append(p.txFrames, b[hl:])
}

// flushTX sends the queued frames and returns every queued chain to the guest,
// publishing used entries every `every` chains.
func (p *pair) flushTX(q *virtio.QueueHandle, n *int, every int) {
	if len(p.txHeads) == 0 {
		return
	}
	p.sendTX()
	for _, h := range p.txHeads {
		q.Push(h, 0)
		if *n++; *n%every == 0 {
			q.Flush()
		}
	}
	p.txHeads = p.txHeads[:0]
}

// sendTX hands the queued frames to the port with one Send and counts them: what
// it did not take is dropped.
func (p *pair) sendTX() {
	if len(p.txFrames) == 0 {
		return
	}
	st := p.st
	sent, err := p.port.Send(p.txFrames)
	sent = min(max(sent, 0), len(p.txFrames))
	if err != nil && errors.Is(err, backends.ErrGone) {
		p.d.portGone(p.idx, err)
	}
	var bytes uint64
	for _, f := range p.txFrames[:sent] {
		bytes += uint64(len(f))
	}
	st.txPackets.Add(uint64(sent))
	st.txBytes.Add(bytes)
	if sent < len(p.txFrames) {
		st.txDropped.Add(uint64(len(p.txFrames) - sent))
	}
	clear(p.txFrames) // no view of guest memory outlives the batch
	p.txFrames = p.txFrames[:0]
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

// rxStep is what one receive attempt ended with.
type rxStep int

const (
	rxTook  rxStep = iota // a frame was taken from the backend: delivered or dropped (counted)
	rxIdle                // nothing to do until a wakeup: backend drained, or no guest buffers (notifications armed)
	rxAgain               // stopped with work left and no wakeup coming: call again
)

// serviceRX moves up to a batch of frames from the backend into guest buffers; it
// reports whether it must run again without a wakeup.
func (p *pair) serviceRX() bool {
	q := p.rx
	if q.Broken() != nil || p.d.gone[p.idx].Load() || !(p.rxReady || p.stashLen > 0 || p.alwaysRead) {
		return false
	}
	defer p.interrupt(q)
	for n := 0; n < batch; n++ {
		switch p.receiveOne() {
		case rxIdle:
			return false
		case rxAgain:
			return true
		}
	}
	return true
}

// enough reports whether the held buffers take the largest frame: one chain without
// mergeable buffers, else room for maxFrame or as many buffers as one readv takes.
func (p *pair) enough() bool {
	if !p.mrg {
		return p.nheld > 0
	}
	return p.heldRoom >= p.maxFrame || p.heldBufs >= maxIOV
}

// topUp pops RX chains into held until enough (Drain: bounded, re-arms when the ring
// runs dry). It reports Drain's more.
func (p *pair) topUp() bool {
	if p.enough() {
		return false
	}
	q := p.rx
	return q.Drain(&p.spare, int(q.Size()), func(c *virtio.Chain) virtio.Verdict {
		if c.WriteLen == 0 || (!p.mrg && c.WriteLen < uint64(p.hdrLen+14)) {
			// No room for any frame: hand it back unused now rather than take a
			// frame from the backend for it.
			q.Push(c.Head, 0)
			p.st.rxBadBuffers.Add(1)
			return virtio.Next
		}
		if p.nheld == len(p.held) {
			p.held = append(p.held, virtio.Chain{})
		}
		// Swap, so the spare gets the held slot's buffer list to reuse.
		p.held[p.nheld], *c = *c, p.held[p.nheld]
		p.account(&p.held[p.nheld], 1)
		p.nheld++
		if p.enough() {
			return virtio.Stop
		}
		return virtio.Next
	})
}

// account adds (sign 1) or removes (-1) a held chain's room, buffers and descriptors.
func (p *pair) account(c *virtio.Chain, sign int) {
	p.heldRoom += sign * int(c.WriteLen)
	p.heldBufs += sign * (len(c.Bufs) - c.NRead)
	p.heldDescs += sign * c.Descs
}

// release drops the first k held chains (their used entries are pushed).
func (p *pair) release(k int) {
	for i := 0; i < k; i++ {
		p.account(&p.held[i], -1)
	}
	for i := k; i < p.nheld; i++ {
		p.held[i-k], p.held[i] = p.held[i], p.held[i-k]
	}
	p.nheld -= k
}

// gather lists the held chains' writable buffers in p.iovs (one chain without
// mergeable buffers; at most maxIOV buffers) and returns their room and whether the
// list is as long as one readv takes.
func (p *pair) gather() (room int, full bool) {
	p.iovs, p.iovRoom = p.iovs[:0], p.iovRoom[:0]
	for i := 0; i < p.nheld && !full; i++ {
		r := 0
		for _, b := range p.held[i].Writable() {
			if len(p.iovs) == maxIOV {
				full = true // readv takes no more: the rest of this chain stays empty
				break
			}
			p.iovs = append(p.iovs, b.Data)
			r += len(b.Data)
		}
		p.iovRoom = append(p.iovRoom, r)
		room += r
		if !p.mrg {
			break
		}
	}
	return room, full || len(p.iovs) == maxIOV
}

// receiveOne moves one frame from the backend to the guest. Every frame it takes
// from the backend is delivered, counted as dropped, or kept in the stash (counted as
// dropped if a reset discards it).
func (p *pair) receiveOne() rxStep {
	q := p.rx
	more := p.topUp()
	if err := q.Broken(); err != nil {
		p.broken(q, err)
		return rxIdle
	}
	wait := func() rxStep {
		// Out of guest buffers: the next RX kick resumes (Drain re-armed), unless it
		// stopped early; then come back without one.
		p.st.rxNoBuffers.Add(1)
		if more {
			return rxAgain
		}
		return rxIdle
	}
	if p.nheld == 0 {
		return wait()
	}
	room, full := p.gather()
	// With mergeable buffers a frame may wait for more, unless no more can come.
	canWait := p.mrg && !full && !p.ringFull()
	var n int
	var took bool
	var err error
	switch {
	case p.stashLen > 0:
		// A frame read earlier waits for enough buffers.
		if p.stashLen > room && canWait {
			return wait()
		}
		n, took = min(p.stashLen, room), true
		poke(p.iovs, 0, p.stash[:n])
		p.stashLen = 0
	case !canWait || room >= p.maxFrame:
		n, took, err = p.read(p.iovs, room) // straight into guest buffers
	default:
		// Too little room for the largest frame: read into the bounce buffer and copy
		// if this frame fits, else keep it until the guest adds buffers.
		if cap(p.stash) < p.maxFrame {
			p.stash = make([]byte, p.maxFrame)
		}
		n, took, err = p.read([][]byte{p.stash[:p.maxFrame]}, p.maxFrame)
		if err == nil && took && n > room {
			p.stashLen = n
			p.progress++
			return wait()
		}
		if took {
			poke(p.iovs, 0, p.stash[:n])
		}
	}
	if err != nil {
		if errors.Is(err, backends.ErrGone) {
			p.d.portGone(p.idx, err)
		}
		p.st.rxDropped.Add(1)
		return rxIdle
	}
	if !took {
		p.rxReady = false // drained: wait for the next readiness edge
		return rxIdle
	}
	p.progress++
	var dst [6]byte
	if n < p.hdrLen+14 || !peek(p.iovs, p.hdrLen, dst[:]) || !p.d.accept(dst) {
		p.st.rxDropped.Add(1) // the buffers stay held for the next frame
		return rxTook
	}
	// Hand out the chains the frame filled, in order.
	left := n
	used := 0
	for ; used < len(p.iovRoom) && left > 0; used++ {
		w := min(p.iovRoom[used], left)
		left -= w
		q.Push(p.held[used].Head, uint32(w))
	}
	if p.hdrLen == modernHdrLen {
		var nb [2]byte
		binary.LittleEndian.PutUint16(nb[:], uint16(used))
		poke(p.iovs, 10, nb[:])
	}
	p.release(used)
	var g [1]byte
	if peek(p.iovs, 1, g[:]) && g[0]&0x7f != gsoNone {
		p.st.rxGSO.Add(1)
	}
	p.st.rxPackets.Add(1)
	p.st.rxBytes.Add(uint64(n - p.hdrLen))
	return rxTook
}

// ringFull reports whether the driver has made its whole ring available, so waiting
// for more buffers would wait forever.
func (p *pair) ringFull() bool {
	pending, _ := p.rx.Pending()
	return p.heldDescs+pending >= int(p.rx.Size())
}

// read takes one frame from the backend into iovs, straight with headers passed
// through, or via a copy with a zero header prepended and cut to room. took says
// whether a frame was taken at all (one cut to nothing still counts).
func (p *pair) read(iovs [][]byte, room int) (n int, took bool, err error) {
	if p.vport != nil {
		n, err = p.vport.Readv(iovs)
		return n, n > 0, err
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
		return 0, false, err
	}
	clear(buf[:hl])
	total := min(hl+min(max(lens[0], 0), need-hl), room)
	poke(iovs, 0, buf[:total])
	return total, true, nil
}
