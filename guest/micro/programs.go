package micro

import "fmt"

// MMIO addresses through which a guest reports to the test: nothing is mapped there,
// so a store exits to the VMM. (MMIO rather than port I/O because software KVM (PVM)
// does not honour IOPL for CPL3 guest code: IN/OUT at CPL3 raise #GP there.)
const (
	ReadyAddr = 0xfebf_f000 // "set up, go ahead"
	DoneAddr  = 0xfebf_f008 // finished; the 32-bit value stored is the result
)

// Platform addresses the programs touch (x86 defaults, handled inside KVM with the
// in-kernel irqchip).
const (
	LAPICBase  = 0xfee0_0000
	LAPICEOI   = LAPICBase + 0xb0
	LAPICSVR   = LAPICBase + 0xf0
	IOAPICBase = 0xfec0_0000
)

// OutPort32 writes val to port (clobbers RAX, RDX). Port I/O needs CPL0 on software
// KVM (see ReadyAddr).
func (a *Asm) OutPort32(port uint16, val uint32) {
	a.MovImm(RDX, uint64(port))
	a.MovImm(RAX, uint64(val))
	a.Out32()
}

// Report stores EAX at addr (ReadyAddr or DoneAddr), clobbering RDX.
func (a *Asm) Report(addr uint64) {
	a.MovImm(RDX, addr)
	a.Store32(RDX, 0, RAX)
}

// Halt ends the program: a tight loop (HLT would fault at CPL3).
func (a *Asm) Halt() {
	l := a.Here()
	a.Pause()
	a.Jmp(l)
}

// StoreImm32 writes val to the 32-bit location at addr (clobbers RBX and RAX).
func (a *Asm) StoreImm32(addr uint64, val uint32) {
	a.MovImm(RBX, addr)
	a.MovImm(RAX, uint64(val))
	a.Store32(RBX, 0, RAX)
}

// ConfigAddress is the mechanism #1 address of bus 0, function 0, slot, reg.
func ConfigAddress(slot int, reg uint8) uint32 {
	return 0x8000_0000 | uint32(slot)<<11 | uint32(reg&0xfc)
}

// ConfigRead32 reads config dword reg of slot into EAX (clobbers RDX).
func (a *Asm) ConfigRead32(slot int, reg uint8) {
	a.OutPort32(0xcf8, ConfigAddress(slot, reg))
	a.MovImm(RDX, 0xcfc)
	a.In32()
}

// ConfigWrite32 writes a config dword (clobbers RAX, RDX).
func (a *Asm) ConfigWrite32(slot int, reg uint8, val uint32) {
	a.OutPort32(0xcf8, ConfigAddress(slot, reg))
	a.MovImm(RDX, 0xcfc)
	a.MovImm(RAX, uint64(val))
	a.Out32()
}

// ConfigWrite16 writes a config word at reg (2-byte aligned) through port 0xCFC+(reg&3).
func (a *Asm) ConfigWrite16(slot int, reg uint8, val uint16) {
	a.OutPort32(0xcf8, ConfigAddress(slot, reg))
	a.MovImm(RDX, 0xcfc+uint64(reg&3))
	a.MovImm(RAX, uint64(val))
	a.Out16()
}

// EnableLAPIC sets the software-enable bit in the spurious vector register (vector 0xFF).
func (a *Asm) EnableLAPIC() { a.StoreImm32(LAPICSVR, 0x1ff) }

// IOAPICRoute programs IOAPIC pin to deliver vector to APIC 0, unmasked; level selects
// level-triggered (what INTx with a resample irqfd needs).
func (a *Asm) IOAPICRoute(pin int, vector uint8, level bool) {
	lo := uint32(vector)
	if level {
		lo |= 1 << 15
	}
	a.StoreImm32(IOAPICBase, uint32(0x10+2*pin+1))
	a.StoreImm32(IOAPICBase+0x10, 0) // destination APIC 0
	a.StoreImm32(IOAPICBase, uint32(0x10+2*pin))
	a.StoreImm32(IOAPICBase+0x10, lo)
}

// CountingHandler emits an interrupt handler that increments the qword at counter,
// writes the LAPIC EOI register and returns; it returns the handler's label. Eight
// instructions: it runs at CPL0, which software KVM emulates.
func (a *Asm) CountingHandler(counter uint64) Label {
	l := a.Here()
	a.Push(RBX)
	a.MovImm(RBX, counter)
	a.LockInc64(RBX, 0)
	a.MovImm(RBX, LAPICEOI)
	a.Store32(RBX, 0, RBX) // any value acknowledges
	a.Pop(RBX)
	a.Iretq()
	return l
}

// SpinUntil spins until the qword at counter is >= target (unsigned), leaving it in
// RAX (clobbers RBX, RCX).
func (a *Asm) SpinUntil(counter, target uint64) {
	a.MovImm(RBX, counter)
	a.MovImm(RCX, target)
	wait := a.Here()
	a.Load64(RAX, RBX, 0)
	a.Cmp(RAX, RCX)
	a.J(Below, wait)
}

// WaitCounter spins until the qword at counter is >= target (unsigned), then reports
// the counter at DoneAddr and stops.
func (a *Asm) WaitCounter(counter, target uint64) {
	a.SpinUntil(counter, target)
	a.Report(DoneAddr)
	a.Halt()
}

// Doorbells rings n times: a 32-bit MMIO store of val at addr, or a 32-bit OUT to port
// addr when pio. The loop is the store (or OUT) plus DEC and JNZ: nothing else touches
// memory. Then it reports n at DoneAddr. Port I/O doorbells need CPL0 (boot.MicroOptions.Kernel)
// on software KVM. n must be > 0.
func Doorbells(base uint64, n uint64, addr uint64, pio bool, val uint32) ([]byte, error) {
	a := New(base)
	a.MovImm(RCX, n)
	a.MovImm(RAX, uint64(val))
	if pio {
		a.MovImm(RDX, addr)
	} else {
		a.MovImm(RBX, addr)
	}
	loop := a.Here()
	if pio {
		a.Out32()
	} else {
		a.Store32(RBX, 0, RAX)
	}
	a.Dec(RCX)
	a.J(NotEqual, loop)
	a.MovImm(RAX, n)
	a.Report(DoneAddr)
	a.Halt()
	return a.Assemble()
}

// ConfigDump reads the first n config dwords of slot into out[0..n) (guest memory),
// reports n at DoneAddr and stops. It uses port I/O: run it at CPL0 on software KVM.
func ConfigDump(base uint64, slot int, n int, out uint64) ([]byte, error) {
	a := New(base)
	a.MovImm(RDI, out)
	for i := 0; i < n; i++ {
		a.ConfigRead32(slot, uint8(4*i))
		a.Store32(RDI, int32(4*i), RAX)
	}
	a.MovImm(RAX, uint64(n))
	a.Report(DoneAddr)
	a.Halt()
	return a.Assemble()
}

// ToUser drops from CPL0 to CPL3 (IRETQ to the next instruction with the micro
// loader's user selectors and IOPL 3), keeping RSP; ifFlag sets RFLAGS.IF. On software KVM we
// observed interrupts reaching IDT handlers only while the guest runs at CPL3, so a
// guest that needs CPL0 for port I/O during setup calls this before waiting for them.
func (a *Asm) ToUser(userCS, userSS uint16, ifFlag bool) {
	flags := uint64(0x3002) // IOPL 3, reserved bit 1
	if ifFlag {
		flags |= 0x200
	}
	next := a.NewLabel()
	a.Mov(RAX, RSP)
	a.MovImm(RBX, uint64(userSS|3))
	a.Push(RBX)
	a.Push(RAX)
	a.MovImm(RBX, flags)
	a.Push(RBX)
	a.MovImm(RBX, uint64(userCS|3))
	a.Push(RBX)
	a.MovImm(RBX, 0) // patched below: RIP of next
	ripAt := len(a.buf) - 4
	a.Push(RBX)
	a.Iretq()
	a.Bind(next)
	a.patches = append(a.patches, patch{at: ripAt, label: next})
}

// PingPong rings the doorbell at addr (a 32-bit MMIO store) n times, each time waiting
// until the qword at counter (incremented by an interrupt handler) has caught up, then
// reports n at DoneAddr: a guest driver kicking a host worker and waiting for its
// interrupt. Clobbers RAX, RBX, RCX, RDX, RSI, RDI.
func (a *Asm) PingPong(addr, counter, n uint64) {
	a.MovImm(RSI, addr)
	a.MovImm(RBX, counter)
	a.MovImm(RDI, 0)
	a.MovImm(RCX, n)
	loop := a.Here()
	a.Inc(RDI)
	a.Store32(RSI, 0, RAX)
	spin := a.Here()
	a.Load64(RAX, RBX, 0)
	a.Cmp(RAX, RDI)
	a.J(Below, spin)
	a.Cmp(RDI, RCX)
	a.J(Below, loop)
	a.Mov(RAX, RDI)
	a.Report(DoneAddr)
	a.Halt()
}

// waitFor emits check and goes on when it sets condition ok; otherwise it counts one
// wait at [RBP+counter] and spins (pause, check) while notOK (ok's negation) holds.
func (a *Asm) waitFor(check func(), ok, notOK Cond, counter int32) {
	done, spin := a.NewLabel(), a.NewLabel()
	check()
	a.J(ok, done)
	a.LockInc64(RBP, counter)
	a.Bind(spin)
	a.Pause()
	check()
	a.J(notOK, spin)
	a.Bind(done)
}

// VirtqTXSpec describes the transmit side of a split virtqueue that the host set up in
// guest memory as a driver would (descriptor i is a one-buffer chain pointing at
// Buf0+i*Stride, avail ring entries pre-filled) and that VirtqTX keeps feeding.
type VirtqTXSpec struct {
	Avail, Used uint64 // guest-physical addresses of the avail and used rings
	Size        uint16 // queue size (power of two)
	Batch       uint16 // chains published per avail.idx update and kick decision (1..Size)
	Frames      uint64 // total chains to send, a multiple of Batch
	// Doorbell is the queue's notify address (a 16-bit MMIO store of Queue, as the
	// virtio-pci modern notify register wants).
	Doorbell uint64
	Queue    uint16
	// EventIdx: VIRTIO_F_RING_EVENT_IDX was negotiated, so kick only when avail.idx
	// passes avail_event; else kick unless used.flags has NO_NOTIFY.
	EventIdx bool
	// Buf0 and Stride locate buffer i (descriptor i's buffer); SeqOff, if non-zero, is
	// where in the buffer the guest stores the chain's 32-bit sequence number.
	Buf0, Stride, SeqOff uint64
	// Credit, if non-zero, is a qword the host raises as it consumes frames: the guest
	// publishes chain n only once the qword exceeds n (receiver flow control).
	Credit uint64
	// Counters is where the guest counts kicks, waits for ring room and waits for
	// credit (three qwords).
	Counters uint64
}

// VirtqTX is a virtio TX driver loop: for each batch it waits until the device has
// used enough chains that Batch buffers are free again (and, with Credit, until the
// host allows them), stores each chain's sequence number into its buffer and its head
// into the avail ring, publishes avail.idx once, then decides whether to kick as
// Linux's virtqueue_kick_prepare does. x86 keeps stores in order, so the ring
// entries and payload stores are visible before the avail.idx store without a fence;
// the store of avail.idx must be visible before avail_event (or used.flags) is read,
// which takes MFENCE. After the last batch it waits until every chain is used and
// reports Frames (low 32 bits) at DoneAddr. Runs at CPL3; no exit except the report.
func VirtqTX(base uint64, s VirtqTXSpec) ([]byte, error) {
	if s.Size == 0 || s.Size&(s.Size-1) != 0 || s.Batch == 0 || s.Batch > s.Size ||
		s.Frames == 0 || s.Frames%uint64(s.Batch) != 0 || s.Counters == 0 {
		return nil, fmt.Errorf("micro: VirtqTX: bad spec (size %d, batch %d, frames %d, counters %#x)",
			s.Size, s.Batch, s.Frames, s.Counters)
	}
	n, b := uint64(s.Size), uint64(s.Batch)
	const (
		kicks       = 0
		roomWaits   = 8
		creditWaits = 16
	)
	usedEvent := int32(4 + 8*n) // avail_event lives after the used ring
	a := New(base)
	// RSI: chains published (its low 16 bits are avail.idx); RDI: next buffer.
	a.MovImm(RSI, 0)
	a.MovImm(RDI, s.Buf0)
	a.MovImm(RBP, s.Counters)
	outer := a.Here()

	// Room: in flight = (published - used.idx) mod 2^16 must be <= Size-Batch.
	a.MovImm(RBX, s.Used)
	a.MovImm(RDX, n-b)
	a.waitFor(func() {
		a.Load16(RAX, RBX, 2)
		a.Mov(RCX, RSI)
		a.Sub(RCX, RAX)
		a.AndImm32(RCX, 0xffff)
		a.Cmp(RDX, RCX)
	}, AboveEqual, Below, roomWaits)

	if s.Credit != 0 {
		a.MovImm(RBX, s.Credit)
		a.Mov(RCX, RSI)
		a.AddImm(RCX, int32(b))
		a.waitFor(func() {
			a.Load64(RAX, RBX, 0)
			a.Cmp(RAX, RCX)
		}, AboveEqual, Below, creditWaits)
	}

	// Fill the batch: sequence number into the buffer, head into avail.ring.
	a.MovImm(RBX, s.Avail)
	a.MovImm(RCX, b)
	fill := a.Here()
	if s.SeqOff != 0 {
		a.Store32(RDI, int32(s.SeqOff), RSI)
	}
	a.Mov(RAX, RSI)
	a.AndImm32(RAX, uint32(n-1))
	a.Mov(RDX, RAX)
	a.Add(RDX, RDX)
	a.Add(RDX, RBX)
	a.Store16(RDX, 4, RAX) // descriptor i is buffer i: head = slot
	a.AddImm(RDI, int32(s.Stride))
	a.MovImm(RAX, s.Buf0+n*s.Stride)
	wrapped := a.NewLabel()
	a.Cmp(RDI, RAX)
	a.J(Below, wrapped)
	a.MovImm(RDI, s.Buf0)
	a.Bind(wrapped)
	a.Inc(RSI)
	a.Dec(RCX)
	a.J(NotEqual, fill)
	a.Store16(RBX, 2, RSI) // avail.idx: publishes the whole batch

	// Kick decision.
	noKick := a.NewLabel()
	a.Mfence()
	a.MovImm(RBX, s.Used)
	if s.EventIdx {
		// vring_need_event: (u16)(new - event - 1) < (u16)(new - old), new-old = Batch.
		a.Load16(RAX, RBX, usedEvent)
		a.Mov(RCX, RSI)
		a.Sub(RCX, RAX)
		a.Dec(RCX)
		a.AndImm32(RCX, 0xffff)
		a.MovImm(RDX, b)
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
	a.LockInc64(RBP, kicks)
	a.Bind(noKick)
	a.MovImm(RAX, s.Frames)
	a.Cmp(RSI, RAX)
	a.J(Below, outer)

	// Drain: every chain used.
	a.MovImm(RBX, s.Used)
	a.Mov(RCX, RSI)
	a.AndImm32(RCX, 0xffff)
	drain := a.Here()
	a.Pause()
	a.Load16(RAX, RBX, 2)
	a.Cmp(RAX, RCX)
	a.J(NotEqual, drain)
	a.MovImm(RAX, s.Frames&0xffffffff)
	a.Report(DoneAddr)
	a.Halt()
	return a.Assemble()
}

// wrapIndex sets r to 0 when it reached n (clobbers RAX).
func (a *Asm) wrapIndex(r Reg, n uint64) {
	in := a.NewLabel()
	a.MovImm(RAX, n)
	a.Cmp(r, RAX)
	a.J(Below, in)
	a.MovImm(r, 0)
	a.Bind(in)
}
