package micro

import (
	"fmt"
	"math/bits"
)

// Rdtsc loads the time-stamp counter into RAX (clobbers RDX): rdtsc, then EDX:EAX
// joined. CPL3 may read it (the micro loader leaves CR4.TSD clear).
func (a *Asm) Rdtsc() {
	a.emit(0x0f, 0x31)
	a.Shl(RDX, 32)
	a.Or(RAX, RDX)
}

// Or is or dst, src (64-bit).
func (a *Asm) Or(dst, src Reg) { a.emit(0x48, 0x09, 0xc0|byte(src)<<3|byte(dst)) }

// Counters of the ping-pong programs (PtnetPingPong, VirtqPingPong): qwords at the
// spec's Counters address plus these offsets, PingCountersSize bytes in all.
const (
	PingKicks     = 0  // doorbell writes to the device (TX and RX queues or rings)
	PingOther     = 8  // frames received that were not the far end's (Match), or in no buffer
	PingRounds    = 24 // round trips done, stored after each (the host's watchdog reads it)
	PingSeqErrors = 40 // the far end's frames that were not the pong awaited (ignored)
	PingTSCStart  = 48 // the TSC before the first ping
	PingTSCEnd    = 56 // the TSC after the last pong
	pingT0        = 64 // the TSC when the ping in flight was published
	pingRxHead    = 72 // PtnetPingPong: the RX ring's head
	// PingCountersSize is how many bytes the counters take.
	PingCountersSize = 80
)

// PtnetRing is one ptnet ring as the guest driver finds it: its slots in BAR1, its
// CSB entries and KICK register (see PtnetTXSpec).
type PtnetRing struct {
	Slots      uint64
	NumSlots   uint32
	Atok, Ktoa uint64
	Kick       uint64
}

// PtnetPingSpec describes a ptnet ping-pong guest: a TX and an RX ring of one port.
type PtnetPingSpec struct {
	TX, RX PtnetRing
	// Buffers as in PtnetRXSpec. Every TX buffer already holds the ping (FrameLen
	// bytes); the guest stores each ping's 32-bit sequence number (the round) at
	// SeqOff, and takes a frame for the pong awaited when it carries that number.
	BufBase  uint64
	BufShift uint8
	NumBufs  uint32
	FrameLen uint16
	SeqOff   uint64
	// Match, if non-zero, is the 32-bit word at MatchOff of every pong (a magic
	// number): other frames are someone else's, counted in PingOther.
	Match    uint32
	MatchOff uint64
	// Rounds round trips in all; Times is where the guest stores each one's TSC
	// ticks (Rounds qwords).
	Rounds, Times uint64
	// Counters (PingCountersSize bytes, zeroed by the host; see PingKicks).
	Counters uint64
}

// PtnetPingPong is a ptnet ping-pong guest, polling, no interrupts: it reports at
// ReadyAddr (the host's clock then calibrates the TSC), then per round waits for a TX
// slot (as PtnetTX: FORCE_RECLAIM kick if the host asked), stamps the round into the
// ping, reads the TSC, publishes the TX head and kicks if the host asked; then spins
// until the RX ring holds a frame, gives each frame back (kicking if the host asked)
// and stops at the one carrying the round's number: the TSC difference is that
// round's time. After the last round it reports Rounds (low 32 bits) at DoneAddr.
// Runs at CPL3; no exit but the two reports.
func PtnetPingPong(base uint64, s PtnetPingSpec) ([]byte, error) {
	ok := func(r PtnetRing) bool { return r.NumSlots >= 2 && r.NumSlots <= 1<<16 }
	if !ok(s.TX) || !ok(s.RX) || s.Rounds == 0 || s.Rounds >= 1<<32 || s.Times == 0 || s.Counters == 0 ||
		s.BufShift > 20 || s.SeqOff == 0 || s.SeqOff+4 > 1<<uint64(s.BufShift) || s.MatchOff+4 > 1<<uint64(s.BufShift) ||
		s.NumBufs == 0 || s.FrameLen == 0 {
		return nil, fmt.Errorf("micro: PtnetPingPong: bad spec (slots %d/%d, rounds %d, times %#x, counters %#x, buffer 1<<%d, seq at %d, %d buffers, frame %d)",
			s.TX.NumSlots, s.RX.NumSlots, s.Rounds, s.Times, s.Counters, s.BufShift, s.SeqOff, s.NumBufs, s.FrameLen)
	}
	nt, nr := uint64(s.TX.NumSlots), uint64(s.RX.NumSlots)
	shift := uint8(bits.TrailingZeros64(slotSize))
	a := New(base)
	// RSI: round; RDI: TX head; [RBP+pingRxHead]: RX head; RBP: counters.
	a.MovImm(RBP, s.Counters)
	a.MovImm(RAX, 0)
	for _, atok := range []uint64{s.TX.Atok, s.RX.Atok} {
		a.MovImm(RBX, atok)
		a.Store32(RBX, csbApplNeedKick, RAX)
	}
	a.MovImm(RSI, 0)
	// head = hwcur, as CREATE left it, kept inside the ring.
	a.MovImm(RBX, s.RX.Ktoa)
	a.Load32(RCX, RBX, csbHwCur)
	a.wrapIndex(RCX, nr)
	a.Store64(RBP, pingRxHead, RCX)
	a.MovImm(RBX, s.TX.Ktoa)
	a.Load32(RDI, RBX, csbHwCur)
	a.wrapIndex(RDI, nt)
	a.MovImm(RAX, 1)
	a.Report(ReadyAddr)
	a.Rdtsc()
	a.Store64(RBP, PingTSCStart, RAX)
	round := a.Here()

	// A free TX slot: hwtail != head.
	room := func() {
		a.MovImm(RBX, s.TX.Ktoa)
		a.Load32(RAX, RBX, csbHwTail)
		a.Cmp(RAX, RDI)
	}
	haveRoom, spin := a.NewLabel(), a.NewLabel()
	room()
	a.J(NotEqual, haveRoom)
	a.Load32(RAX, RBX, csbKernNeedKick)
	a.Test32(RAX)
	a.J(Equal, spin)
	a.MovImm(RBX, s.TX.Atok)
	a.MovImm(RAX, forceReclaim)
	a.Store32(RBX, csbSyncFlags, RAX)
	a.MovImm(RBX, s.TX.Kick)
	a.Store32(RBX, 0, RDI)
	a.LockInc64(RBP, PingKicks)
	a.Bind(spin)
	a.Pause()
	room()
	a.J(Equal, spin)
	a.Bind(haveRoom)

	// The ping: the round into its buffer (checked index), its length into the slot.
	a.Mov(RDX, RDI)
	a.Shl(RDX, shift)
	a.MovImm(RBX, s.TX.Slots)
	a.Add(RDX, RBX)
	badBuf := a.NewLabel()
	a.Load32(RAX, RDX, 0)
	a.MovImm(RBX, uint64(s.NumBufs))
	a.Cmp(RAX, RBX)
	a.J(AboveEqual, badBuf) // sent unstamped: its pong never matches, the host's watchdog ends the run
	if s.BufShift != 0 {
		a.Shl(RAX, s.BufShift)
	}
	a.MovImm(RBX, s.BufBase)
	a.Add(RAX, RBX)
	a.Store32(RAX, int32(s.SeqOff), RSI)
	a.Bind(badBuf)
	a.MovImm(RAX, uint64(s.FrameLen))
	a.Store32(RDX, slotLen, RAX)
	a.Inc(RDI)
	a.wrapIndex(RDI, nt)
	a.Rdtsc()
	a.Store64(RBP, pingT0, RAX)
	noKick := a.NewLabel()
	a.MovImm(RBX, s.TX.Atok)
	a.Store32(RBX, csbCur, RDI)
	a.Store32(RBX, csbHead, RDI)
	a.Mfence()
	a.MovImm(RBX, s.TX.Ktoa)
	a.Load32(RAX, RBX, csbKernNeedKick)
	a.Test32(RAX)
	a.J(Equal, noKick)
	a.MovImm(RBX, s.TX.Kick)
	a.Store32(RBX, 0, RDI)
	a.LockInc64(RBP, PingKicks)
	a.Bind(noKick)

	// The pong: wait for a frame (hwtail != RX head), take it.
	await := a.Here()
	a.MovImm(RBX, s.RX.Ktoa)
	a.Load64(RCX, RBP, pingRxHead)
	wait := a.Here()
	a.Pause()
	a.Load32(RAX, RBX, csbHwTail)
	a.Cmp(RAX, RCX)
	a.J(Equal, wait)
	a.Mov(RDX, RCX)
	a.Shl(RDX, shift)
	a.MovImm(RBX, s.RX.Slots)
	a.Add(RDX, RBX)
	other, mine := a.NewLabel(), a.NewLabel()
	a.Load32(RAX, RDX, 0)
	a.MovImm(RBX, uint64(s.NumBufs))
	a.Cmp(RAX, RBX)
	a.J(AboveEqual, other)
	if s.BufShift != 0 {
		a.Shl(RAX, s.BufShift)
	}
	a.MovImm(RBX, s.BufBase)
	a.Add(RAX, RBX)
	if s.Match != 0 {
		a.CmpMem32Imm(RAX, int32(s.MatchOff), s.Match)
		a.J(NotEqual, other)
	}
	a.Load32(RAX, RAX, int32(s.SeqOff))
	a.Cmp(RAX, RSI)
	a.J(Equal, mine)
	a.LockInc64(RBP, PingSeqErrors)
	a.ptnetRelease(s.RX, nr)
	a.Jmp(await)
	a.Bind(other)
	a.LockInc64(RBP, PingOther)
	a.ptnetRelease(s.RX, nr)
	a.Jmp(await)

	a.Bind(mine)
	a.Rdtsc()
	a.Load64(RBX, RBP, pingT0)
	a.Sub(RAX, RBX)
	a.Mov(RDX, RSI)
	a.Shl(RDX, 3)
	a.MovImm(RBX, s.Times)
	a.Add(RDX, RBX)
	a.Store64(RDX, 0, RAX)
	a.ptnetRelease(s.RX, nr)
	a.Inc(RSI)
	a.Store64(RBP, PingRounds, RSI)
	a.MovImm(RAX, s.Rounds)
	a.Cmp(RSI, RAX)
	a.J(Below, round)
	a.Rdtsc()
	a.Store64(RBP, PingTSCEnd, RAX)
	a.Mov(RAX, RSI)
	a.Report(DoneAddr)
	a.Halt()
	return a.Assemble()
}

// ptnetRelease gives back the RX slot at head RCX: head+1 into [RBP+pingRxHead] and
// atok (cur, then head), then after MFENCE a kick if the host asked. Clobbers RAX,
// RBX, RCX.
func (a *Asm) ptnetRelease(r PtnetRing, n uint64) {
	a.Inc(RCX)
	a.wrapIndex(RCX, n)
	a.Store64(RBP, pingRxHead, RCX)
	a.MovImm(RBX, r.Atok)
	a.Store32(RBX, csbCur, RCX)
	a.Store32(RBX, csbHead, RCX)
	a.Mfence()
	noKick := a.NewLabel()
	a.MovImm(RBX, r.Ktoa)
	a.Load32(RAX, RBX, csbKernNeedKick)
	a.Test32(RAX)
	a.J(Equal, noKick)
	a.MovImm(RBX, r.Kick)
	a.Store32(RBX, 0, RCX)
	a.LockInc64(RBP, PingKicks)
	a.Bind(noKick)
}

// VirtqRing is one split virtqueue as the driver set it up: its avail and used
// rings and its notify address (a 16-bit MMIO store of Queue).
type VirtqRing struct {
	Avail, Used uint64
	Doorbell    uint64
	Queue       uint16
}

// VirtqPingSpec describes a virtio-net ping-pong guest: the TX queue's descriptor i
// is a one-buffer chain to a ping at TxBuf0+i*Stride (virtio-net header included),
// the RX queue's a device-writable one at RxBuf0+i*Stride; both queues Size entries.
type VirtqPingSpec struct {
	TX, RX         VirtqRing
	Size           uint16
	EventIdx       bool // as in VirtqTXSpec, for both queues
	TxBuf0, RxBuf0 uint64
	Stride         uint64 // a power of two
	// SeqOff is where in a buffer the 32-bit sequence number is, MatchOff the magic
	// number Match (see PtnetPingSpec; both past the header).
	SeqOff        uint64
	Match         uint32
	MatchOff      uint64
	Rounds, Times uint64 // as in PtnetPingSpec
	Counters      uint64
}

// VirtqPingPong is a virtio-net ping-pong guest, polling, no interrupts: it makes
// every RX buffer available (as VirtqRX), reports at ReadyAddr, then per round waits
// for a free TX entry, stamps the round into the next ping, reads the TSC,
// publishes it (avail.idx) and kicks as VirtqTX decides; then spins until the RX
// used ring moves, gives each buffer back (kicking as VirtqRX decides) and stops at
// the frame carrying the round's number: the TSC difference is that round's time.
// After the last round it reports Rounds (low 32 bits) at DoneAddr. Runs at CPL3;
// no exit but the two reports.
func VirtqPingPong(base uint64, s VirtqPingSpec) ([]byte, error) {
	if s.Size == 0 || s.Size&(s.Size-1) != 0 || s.Size > 1<<15 || s.Rounds == 0 || s.Rounds >= 1<<32 ||
		s.Times == 0 || s.Counters == 0 || s.Stride == 0 || s.Stride&(s.Stride-1) != 0 || s.SeqOff == 0 || s.SeqOff+4 > s.Stride ||
		s.MatchOff+4 > s.Stride {
		return nil, fmt.Errorf("micro: VirtqPingPong: bad spec (size %d, rounds %d, times %#x, counters %#x, stride %d, seq at %d)",
			s.Size, s.Rounds, s.Times, s.Counters, s.Stride, s.SeqOff)
	}
	n := uint64(s.Size)
	strideShift := uint8(bits.TrailingZeros64(s.Stride))
	a := New(base)
	// RSI: round (TX entries published); RDI: RX used entries taken (RX avail.idx is
	// RDI + Size); RBP: counters.
	a.MovImm(RBP, s.Counters)
	a.MovImm(RSI, 0)
	a.MovImm(RDI, 0)
	a.MovImm(RBX, s.RX.Avail)
	post := a.Here()
	a.Mov(RDX, RDI)
	a.Add(RDX, RDX)
	a.Add(RDX, RBX)
	a.Store16(RDX, 4, RDI)
	a.Inc(RDI)
	a.MovImm(RAX, n)
	a.Cmp(RDI, RAX)
	a.J(Below, post)
	a.Store16(RBX, 2, RDI)
	a.MovImm(RDI, 0)
	a.Mfence()
	a.MovImm(RCX, n)
	a.virtqNotify(s.RX, n, s.EventIdx, n)
	a.MovImm(RAX, 1)
	a.Report(ReadyAddr)
	a.Rdtsc()
	a.Store64(RBP, PingTSCStart, RAX)
	round := a.Here()

	// A free TX entry: (published - used.idx) mod 2^16 < Size.
	a.MovImm(RBX, s.TX.Used)
	a.MovImm(RDX, n)
	spin := a.Here()
	a.Pause()
	a.Load16(RAX, RBX, 2)
	a.Mov(RCX, RSI)
	a.Sub(RCX, RAX)
	a.AndImm32(RCX, 0xffff)
	a.Cmp(RCX, RDX)
	a.J(AboveEqual, spin)

	// The ping: entry i = round mod Size is descriptor i, buffer i.
	a.Mov(RAX, RSI)
	a.AndImm32(RAX, uint32(n-1))
	a.Mov(RDX, RAX)
	a.Add(RDX, RDX)
	a.MovImm(RBX, s.TX.Avail)
	a.Add(RDX, RBX)
	a.Store16(RDX, 4, RAX)
	if strideShift != 0 {
		a.Shl(RAX, strideShift)
	}
	a.MovImm(RBX, s.TxBuf0)
	a.Add(RAX, RBX)
	a.Store32(RAX, int32(s.SeqOff), RSI)
	a.Rdtsc()
	a.Store64(RBP, pingT0, RAX)
	a.Mov(RCX, RSI)
	a.Inc(RCX)
	a.MovImm(RBX, s.TX.Avail)
	a.Store16(RBX, 2, RCX)
	a.Mfence()
	a.virtqNotify(s.TX, n, s.EventIdx, 1)

	// The pong: wait for a used RX entry, take it, give its buffer back.
	await := a.Here()
	a.MovImm(RBX, s.RX.Used)
	wait := a.Here()
	a.Pause()
	a.Load16(RAX, RBX, 2)
	a.Mov(RCX, RDI)
	a.AndImm32(RCX, 0xffff)
	a.Cmp(RAX, RCX)
	a.J(Equal, wait)
	a.Mov(RDX, RDI)
	a.AndImm32(RDX, uint32(n-1))
	a.Shl(RDX, 3)
	a.Add(RDX, RBX)
	a.Load32(RAX, RDX, 4)
	a.AndImm32(RAX, uint32(n-1)) // the device's id, kept inside the queue
	a.Mov(RDX, RDI)
	a.AndImm32(RDX, uint32(n-1)) // (RDI + Size) mod Size
	a.Add(RDX, RDX)
	a.MovImm(RBX, s.RX.Avail)
	a.Add(RDX, RBX)
	a.Store16(RDX, 4, RAX) // published with avail.idx below
	if strideShift != 0 {
		a.Shl(RAX, strideShift)
	}
	a.MovImm(RBX, s.RxBuf0)
	a.Add(RAX, RBX)
	mine := a.NewLabel()
	if s.Match != 0 {
		ours := a.NewLabel()
		a.CmpMem32Imm(RAX, int32(s.MatchOff), s.Match)
		a.J(Equal, ours)
		a.LockInc64(RBP, PingOther)
		a.virtqRelease(s.RX, n, s.EventIdx)
		a.Jmp(await)
		a.Bind(ours)
	}
	a.Load32(RAX, RAX, int32(s.SeqOff))
	a.Cmp(RAX, RSI)
	a.J(Equal, mine)
	a.LockInc64(RBP, PingSeqErrors)
	a.virtqRelease(s.RX, n, s.EventIdx)
	a.Jmp(await)

	a.Bind(mine)
	a.Rdtsc()
	a.Load64(RBX, RBP, pingT0)
	a.Sub(RAX, RBX)
	a.Mov(RDX, RSI)
	a.Shl(RDX, 3)
	a.MovImm(RBX, s.Times)
	a.Add(RDX, RBX)
	a.Store64(RDX, 0, RAX)
	a.virtqRelease(s.RX, n, s.EventIdx)
	a.Inc(RSI)
	a.Store64(RBP, PingRounds, RSI)
	a.MovImm(RAX, s.Rounds)
	a.Cmp(RSI, RAX)
	a.J(Below, round)
	a.Rdtsc()
	a.Store64(RBP, PingTSCEnd, RAX)
	a.Mov(RAX, RSI)
	a.Report(DoneAddr)
	a.Halt()
	return a.Assemble()
}

// virtqRelease publishes one more RX buffer (its avail entry already written):
// RDI+1, avail.idx = RDI + Size, MFENCE, then VirtqTX's kick rule. Clobbers RAX,
// RBX, RCX, RDX.
func (a *Asm) virtqRelease(q VirtqRing, n uint64, eventIdx bool) {
	a.Inc(RDI)
	a.Mov(RCX, RDI)
	a.AddImm(RCX, int32(n))
	a.MovImm(RBX, q.Avail)
	a.Store16(RBX, 2, RCX)
	a.Mfence()
	a.virtqNotify(q, n, eventIdx, 1)
}

// virtqNotify kicks queue q if the device asked, after a publish of delta entries up
// to the avail index in RCX (the caller fenced): with EVENT_IDX when
// (u16)(new - avail_event - 1) < delta, else unless used.flags has NO_NOTIFY.
// Counts a kick at [RBP+PingKicks]. Clobbers RAX, RBX, RCX, RDX.
func (a *Asm) virtqNotify(q VirtqRing, n uint64, eventIdx bool, delta uint64) {
	noKick := a.NewLabel()
	a.MovImm(RBX, q.Used)
	if eventIdx {
		a.Load16(RAX, RBX, int32(4+8*n))
		a.Sub(RCX, RAX)
		a.Dec(RCX)
		a.AndImm32(RCX, 0xffff)
		a.MovImm(RDX, delta)
		a.Cmp(RCX, RDX)
		a.J(AboveEqual, noKick)
	} else {
		a.Load16(RAX, RBX, 0)
		a.AndImm32(RAX, 1)
		a.J(NotEqual, noKick)
	}
	a.MovImm(RDX, q.Doorbell)
	a.MovImm(RAX, uint64(q.Queue))
	a.Store16(RDX, 0, RAX)
	a.LockInc64(RBP, PingKicks)
	a.Bind(noKick)
}
