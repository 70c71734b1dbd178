package netmap

import (
	"encoding/binary"
	"fmt"
)

// Ring is the user (application) side of a netmap ring in mapped memory: what a test,
// a backend adapter or a guest-side driver uses. Its constant fields are read and
// checked once when the view is made, since the memory may be shared with a peer that
// is not trusted.
//
// Concurrency: a Ring is used by one goroutine at a time, the ring's only user.
type Ring struct {
	mem     []byte
	off     uint64
	num     uint32
	bufSize uint32
	bufBase int64 // offset of buffer 0 within mem (may be out of mem for bad rings)
	dir     Dir
}

// NewRing makes a user view of the netmap_ring at off in mem.
func NewRing(mem []byte, off uint64) (*Ring, error) {
	if off%8 != 0 || off > uint64(len(mem)) || uint64(len(mem))-off < RingHeaderSize {
		return nil, fmt.Errorf("netmap: ring at %#x: outside the %d-byte region or misaligned", off, len(mem))
	}
	le := binary.LittleEndian
	h := mem[off:]
	r := &Ring{
		mem:     mem,
		off:     off,
		num:     le.Uint32(h[RingNumSlotsOff:]),
		bufSize: le.Uint32(h[RingBufSizeOff:]),
		dir:     Dir(le.Uint16(h[RingDirOff:]) & 1),
	}
	bufOfs := int64(le.Uint64(h[RingBufOfsOff:]))
	if r.num < MinSlots || r.num > 1<<20 || uint64(len(mem))-off-RingSlotsOff < uint64(r.num)*SlotSize {
		return nil, fmt.Errorf("netmap: ring at %#x: %d slots do not fit the region", off, r.num)
	}
	if r.bufSize < MinBufSize || r.bufSize > MaxBufSize {
		return nil, fmt.Errorf("netmap: ring at %#x: buffer size %d outside %d..%d", off, r.bufSize, MinBufSize, MaxBufSize)
	}
	if bufOfs < -int64(off) || bufOfs > int64(len(mem)) {
		return nil, fmt.Errorf("netmap: ring at %#x: buf_ofs %d points outside the region", off, bufOfs)
	}
	r.bufBase = int64(off) + bufOfs
	return r, nil
}

// NumSlots is num_slots.
func (r *Ring) NumSlots() uint32 { return r.num }

// BufSize is nr_buf_size.
func (r *Ring) BufSize() uint32 { return r.bufSize }

// Dir is the ring direction.
func (r *Ring) Dir() Dir { return r.dir }

// Head, Cur and Tail load the ring indices (Tail is written by the kernel side).
func (r *Ring) Head() uint32 { return load32(r.mem, r.off+RingHeadOff) }
func (r *Ring) Cur() uint32  { return load32(r.mem, r.off+RingCurOff) }
func (r *Ring) Tail() uint32 { return load32(r.mem, r.off+RingTailOff) }

// SetHeadCur publishes cur, then head (the netmap order: slots, cur, head).
func (r *Ring) SetHeadCur(head, cur uint32) {
	store32(r.mem, r.off+RingCurOff, cur)
	store32(r.mem, r.off+RingHeadOff, head)
}

// Flags and SetFlags access netmap_ring.flags (NRTimestamp, NRForward).
func (r *Ring) Flags() uint32     { return load32(r.mem, r.off+RingFlagsOff) }
func (r *Ring) SetFlags(f uint32) { store32(r.mem, r.off+RingFlagsOff, f) }

// Next is nm_ring_next.
func (r *Ring) Next(i uint32) uint32 {
	if i+1 >= r.num {
		return 0
	}
	return i + 1
}

// Space is nm_ring_space: slots the user owns, (tail - head) mod num_slots.
func (r *Ring) Space() uint32 {
	h, t := r.Head(), r.Tail()
	if h >= r.num || t >= r.num {
		return 0
	}
	return (t + r.num - h) % r.num
}

// Empty is nm_ring_empty: head == tail.
func (r *Ring) Empty() bool { return r.Head() == r.Tail() }

// TxPending is nm_tx_pending: the kernel still holds slots (next(tail) != head).
func (r *Ring) TxPending() bool { return r.Next(r.Tail()) != r.Head() }

// Advance moves head and cur n slots past head (after filling or consuming them).
func (r *Ring) Advance(n uint32) {
	h := uint32((uint64(r.Head()) + uint64(n)) % uint64(r.num))
	r.SetHeadCur(h, h)
}

func (r *Ring) slotOff(i uint32) uint64 {
	if i >= r.num {
		i %= r.num
	}
	return r.off + RingSlotsOff + uint64(i)*SlotSize
}

// Slot reads slot i (taken modulo num_slots).
func (r *Ring) Slot(i uint32) Slot { return getSlot(r.mem, r.slotOff(i)) }

// SetSlot writes slot i (taken modulo num_slots).
func (r *Ring) SetSlot(i uint32, s Slot) { putSlot(r.mem, r.slotOff(i), s) }

// Buf is buffer idx (BUF(ring, idx)), or nil if it is not wholly inside the memory.
// Index 0 and 1 are reserved but addressable, as in netmap.
func (r *Ring) Buf(idx uint32) []byte {
	o := r.bufBase + int64(idx)*int64(r.bufSize)
	if o < 0 || o+int64(r.bufSize) > int64(len(r.mem)) {
		return nil
	}
	return r.mem[o : o+int64(r.bufSize) : o+int64(r.bufSize)]
}

// SlotBuf is the buffer of slot i, or nil.
func (r *Ring) SlotBuf(i uint32) []byte { return r.Buf(r.Slot(i).BufIdx) }
