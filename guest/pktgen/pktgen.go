package pktgen

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// Mode is what a run does.
type Mode int

const (
	ModeTx   Mode = iota // send frames
	ModeRx               // receive and count frames
	ModePing             // send one frame, wait for its echo, measure the round trip
	ModePong             // echo ping frames back
)

var modeNames = []string{"tx", "rx", "ping", "pong"}

func (m Mode) String() string {
	if m >= 0 && int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// ParseMode reads tx, rx, ping or pong.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if s == n {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("pktgen: mode %q: want tx, rx, ping or pong", s)
}

// Ring is a netmap ring driven through a sync/wait protocol:
// *netmap.DriverRing (a ptnet guest, or a host port over its CSB) is one.
type Ring interface {
	Ring() *netmap.Ring
	Sync(flags netmap.SyncFlags) error
	Wait(timeout time.Duration) (bool, error)
	Stats() netmap.DriverRingStats
}

// Config describes one run. Zero values take the defaults.
type Config struct {
	Mode Mode
	// Tx sends (tx, ping, pong); Rx receives (rx, ping, pong).
	Tx, Rx Ring
	// FrameSize is the Ethernet frame size without FCS (default 60, at least
	// 60, at most the ring's buffer size less HdrLen).
	FrameSize int
	// HdrLen is the virtio-net header in front of every frame (0 or 12).
	HdrLen int
	// Batch is the most frames handed over per sync (default 256).
	Batch int
	// Count ends the run after that many frames (round trips for ping);
	// Duration after that long. Zero: no limit (the context ends the run).
	Count    uint64
	Duration time.Duration
	// Rate limits frames (ping: round trips) per second; 0: no limit.
	Rate float64
	// Src and Dst are the MAC addresses (defaults DefaultSrc, Broadcast).
	// Pong answers to the ping's source whatever Dst says.
	Src, Dst [6]byte
	// RoundTimeout is how long ping waits for one echo (default 1s).
	RoundTimeout time.Duration
	// Idle ends an rx or pong run after that long without a frame, once a
	// frame came (0: no limit).
	Idle time.Duration
	// Ack (rx), when set, is a TX ring on which rx tells the sender how far it
	// got, so that a sender keeping a window in flight measures the path's rate,
	// not its losses: a KindAck frame to Dst whose sequence number is the next
	// one rx expects (frames lost on the way are behind it) and whose stamp is
	// the frames received, sent when AckEvery frames (default 64) came since the
	// last one and when rx is about to wait. Its counters are not the run's.
	Ack      Ring
	AckEvery int
	// Drain is how long tx waits at the end for the host to take the frames
	// still in the ring (default 2s).
	Drain time.Duration
	// Irqs, when set, is the interrupt counter to report (a ptnet's MSI-X
	// counts); otherwise the rings' Stats().Interrupts.
	Irqs func() uint64
	// Prefill (tx) writes each TX buffer once, the first time a slot carries it,
	// and then only the slot's length, as netmap's pkt-gen does by default: no
	// per-frame copy, and every frame carries sequence 0 and the run's start time.
	// A slot whose buffer changed since (a pipe swaps buffers) is written again.
	Prefill bool
}

// errStop ends a consume early when the run ends.
var errStop = errors.New("pktgen: run ended")

const (
	defaultBatch = 256
	defaultAck   = 64
	waitSlice    = 50 * time.Millisecond
)

func (c Config) normalize() (Config, error) {
	if c.FrameSize == 0 {
		c.FrameSize = MinFrameSize
	}
	if c.Batch <= 0 {
		c.Batch = defaultBatch
	}
	if c.Src == ([6]byte{}) {
		c.Src = DefaultSrc
	}
	if c.Dst == ([6]byte{}) {
		c.Dst = Broadcast
	}
	if c.RoundTimeout <= 0 {
		c.RoundTimeout = time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 2 * time.Second
	}
	if c.AckEvery <= 0 {
		c.AckEvery = defaultAck
	}
	switch {
	case c.Mode < ModeTx || c.Mode > ModePong:
		return c, fmt.Errorf("pktgen: unknown %v", c.Mode)
	case c.Mode != ModeRx && c.Tx == nil:
		return c, fmt.Errorf("pktgen: %v needs a TX ring", c.Mode)
	case c.Mode != ModeTx && c.Rx == nil:
		return c, fmt.Errorf("pktgen: %v needs an RX ring", c.Mode)
	case c.FrameSize < MinFrameSize || c.FrameSize > MaxFrameSize:
		return c, fmt.Errorf("pktgen: frame size %d outside %d..%d", c.FrameSize, MinFrameSize, MaxFrameSize)
	case c.HdrLen != 0 && c.HdrLen != 12:
		return c, fmt.Errorf("pktgen: virtio-net header of %d bytes: want 0 or 12", c.HdrLen)
	case c.Ack != nil && c.Mode != ModeRx:
		return c, fmt.Errorf("pktgen: %v sends no acks (rx does)", c.Mode)
	case c.Ack != nil && c.HdrLen+MinFrameSize > int(c.Ack.Ring().BufSize()):
		return c, fmt.Errorf("pktgen: an ack (%d B + %d B header) does not fit a %d-B buffer", MinFrameSize, c.HdrLen, c.Ack.Ring().BufSize())
	case c.Rate < 0:
		return c, fmt.Errorf("pktgen: rate %v below 0", c.Rate)
	}
	if c.Tx != nil {
		if bs := int(c.Tx.Ring().BufSize()); c.HdrLen+c.FrameSize > bs {
			return c, fmt.Errorf("pktgen: frame of %d B (+%d B header) does not fit a %d-B buffer", c.FrameSize, c.HdrLen, bs)
		}
	}
	return c, nil
}

// gen is one run's state.
type gen struct {
	c        Config
	ctx      context.Context
	start    time.Time
	deadline time.Time // zero: none
	tmpl     []byte
	res      Result
	lat      latencies
	seq      seqTracker
	ackTmpl  []byte   // rx with Ack: the ack frame
	acked    uint64   // rx with Ack: the sequence number the last ack said
	filled   []uint32 // Prefill: per TX slot, the buffer index written + 1
}

// Run runs cfg until its Count, Duration or ctx ends it and returns what it
// measured. A canceled ctx is a normal end, not an error. The rings are used
// only by this goroutine for the run.
func Run(ctx context.Context, cfg Config) (Result, error) {
	c, err := cfg.normalize()
	if err != nil {
		return Result{}, err
	}
	g := &gen{c: c, ctx: ctx, res: Result{Mode: c.Mode}}
	kind := KindData
	if c.Mode == ModePing {
		kind = KindPing
	}
	g.tmpl = Template(c.FrameSize, c.HdrLen, c.Dst, c.Src, kind)
	if c.Ack != nil {
		g.ackTmpl = Template(MinFrameSize, c.HdrLen, c.Dst, c.Src, KindAck)
	}
	before := g.counters()
	g.start = time.Now()
	if c.Duration > 0 {
		g.deadline = g.start.Add(c.Duration)
	}
	switch c.Mode {
	case ModeTx:
		err = g.tx()
	case ModeRx:
		err = g.rx()
	case ModePing:
		err = g.ping()
	case ModePong:
		err = g.pong()
	}
	after := g.counters()
	g.res.Kicks = after.Kicks - before.Kicks
	g.res.Syncs = after.Syncs - before.Syncs
	g.res.Waits = after.Waits - before.Waits
	g.res.Irqs = after.Interrupts - before.Interrupts
	if c.Mode == ModeRx {
		g.res.Lost, g.res.OOO = g.seq.lost, g.seq.ooo
	}
	if c.Mode == ModePing {
		g.res.Latency = g.lat.summary()
	}
	return g.res, err
}

// counters sums the stats of the rings in use; Interrupts from Config.Irqs
// when set.
func (g *gen) counters() netmap.DriverRingStats {
	var s netmap.DriverRingStats
	for _, r := range []Ring{g.c.Tx, g.c.Rx} {
		if r == nil {
			continue
		}
		t := r.Stats()
		s.Kicks += t.Kicks
		s.Syncs += t.Syncs
		s.Waits += t.Waits
		s.Interrupts += t.Interrupts
	}
	if g.c.Irqs != nil {
		s.Interrupts = g.c.Irqs()
	}
	return s
}

// stopped says the run must end: context or duration.
func (g *gen) stopped(now time.Time) bool {
	return g.ctx.Err() != nil || (!g.deadline.IsZero() && !now.Before(g.deadline))
}

// slice is how long one wait may block: short enough to notice the end.
func (g *gen) slice(now time.Time) time.Duration {
	d := waitSlice
	if !g.deadline.IsZero() {
		d = min(d, max(g.deadline.Sub(now), time.Millisecond))
	}
	return d
}

// remaining is how many frames Count still allows (max when unlimited).
func (g *gen) remaining(done uint64) uint64 {
	if g.c.Count == 0 {
		return ^uint64(0)
	}
	if done >= g.c.Count {
		return 0
	}
	return g.c.Count - done
}

// pace holds back to Rate: how many frames may go now (at least 1 after
// sleeping), or 0 when the run ended while sleeping.
func (g *gen) pace(sent uint64, want uint32) uint32 {
	if g.c.Rate <= 0 {
		return want
	}
	for {
		now := time.Now()
		allowed := uint64(now.Sub(g.start).Seconds()*g.c.Rate) + 1
		if allowed > sent {
			return uint32(min(uint64(want), allowed-sent))
		}
		due := g.start.Add(time.Duration(float64(sent) / g.c.Rate * float64(time.Second)))
		if g.stopped(now) {
			return 0
		}
		t := time.NewTimer(min(due.Sub(now), g.slice(now)))
		select {
		case <-g.ctx.Done():
			t.Stop()
			return 0
		case <-t.C:
		}
	}
}

// txSpace waits until r has a free slot; false when the run ended first.
func (g *gen) txSpace(r Ring) (bool, error) {
	for {
		if r.Ring().Space() > 0 {
			return true, nil
		}
		now := time.Now()
		if g.stopped(now) {
			return false, nil
		}
		if _, err := r.Wait(g.slice(now)); err != nil {
			return false, err
		}
	}
}

// fill writes n frames from the ring's head and advances head and cur.
func (g *gen) fill(r *netmap.Ring, n uint32, seq *uint64) error {
	head := r.Head()
	stamp := uint64(time.Since(g.start))
	for range n {
		s := r.Slot(head)
		buf := r.Buf(s.BufIdx)
		if len(buf) < len(g.tmpl) {
			return fmt.Errorf("pktgen: tx slot %d: buffer %d is outside the memory", head, s.BufIdx)
		}
		if g.c.Prefill && g.c.Mode == ModeTx {
			if g.filled == nil || len(g.filled) != int(r.NumSlots()) {
				g.filled = make([]uint32, r.NumSlots())
			}
			if g.filled[head] != s.BufIdx+1 {
				copy(buf, g.tmpl)
				Stamp(buf[g.c.HdrLen:], 0, 0)
				g.filled[head] = s.BufIdx + 1
			}
		} else {
			copy(buf, g.tmpl)
			Stamp(buf[g.c.HdrLen:], *seq, stamp)
		}
		*seq++
		// Only a changed slot is stored: the host reading an unchanged slot line
		// finds it still shared, instead of fetching it from this core every lap.
		if s.Len != uint16(len(g.tmpl)) || s.Flags != 0 {
			s.Len, s.Flags = uint16(len(g.tmpl)), 0
			r.SetSlot(head, s)
		}
		head = r.Next(head)
	}
	r.SetHeadCur(head, head)
	return nil
}

func (g *gen) tx() error {
	t, r := g.c.Tx, g.c.Tx.Ring()
	var seq uint64
	for g.remaining(g.res.Frames) > 0 {
		// Checked every batch: a ring that never fills would never reach the
		// check in txSpace.
		if g.stopped(time.Now()) {
			break
		}
		ok, err := g.txSpace(t)
		if err != nil || !ok {
			return g.drain(err)
		}
		n := uint32(min(uint64(r.Space()), uint64(g.c.Batch), g.remaining(g.res.Frames)))
		if n = g.pace(g.res.Frames, n); n == 0 {
			break
		}
		if err := g.fill(r, n, &seq); err != nil {
			return g.drain(err)
		}
		if err := t.Sync(0); err != nil {
			return g.drain(err)
		}
		g.res.Frames += uint64(n)
		g.res.Bytes += uint64(n) * uint64(g.c.FrameSize)
	}
	return g.drain(nil)
}

// drain waits until the host took every frame in the TX ring (or Drain
// passes): frames still in the ring when the device is closed are lost.
// There is no interrupt for "ring empty", so it syncs with backing-off sleeps.
func (g *gen) drain(err error) error {
	t, r := g.c.Tx, g.c.Tx.Ring()
	end := time.Now().Add(g.c.Drain)
	pause := 20 * time.Microsecond
	for err == nil {
		if err = t.Sync(netmap.ForceReclaim); err != nil || !r.TxPending() {
			break
		}
		if time.Now().After(end) {
			err = fmt.Errorf("pktgen: %d frames still in the TX ring after %v", r.NumSlots()-1-r.Space(), g.c.Drain)
			break
		}
		time.Sleep(pause)
		pause = min(2*pause, 5*time.Millisecond)
	}
	g.res.Elapsed = time.Since(g.start)
	return err
}

// rxFrames waits for frames in r; false when the run ended first.
func (g *gen) rxFrames(r Ring, last time.Time) (bool, error) {
	for {
		if !r.Ring().Empty() {
			return true, nil
		}
		now := time.Now()
		if g.stopped(now) || (g.c.Idle > 0 && !last.IsZero() && now.Sub(last) >= g.c.Idle) {
			return false, nil
		}
		if _, err := r.Wait(g.slice(now)); err != nil {
			return false, err
		}
	}
}

// frame is one received frame: its first slot's bytes (from the Ethernet
// header) and its total length.
type frame struct {
	eth   []byte
	bytes uint64
	bad   bool
}

// consume reads up to max slots from the RX ring's head, calls fn for each
// complete frame, and releases them (head = cur past them). A frame whose
// NS_MOREFRAG chain is not finished yet stays for the next call.
func (g *gen) consume(r *netmap.Ring, limit uint32, fn func(f frame) error) error {
	head, tail := r.Head(), r.Tail()
	avail := r.Space()
	n := min(avail, limit)
	pos := head
	done := head
	var f frame
	first := true
	for i := uint32(0); i < avail; i++ {
		if i >= n && first {
			break
		}
		s := r.Slot(pos)
		buf := r.Buf(s.BufIdx)
		ln := int(s.Len)
		if first {
			f = frame{}
			switch {
			case buf == nil || ln > len(buf) || ln < g.c.HdrLen:
				f.bad = true
			default:
				f.eth = buf[g.c.HdrLen:ln]
				f.bytes = uint64(ln - g.c.HdrLen)
			}
		} else if buf != nil && ln <= len(buf) {
			f.bytes += uint64(ln)
		}
		pos = r.Next(pos)
		if s.Flags&netmap.NSMoreFrag != 0 && pos != tail {
			first = false
			continue
		}
		if err := fn(f); err != nil {
			r.SetHeadCur(pos, pos)
			return err
		}
		first, done = true, pos
	}
	r.SetHeadCur(done, done)
	return nil
}

func (g *gen) rx() error {
	t := g.c.Rx
	var first, last time.Time
	defer func() {
		if !first.IsZero() {
			g.res.Elapsed = last.Sub(first)
		}
	}()
	for g.remaining(g.res.Frames) > 0 {
		if g.c.Ack != nil && t.Ring().Empty() {
			// About to wait: a sender with its window full waits too.
			if err := g.ack(); err != nil {
				return err
			}
		}
		ok, err := g.rxFrames(t, last)
		if err != nil || !ok {
			return err
		}
		limit := uint32(min(uint64(g.c.Batch), g.remaining(g.res.Frames)))
		err = g.consume(t.Ring(), limit, func(f frame) error {
			g.res.Frames++
			g.res.Bytes += f.bytes
			h, err := Parse(f.eth)
			if f.bad || err != nil || h.Kind != KindData {
				g.res.Bad++
				return nil
			}
			g.seq.see(h.Seq)
			return nil
		})
		if err != nil {
			return err
		}
		last = time.Now()
		if first.IsZero() {
			first = last
		}
		if err := t.Sync(0); err != nil {
			return err
		}
		// After the release: the slots are free by the time the sender knows.
		if g.c.Ack != nil && g.seq.next-min(g.acked, g.seq.next) >= uint64(g.c.AckEvery) {
			if err := g.ack(); err != nil {
				return err
			}
		}
	}
	return nil
}

// ack tells the sender how far rx got (Config.Ack), when that moved since the
// last ack. A full ring is synced once; if it is still full the ack waits for
// the next call (the sender's window is bounded by its timeout then).
func (g *gen) ack() error {
	if g.seq.next == g.acked {
		return nil
	}
	t, r := g.c.Ack, g.c.Ack.Ring()
	if r.Space() == 0 {
		if err := t.Sync(0); err != nil || r.Space() == 0 {
			return err
		}
	}
	head := r.Head()
	s := r.Slot(head)
	buf := r.Buf(s.BufIdx)
	if len(buf) < len(g.ackTmpl) {
		return fmt.Errorf("pktgen: ack slot %d: buffer %d is outside the memory", head, s.BufIdx)
	}
	copy(buf, g.ackTmpl)
	Stamp(buf[g.c.HdrLen:], g.seq.next, g.res.Frames)
	s.Len, s.Flags = uint16(len(g.ackTmpl)), 0
	r.SetSlot(head, s)
	next := r.Next(head)
	r.SetHeadCur(next, next)
	g.acked = g.seq.next
	g.res.Acks++
	return t.Sync(0)
}

func (g *gen) ping() error {
	tx, rx := g.c.Tx, g.c.Rx
	defer func() { g.res.Elapsed = time.Since(g.start) }()
	var seq uint64
	for g.remaining(seq) > 0 {
		if g.pace(seq, 1) == 0 {
			return nil
		}
		ok, err := g.txSpace(tx)
		if err != nil || !ok {
			return err
		}
		want := seq
		if err := g.fill(tx.Ring(), 1, &seq); err != nil {
			return err
		}
		t0 := time.Now()
		if err := tx.Sync(0); err != nil {
			return err
		}
		g.res.Bytes += uint64(g.c.FrameSize)
		got, err := g.echo(rx, want, t0)
		if err != nil {
			return err
		}
		if got {
			g.res.Frames++
		} else if g.stopped(time.Now()) {
			return nil
		} else {
			g.res.Lost++
		}
	}
	return nil
}

// echo waits for the pong of seq; false when RoundTimeout passed.
func (g *gen) echo(rx Ring, seq uint64, t0 time.Time) (bool, error) {
	end := t0.Add(g.c.RoundTimeout)
	got := false
	for !got {
		if rx.Ring().Empty() {
			now := time.Now()
			if !now.Before(end) || g.stopped(now) {
				return false, nil
			}
			if _, err := rx.Wait(min(end.Sub(now), g.slice(now))); err != nil {
				return false, err
			}
			continue
		}
		err := g.consume(rx.Ring(), uint32(g.c.Batch), func(f frame) error {
			h, err := Parse(f.eth)
			switch {
			case f.bad || err != nil || h.Kind != KindPong:
				g.res.Bad++
			case h.Seq != seq || got:
				g.res.OOO++ // the echo of a round that timed out
			default:
				got = true
				g.lat.add(time.Since(t0))
			}
			return nil
		})
		if err != nil {
			return false, err
		}
		if err := rx.Sync(0); err != nil {
			return false, err
		}
	}
	return true, nil
}

func (g *gen) pong() error {
	tx, rx := g.c.Tx, g.c.Rx
	defer func() { g.res.Elapsed = time.Since(g.start) }()
	var last time.Time
	for g.remaining(g.res.Frames) > 0 {
		ok, err := g.rxFrames(rx, last)
		if err != nil || !ok {
			return err
		}
		last = time.Now()
		limit := uint32(min(uint64(g.c.Batch), g.remaining(g.res.Frames)))
		err = g.consume(rx.Ring(), limit, func(f frame) error {
			h, err := Parse(f.eth)
			if f.bad || err != nil || h.Kind != KindPing || uint64(g.c.HdrLen)+f.bytes > uint64(tx.Ring().BufSize()) || f.bytes > uint64(len(f.eth)) {
				g.res.Bad++
				return nil
			}
			ok, err := g.txSpace(tx)
			if err != nil {
				return err
			}
			if !ok {
				return errStop
			}
			g.reflect(tx.Ring(), f.eth, h)
			g.res.Frames++
			g.res.Bytes += f.bytes
			return nil
		})
		if serr := tx.Sync(0); err == nil {
			err = serr
		}
		if err == errStop {
			return nil
		}
		if err != nil {
			return err
		}
		if err := rx.Sync(0); err != nil {
			return err
		}
	}
	return nil
}

// reflect queues the pong of ping frame e (one slot) at the TX head.
func (g *gen) reflect(r *netmap.Ring, e []byte, h Header) {
	head := r.Head()
	s := r.Slot(head)
	buf := r.Buf(s.BufIdx)
	hl := g.c.HdrLen
	clear(buf[:hl])
	out := buf[hl : hl+len(e)]
	copy(out, e)
	copy(out[0:6], h.Src[:])
	copy(out[6:12], g.c.Src[:])
	out[offKind], out[offKind+1] = byte(KindPong), 0
	s.Len, s.Flags = uint16(hl+len(e)), 0
	r.SetSlot(head, s)
	next := r.Next(head)
	r.SetHeadCur(next, next)
}
