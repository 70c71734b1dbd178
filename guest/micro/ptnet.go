package micro

import (
	"fmt"
	"math/bits"
)

// Shl is shl r, n (64-bit; the shift-by-one form for n = 1, as GNU as picks).
func (a *Asm) Shl(r Reg, n uint8) {
	if n == 1 {
		a.emit(0x48, 0xd1, 0xe0|byte(r))
		return
	}
	a.emit(0x48, 0xc1, 0xe0|byte(r), n)
}

// Test32 is test r32, r32: ZF set when the low 32 bits of r are zero.
func (a *Asm) Test32(r Reg) { a.emit(0x85, 0xc0|byte(r)<<3|byte(r)) }

// PtnetTXSpec describes one ptnet TX ring as netmap's guest driver finds it (SPECS
// 3.5-3.6): the netmap ring inside the memdev's BAR1, the ring's CSB entries in guest
// RAM (after PTCTL CREATE wrote them), and its KICK register.
type PtnetTXSpec struct {
	// Slots is the guest-physical address of slot 0 of the netmap TX ring (BAR1 +
	// NIFP_OFS + ring_ofs + 256); NumSlots its slot count (NUM_TX_SLOTS).
	Slots    uint64
	NumSlots uint32
	// BufBase is buffer 0 (BAR1 + BUF_POOL_OFS); buffer i is at BufBase + i<<BufShift
	// (BUF_POOL_OBJSZ, which must be a power of two).
	BufBase  uint64
	BufShift uint8
	// Atok and Ktoa are this ring's CSB entries (guest-physical, 64 bytes each).
	Atok, Ktoa uint64
	// Kick is the ring's KICK register (BAR0 + 128 + 4*ring).
	Kick uint64
	// Batch frames are filled per head update and kick decision (1..NumSlots-1);
	// Frames in all, a multiple of Batch; each FrameLen bytes (the buffer already holds
	// the frame: the guest only stores the length).
	Batch    uint32
	Frames   uint64
	FrameLen uint16
	// SeqOff, if non-zero, is where in each buffer the guest stores the frame's 32-bit
	// sequence number.
	SeqOff uint64
	// Credit, if non-zero, is a qword the host raises as it consumes frames: the guest
	// fills frame n only once the qword exceeds n (receiver flow control).
	Credit uint64
	// Counters is where the guest counts kicks, waits for ring room and waits for
	// credit (three qwords).
	Counters uint64
}

// CSB entry offsets PtnetTX uses (SPECS 3.4).
const (
	csbHead         = 0  // atok
	csbCur          = 4  // atok
	csbSyncFlags    = 12 // atok
	csbHwCur        = 0  // ktoa
	csbHwTail       = 4  // ktoa
	csbKernNeedKick = 8  // ktoa
	slotSize        = 16
	slotLen         = 4
	forceReclaim    = 2 // NAF_FORCE_RECLAIM
)

// PtnetTX is the TX side of netmap's ptnet guest driver for one ring, polling: per
// batch it waits for Batch free slots (free = hwtail - head mod NumSlots, from the
// CSB's ktoa), fills them (sequence number into the slot's buffer, length into the
// slot), publishes cur then head in atok (x86 keeps stores in order, so the slots are
// visible first), and after MFENCE (the head store before the kern_need_kick load:
// the host loop stores kern_need_kick then re-reads head) kicks only if the host asked.
// When the ring has no room it kicks once with FORCE_RECLAIM if the host asked, then
// spins on hwtail; it never waits for interrupts (appl_need_kick stays 0). After the
// last batch it waits until hwcur reaches head (the host took every frame) and reports
// Frames (low 32 bits) at DoneAddr. Runs at CPL3; no exit except that report.
func PtnetTX(base uint64, s PtnetTXSpec) ([]byte, error) {
	n, b := uint64(s.NumSlots), uint64(s.Batch)
	if n < 2 || n > 1<<16 || b == 0 || b >= n || s.Frames == 0 || s.Frames%b != 0 ||
		s.Counters == 0 || s.BufShift > 20 || s.FrameLen == 0 || s.SeqOff+4 > 1<<uint64(s.BufShift) {
		return nil, fmt.Errorf("micro: PtnetTX: bad spec (slots %d, batch %d, frames %d, counters %#x, buffer 1<<%d, seq at %d)",
			n, b, s.Frames, s.Counters, s.BufShift, s.SeqOff)
	}
	const (
		kicks       = 0
		roomWaits   = 8
		creditWaits = 16
	)
	a := New(base)
	// RSI: frames filled (the next sequence number); RDI: head; RBP: counters.
	a.MovImm(RSI, 0)
	a.MovImm(RDI, 0)
	a.MovImm(RBX, s.Ktoa)
	a.Load32(RDI, RBX, csbHwCur) // head = hwcur, as CREATE left it
	a.MovImm(RBP, s.Counters)
	outer := a.Here()

	// Room: (hwtail - head) mod NumSlots >= Batch; ZF/CF from the compare.
	room := func() {
		wrapped := a.NewLabel()
		a.MovImm(RBX, s.Ktoa)
		a.Load32(RAX, RBX, csbHwTail)
		a.Mov(RCX, RAX)
		a.Sub(RCX, RDI)
		a.Cmp(RAX, RDI)
		a.J(AboveEqual, wrapped)
		a.AddImm(RCX, int32(n))
		a.Bind(wrapped)
		a.MovImm(RDX, b)
		a.Cmp(RCX, RDX)
	}
	haveRoom, spin := a.NewLabel(), a.NewLabel()
	room()
	a.J(AboveEqual, haveRoom)
	a.LockInc64(RBP, roomWaits)
	a.MovImm(RBX, s.Ktoa)
	a.Load32(RAX, RBX, csbKernNeedKick)
	a.Test32(RAX)
	a.J(Equal, spin)
	a.MovImm(RBX, s.Atok)
	a.MovImm(RAX, forceReclaim)
	a.Store32(RBX, csbSyncFlags, RAX)
	a.MovImm(RBX, s.Kick)
	a.Store32(RBX, 0, RDI)
	a.LockInc64(RBP, kicks)
	a.Bind(spin)
	a.Pause()
	room()
	a.J(Below, spin)
	a.Bind(haveRoom)

	if s.Credit != 0 {
		a.MovImm(RBX, s.Credit)
		a.Mov(RCX, RSI)
		a.AddImm(RCX, int32(b))
		a.waitFor(func() {
			a.Load64(RAX, RBX, 0)
			a.Cmp(RAX, RCX)
		}, AboveEqual, Below, creditWaits)
	}

	// Fill the batch.
	shift := uint8(bits.TrailingZeros64(slotSize))
	a.MovImm(RCX, b)
	fill := a.Here()
	a.Mov(RDX, RDI)
	a.Shl(RDX, shift)
	a.MovImm(RBX, s.Slots)
	a.Add(RDX, RBX) // RDX: &slot[head]
	if s.SeqOff != 0 {
		a.Load32(RAX, RDX, 0) // buf_idx
		if s.BufShift != 0 {
			a.Shl(RAX, s.BufShift)
		}
		a.MovImm(RBX, s.BufBase)
		a.Add(RAX, RBX)
		a.Store32(RAX, int32(s.SeqOff), RSI)
	}
	a.MovImm(RAX, uint64(s.FrameLen)) // len, and flags 0: one frame per slot
	a.Store32(RDX, slotLen, RAX)
	a.Inc(RDI)
	a.wrapIndex(RDI, n)
	a.Inc(RSI)
	a.Dec(RCX)
	a.J(NotEqual, fill)

	// Publish cur, then head; kick if the host asked.
	noKick := a.NewLabel()
	a.MovImm(RBX, s.Atok)
	a.Store32(RBX, csbCur, RDI)
	a.Store32(RBX, csbHead, RDI)
	a.Mfence()
	a.MovImm(RBX, s.Ktoa)
	a.Load32(RAX, RBX, csbKernNeedKick)
	a.Test32(RAX)
	a.J(Equal, noKick)
	a.MovImm(RBX, s.Kick)
	a.Store32(RBX, 0, RDI)
	a.LockInc64(RBP, kicks)
	a.Bind(noKick)
	a.MovImm(RAX, s.Frames)
	a.Cmp(RSI, RAX)
	a.J(Below, outer)

	// Drain: the host has taken every frame when hwcur reaches head.
	a.MovImm(RBX, s.Ktoa)
	drain := a.Here()
	a.Pause()
	a.Load32(RAX, RBX, csbHwCur)
	a.Cmp(RAX, RDI)
	a.J(NotEqual, drain)
	a.MovImm(RAX, s.Frames&0xffffffff)
	a.Report(DoneAddr)
	a.Halt()
	return a.Assemble()
}
