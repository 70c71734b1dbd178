package micro

import (
	"fmt"
	"math/bits"
)

// Counters of the RX programs (PtnetRX, VirtqRX): qwords at the spec's Counters
// address plus these offsets, RXCountersSize bytes in all. The far end reads
// RXFrames while the guest runs (a qword store, so never torn).
const (
	RXKicks      = 0  // doorbell writes to the device
	RXEmptyWaits = 8  // times the guest found nothing to receive and spun
	RXFeedKicks  = 16 // doorbell writes to the far end (Feed)
	RXFrames     = 24 // frames received (Match), stored after each batch is given back
	RXBytes      = 32 // their bytes (Ethernet frames: the virtio-net header not counted)
	RXSeqErrors  = 40 // frames whose sequence number was not the one expected
	rxExpect     = 48 // the sequence number expected next (low 32 bits)
	rxOldAvail   = 56 // VirtqRX: avail.idx before the last publish
	RXOther      = 64 // frames taken that were not the far end's (Match), or in no buffer
	// RXCountersSize is how many bytes the counters take.
	RXCountersSize = 72

	csbApplNeedKick = 8 // atok: the guest wants interrupts
)

// PtnetRXSpec describes one ptnet RX ring as netmap's guest driver finds it (SPECS
// 3.5-3.6) and what the far end shares with the guest for flow control.
type PtnetRXSpec struct {
	// Slots is the guest-physical address of slot 0 of the netmap RX ring (BAR1 +
	// NIFP_OFS + ring_ofs + 256); NumSlots its slot count (NUM_RX_SLOTS).
	Slots    uint64
	NumSlots uint32
	// BufBase is buffer 0 (BAR1 + BUF_POOL_OFS); buffer i is at BufBase + i<<BufShift
	// (BUF_POOL_OBJSZ, a power of two). NumBufs is BUF_POOL_OBJNUM: a slot naming a
	// buffer at or past it is counted in RXOther and its buffer not read.
	BufBase  uint64
	BufShift uint8
	NumBufs  uint32
	// Atok and Ktoa are this ring's CSB entries (guest-physical, 64 bytes each).
	Atok, Ktoa uint64
	// Kick is the ring's KICK register (BAR0 + 128 + 4*ring; RX rings follow the TX
	// rings).
	Kick uint64
	// Batch is the most slots consumed per head update and kick decision
	// (1..NumSlots-1). The program ends once it has received Frames frames.
	Batch  uint32
	Frames uint64
	// SeqOff, if non-zero, is where in each buffer the frame's 32-bit sequence number
	// is: frames must come numbered 0, 1, 2, ... (RXSeqErrors counts the others).
	SeqOff uint64
	// Match, if non-zero, is the 32-bit word at MatchOff of every frame the far end
	// sends (a magic number): frames without it are someone else's (a host stack
	// talking on a TAP) and only counted in RXOther.
	Match    uint32
	MatchOff uint64
	// Feed, if non-zero, is a qword the far end sets non-zero before it waits for the
	// guest to take frames (its flow control: it keeps a window in flight); after
	// each batch the guest then clears it and writes RXFrames' low 32 bits to the
	// 32-bit MMIO doorbell FeedKick (an ioeventfd).
	Feed, FeedKick uint64
	// Counters is where the guest keeps its counters (RXCountersSize bytes, zeroed
	// by the host; see RXKicks).
	Counters uint64
}

// PtnetRX is the RX side of netmap's ptnet guest driver for one ring, polling: it
// stores appl_need_kick = 0 (no interrupts, ever), then per batch waits until the
// host has published frames (hwtail != head, from the CSB's ktoa), takes up to
// Batch of them (counting frames and slot lengths; with Match, only frames with the
// far end's magic number, the others in RXOther; with SeqOff, checking each frame's
// sequence number in its buffer), gives the slots back (cur then head in
// atok, then RXFrames), and after MFENCE (the head store before the
// kern_need_kick load: the host loop stores kern_need_kick, when the ring is full
// in its view, then re-reads head) kicks only if the host asked; then the far end
// if it asked (Feed). Reports its frame count (low 32 bits) at DoneAddr once it
// reached Frames. Runs at CPL3; no exit except that report.
func PtnetRX(base uint64, s PtnetRXSpec) ([]byte, error) {
	n, b := uint64(s.NumSlots), uint64(s.Batch)
	readBuf := s.SeqOff != 0 || s.Match != 0
	if n < 2 || n > 1<<16 || b == 0 || b >= n || s.Frames == 0 || s.Frames >= 1<<32 || s.Counters == 0 ||
		s.BufShift > 20 || s.SeqOff+4 > 1<<uint64(s.BufShift) || s.MatchOff+4 > 1<<uint64(s.BufShift) ||
		(readBuf && s.NumBufs == 0) || (s.Feed == 0) != (s.FeedKick == 0) {
		return nil, fmt.Errorf("micro: PtnetRX: bad spec (slots %d, batch %d, frames %d, counters %#x, buffer 1<<%d, seq at %d, %d buffers, feed %#x/%#x)",
			n, b, s.Frames, s.Counters, s.BufShift, s.SeqOff, s.NumBufs, s.Feed, s.FeedKick)
	}
	a := New(base)
	// RSI: frames received; RDI: head; RBP: counters.
	a.MovImm(RBP, s.Counters)
	a.MovImm(RAX, 0)
	a.MovImm(RBX, s.Atok)
	a.Store32(RBX, csbApplNeedKick, RAX) // polling: no interrupts
	a.Store64(RBP, rxExpect, RAX)
	a.MovImm(RSI, 0)
	a.MovImm(RBX, s.Ktoa)
	a.Load32(RDI, RBX, csbHwCur) // head = hwcur, as CREATE left it
	a.MovImm(RAX, n)
	inRing := a.NewLabel()
	a.Cmp(RDI, RAX)
	a.J(Below, inRing)
	a.MovImm(RDI, 0) // a host that wrote nonsense: slots stay inside the ring
	a.Bind(inRing)
	outer := a.Here()

	// Frames to take: RCX = (hwtail - head) mod NumSlots, at most Batch.
	a.MovImm(RBX, s.Ktoa)
	a.waitFor(func() {
		wrapped := a.NewLabel()
		a.Load32(RAX, RBX, csbHwTail)
		a.Mov(RCX, RAX)
		a.Sub(RCX, RDI)
		a.Cmp(RAX, RDI)
		a.J(AboveEqual, wrapped)
		a.AddImm(RCX, int32(n))
		a.Bind(wrapped)
		a.Test32(RCX)
	}, NotEqual, Equal, RXEmptyWaits)
	a.MovImm(RDX, b)
	small := a.NewLabel()
	a.Cmp(RCX, RDX)
	a.J(Below, small)
	a.Mov(RCX, RDX)
	a.Bind(small)

	// Take them.
	take := a.Here()
	a.Mov(RDX, RDI)
	a.Shl(RDX, uint8(bits.TrailingZeros64(slotSize)))
	a.MovImm(RBX, s.Slots)
	a.Add(RDX, RBX) // RDX: &slot[head]
	other, next := a.NewLabel(), a.NewLabel()
	if readBuf {
		a.Load32(RAX, RDX, 0) // buf_idx, checked before use
		a.MovImm(RBX, uint64(s.NumBufs))
		a.Cmp(RAX, RBX)
		a.J(AboveEqual, other)
		if s.BufShift != 0 {
			a.Shl(RAX, s.BufShift)
		}
		a.MovImm(RBX, s.BufBase)
		a.Add(RAX, RBX) // RAX: the buffer
		if s.Match != 0 {
			a.CmpMem32Imm(RAX, int32(s.MatchOff), s.Match)
			a.J(NotEqual, other)
		}
	}
	a.Load16(RBX, RDX, slotLen)
	a.AddMem64(RBP, RXBytes, RBX)
	if s.SeqOff != 0 {
		a.seqCheck(int32(s.SeqOff), a.NewLabel())
	}
	a.Inc(RSI)
	if readBuf {
		a.Jmp(next)
		a.Bind(other)
		a.LockInc64(RBP, RXOther)
	}
	a.Bind(next)
	a.Inc(RDI)
	a.wrapIndex(RDI, n)
	a.Dec(RCX)
	a.J(NotEqual, take)

	// Give the slots back: cur, then head, then the count the far end reads (x86
	// keeps the stores in order); kick if the host asked.
	noKick := a.NewLabel()
	a.MovImm(RBX, s.Atok)
	a.Store32(RBX, csbCur, RDI)
	a.Store32(RBX, csbHead, RDI)
	a.Store64(RBP, RXFrames, RSI)
	a.Mfence()
	a.MovImm(RBX, s.Ktoa)
	a.Load32(RAX, RBX, csbKernNeedKick)
	a.Test32(RAX)
	a.J(Equal, noKick)
	a.MovImm(RBX, s.Kick)
	a.Store32(RBX, 0, RDI)
	a.LockInc64(RBP, RXKicks)
	a.Bind(noKick)
	a.feed(s.Feed, s.FeedKick)
	a.MovImm(RAX, s.Frames)
	a.Cmp(RSI, RAX)
	a.J(Below, outer)
	a.Mov(RAX, RSI)
	a.Report(DoneAddr)
	a.Halt()
	return a.Assemble()
}

// seqCheck compares the 32-bit sequence number at [RAX+off] with the one expected
// ([RBP+rxExpect]), counts a mismatch in RXSeqErrors, and expects the number after
// the one found (so one gap counts once). match is bound here. Clobbers RAX, RBX.
func (a *Asm) seqCheck(off int32, match Label) {
	a.Load32(RAX, RAX, off)
	a.Load64(RBX, RBP, rxExpect)
	a.Cmp(RAX, RBX)
	a.J(Equal, match)
	a.LockInc64(RBP, RXSeqErrors)
	a.Bind(match)
	a.Inc(RAX)
	a.AndImm32(RAX, 0xffffffff) // 32-bit numbers wrap
	a.Store64(RBP, rxExpect, RAX)
}

// feed kicks the far end if it asked: loads the qword at flag (the caller's MFENCE
// orders it after the RXFrames store; the far end stores the flag, then re-reads
// RXFrames), and when it is set clears it and writes RSI to the doorbell. Clobbers
// RAX, RBX. No code without a flag.
func (a *Asm) feed(flag, doorbell uint64) {
	if flag == 0 {
		return
	}
	none := a.NewLabel()
	a.MovImm(RBX, flag)
	a.Load64(RAX, RBX, 0)
	a.Test32(RAX)
	a.J(Equal, none)
	a.MovImm(RAX, 0)
	a.Store64(RBX, 0, RAX)
	a.MovImm(RBX, doorbell)
	a.Store32(RBX, 0, RSI)
	a.LockInc64(RBP, RXFeedKicks)
	a.Bind(none)
}

// VirtqRXSpec describes the receive side of a split virtqueue that the host set up
// in guest memory as a driver would: descriptor i is a one-buffer, device-writable
// chain of Stride bytes at Buf0+i*Stride. VirtqRX makes them available and keeps
// giving them back.
type VirtqRXSpec struct {
	Avail, Used uint64 // guest-physical addresses of the avail and used rings
	Size        uint16 // queue size (power of two)
	// Batch is the most used entries taken per avail.idx update and kick decision
	// (1..Size). The program ends once it has received Frames frames.
	Batch  uint16
	Frames uint64
	// Doorbell is the queue's notify address (a 16-bit MMIO store of Queue).
	Doorbell uint64
	Queue    uint16
	// EventIdx: VIRTIO_F_RING_EVENT_IDX was negotiated, so kick only when avail.idx
	// passes avail_event; else kick unless used.flags has NO_NOTIFY.
	EventIdx bool
	// Buf0 and Stride (a power of two) locate buffer i. HdrLen is the virtio-net
	// header in front of each frame (not counted in RXBytes); SeqOff, if non-zero,
	// is where in the buffer the frame's 32-bit sequence number is, MatchOff its
	// magic number Match (see PtnetRXSpec; both offsets count the header).
	Buf0, Stride, SeqOff uint64
	HdrLen               uint16
	Match                uint32
	MatchOff             uint64
	// Feed and FeedKick: the far end's flow control (see PtnetRXSpec).
	Feed, FeedKick uint64
	// Counters is where the guest keeps its counters (RXCountersSize bytes, zeroed).
	Counters uint64
}

// VirtqRX is a virtio RX driver loop: it makes every buffer available (avail.ring[i]
// = i, avail.idx = Size) and kicks if the device asks; then per batch waits until
// used.idx moves, takes up to Batch used entries (counting frames and their lengths
// less HdrLen; with Match and SeqOff, as PtnetRX), puts each entry's buffer back
// in the avail ring (its id, masked to the queue), publishes avail.idx once and
// RXFrames, and after MFENCE decides whether to kick as Linux's
// virtqueue_kick_prepare does (VirtqTX's rule), then kicks the far end if it asked
// (Feed). Interrupts stay off (avail.flags and used_event are the host's, left as
// it wrote them). Reports its frame count (low 32 bits) at DoneAddr once it reached
// Frames. Runs at CPL3; no exit except the report.
func VirtqRX(base uint64, s VirtqRXSpec) ([]byte, error) {
	if s.Size == 0 || s.Size&(s.Size-1) != 0 || s.Size > 1<<15 || s.Batch == 0 || s.Batch > s.Size ||
		s.Frames == 0 || s.Frames >= 1<<32 || s.Counters == 0 || s.Stride == 0 || s.Stride&(s.Stride-1) != 0 ||
		s.SeqOff+4 > s.Stride || s.MatchOff+4 > s.Stride || s.Avail+4+2*uint64(s.Size) >= 1<<31 ||
		(s.Feed == 0) != (s.FeedKick == 0) {
		return nil, fmt.Errorf("micro: VirtqRX: bad spec (size %d, batch %d, frames %d, counters %#x, stride %d, seq at %d, feed %#x/%#x)",
			s.Size, s.Batch, s.Frames, s.Counters, s.Stride, s.SeqOff, s.Feed, s.FeedKick)
	}
	n, b := uint64(s.Size), uint64(s.Batch)
	usedEvent := int32(4 + 8*n) // avail_event lives after the used ring
	a := New(base)
	// RSI: frames received (Match); RDI: buffers made available (its low 16 bits
	// are avail.idx; every buffer is out but those used and not taken yet, so
	// last_used_idx is RDI - Size); RBP: counters.
	a.MovImm(RBP, s.Counters)
	a.MovImm(RAX, 0)
	a.Store64(RBP, rxExpect, RAX)
	a.Store64(RBP, rxOldAvail, RAX)
	a.MovImm(RSI, 0)
	a.MovImm(RDI, 0)
	a.MovImm(RBX, s.Avail)
	post := a.Here()
	a.Mov(RDX, RDI)
	a.Add(RDX, RDX)
	a.Add(RDX, RBX)
	a.Store16(RDX, 4, RDI)
	a.Inc(RDI)
	a.MovImm(RAX, n)
	a.Cmp(RDI, RAX)
	a.J(Below, post)

	// Publish avail.idx (RDI) and RXFrames (RSI); kick if the device asked, then the
	// far end. [RBP+rxOldAvail] holds avail.idx before this publish.
	kickLabel := a.NewLabel()
	a.Jmp(kickLabel)
	outer := a.Here()

	// Entries to take: RCX = used.idx - last_used (mod 2^16), at most Batch.
	a.MovImm(RBX, s.Used)
	a.waitFor(func() {
		a.Load16(RAX, RBX, 2)
		a.Mov(RCX, RAX)
		a.Sub(RCX, RDI)
		a.AddImm(RCX, int32(n))
		a.AndImm32(RCX, 0xffff)
	}, NotEqual, Equal, RXEmptyWaits)
	a.MovImm(RDX, b)
	small := a.NewLabel()
	a.Cmp(RCX, RDX)
	a.J(Below, small)
	a.Mov(RCX, RDX)
	a.Bind(small)
	a.Store64(RBP, rxOldAvail, RDI)

	take := a.Here()
	a.Mov(RDX, RDI)
	a.AndImm32(RDX, uint32(n-1)) // last_used mod Size (RDI - Size mod Size)
	a.Shl(RDX, 3)
	a.MovImm(RBX, s.Used)
	a.Add(RDX, RBX) // used.ring[last_used] is at RDX+4: id, then len
	a.Load32(RAX, RDX, 4)
	a.AndImm32(RAX, uint32(n-1)) // the device's id, kept inside the queue
	a.Mov(RBX, RDI)
	a.AndImm32(RBX, uint32(n-1)) // avail.ring[RDI mod Size]
	a.Add(RBX, RBX)
	a.AddImm(RBX, int32(s.Avail))
	a.Store16(RBX, 4, RAX) // the buffer goes back (published with avail.idx below)
	if shift := uint8(bits.TrailingZeros64(s.Stride)); shift != 0 {
		a.Shl(RAX, shift)
	}
	a.MovImm(RBX, s.Buf0)
	a.Add(RAX, RBX) // RAX: the buffer
	other, next, noBytes := a.NewLabel(), a.NewLabel(), a.NewLabel()
	if s.Match != 0 {
		a.CmpMem32Imm(RAX, int32(s.MatchOff), s.Match)
		a.J(NotEqual, other)
	}
	a.Load32(RBX, RDX, 8)
	a.CmpImm(RBX, int32(s.HdrLen))
	a.J(Below, noBytes) // shorter than a header: no frame bytes
	a.AddImm(RBX, -int32(s.HdrLen))
	a.AddMem64(RBP, RXBytes, RBX)
	a.Bind(noBytes)
	if s.SeqOff != 0 {
		a.seqCheck(int32(s.SeqOff), a.NewLabel())
	}
	a.Inc(RSI)
	if s.Match != 0 {
		a.Jmp(next)
		a.Bind(other)
		a.LockInc64(RBP, RXOther)
	}
	a.Bind(next)
	a.Inc(RDI)
	a.Dec(RCX)
	a.J(NotEqual, take)

	a.Bind(kickLabel)
	a.MovImm(RBX, s.Avail)
	a.Store16(RBX, 2, RDI) // avail.idx: the whole batch at once
	a.Store64(RBP, RXFrames, RSI)
	noKick := a.NewLabel()
	a.Mfence()
	a.MovImm(RBX, s.Used)
	if s.EventIdx {
		// vring_need_event: (u16)(new - event - 1) < (u16)(new - old).
		a.Load16(RAX, RBX, usedEvent)
		a.Mov(RCX, RDI)
		a.Sub(RCX, RAX)
		a.Dec(RCX)
		a.AndImm32(RCX, 0xffff)
		a.Load64(RAX, RBP, rxOldAvail)
		a.Mov(RDX, RDI)
		a.Sub(RDX, RAX)
		a.AndImm32(RDX, 0xffff)
		a.Cmp(RCX, RDX)
		a.J(AboveEqual, noKick)
	} else {
		a.Load16(RAX, RBX, 0)
		a.AndImm32(RAX, 1) // VRING_USED_F_NO_NOTIFY
		a.J(NotEqual, noKick)
	}
	a.MovImm(RDX, s.Doorbell)
	a.MovImm(RAX, uint64(s.Queue))
	a.Store16(RDX, 0, RAX)
	a.LockInc64(RBP, RXKicks)
	a.Bind(noKick)
	a.feed(s.Feed, s.FeedKick)
	a.MovImm(RAX, s.Frames)
	a.Cmp(RSI, RAX)
	a.J(Below, outer)
	a.Mov(RAX, RSI)
	a.Report(DoneAddr)
	a.Halt()
	return a.Assemble()
}
