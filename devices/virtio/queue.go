package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

// Descriptor flags, ring flags and limits of the split virtqueue.
const (
	DescFNext     = 1
	DescFWrite    = 2
	DescFIndirect = 4

	AvailFNoInterrupt = 1
	UsedFNoNotify     = 1

	MaxQueueSize = 32768
	descSize     = 16
)

// ErrBroken is wrapped by every error that means the driver corrupted the ring itself;
// the device must then be marked DEVICE_NEEDS_RESET.
var ErrBroken = errors.New("virtqueue broken by the driver")

// Buf is one descriptor's buffer: Data aliases guest memory (checked to lie inside one
// RAM region), Write tells whether the device may write it.
type Buf struct {
	Data  []byte
	GPA   uint64
	Write bool
}

// Chain is one descriptor chain popped from the avail ring. Device-readable buffers
// come first (the parser enforces it), then device-writable ones.
type Chain struct {
	Head     uint16
	Bufs     []Buf
	NRead    int    // number of readable buffers (Bufs[:NRead])
	ReadLen  uint64 // total bytes in readable buffers
	WriteLen uint64 // total bytes in writable buffers
	Descs    int    // descriptors it occupies in the ring's table (1 for an indirect chain)
	pos      uint16 // avail index it was taken from
}

// Readable returns the device-readable buffers.
func (c *Chain) Readable() []Buf { return c.Bufs[:c.NRead] }

// Writable returns the device-writable buffers.
func (c *Chain) Writable() []Buf { return c.Bufs[c.NRead:] }

// QueueConfig is what the driver programmed for one queue.
type QueueConfig struct {
	Size                   uint16 // power of two, 1..MaxQueueSize
	Desc, Avail, Used      uint64 // guest-physical ring addresses
	EventIdx, IndirectDesc bool   // negotiated VIRTIO_F_RING_EVENT_IDX / _INDIRECT_DESC
}

// QueueStats are a queue's counters, each monotonic.
type QueueStats struct {
	Popped     uint64 // chains handed to the device (a chain given back by Unpop counts again)
	Pushed     uint64 // used entries written (including dropped chains)
	Dropped    uint64 // malformed chains returned unprocessed
	Interrupts uint64 // times NeedInterrupt said yes
	Suppressed uint64 // times NeedInterrupt said no after new used entries
}

// Queue is the device side of one split virtqueue.
//
// Concurrency: a Queue belongs to one goroutine (its worker) except Stats, which any
// goroutine may call. The guest driver runs concurrently on other CPUs; the shared
// indices are accessed with atomics:
//   - avail.idx is loaded atomically before the ring entries and descriptors it
//     covers are read (acquire: the driver wrote them before it bumped idx);
//   - used entries are written before used.idx is stored atomically (release), and
//     that store is a full barrier, so the following read of avail.flags/used_event
//     for the interrupt decision cannot be satisfied before the guest can see idx;
//   - avail_event (or used.flags) is stored with a full barrier before avail.idx is
//     re-checked, so a kick the guest decided to skip is never lost.
//
// Service loops use Drain, which pops, re-arms and re-checks in that order within a
// budget, so that no loop can forget the re-check or run unbounded.
type Queue struct {
	mem      *memory.Memory
	size     uint16
	mask     uint16
	desc     []byte // size*16 bytes
	availRng []byte // 4 + 2*size (+2 with EVENT_IDX)
	usedRng  []byte // 4 + 8*size (+2 with EVENT_IDX)
	eventIdx bool
	indirect bool

	lastAvail  uint16 // next avail index to consume
	usedIdx    uint16 // shadow of used.idx, published by Flush
	published  uint16 // used.idx last stored to the ring
	signalled  uint16 // used.idx at the last interrupt decision
	usedFlags  uint16
	brokenErr  error
	dropReason string

	popped, pushed, dropped, interrupts, suppressed atomic.Uint64
}

// NewQueue validates cfg against guest memory and returns the queue, starting at
// index 0 on both rings (as after the driver enabled it).
func NewQueue(mem *memory.Memory, cfg QueueConfig) (*Queue, error) {
	n := uint64(cfg.Size)
	if n == 0 || n > MaxQueueSize || bits.OnesCount64(n) != 1 {
		return nil, fmt.Errorf("virtio: queue size %d is not a power of two up to %d: %w", n, MaxQueueSize, ErrBroken)
	}
	if cfg.Desc%16 != 0 || cfg.Avail%2 != 0 || cfg.Used%4 != 0 {
		return nil, fmt.Errorf("virtio: misaligned rings desc=%#x avail=%#x used=%#x: %w", cfg.Desc, cfg.Avail, cfg.Used, ErrBroken)
	}
	extra := uint64(0)
	if cfg.EventIdx {
		extra = 2
	}
	q := &Queue{mem: mem, size: cfg.Size, mask: cfg.Size - 1, eventIdx: cfg.EventIdx, indirect: cfg.IndirectDesc}
	var err error
	if q.desc, err = mem.Slice(cfg.Desc, n*descSize); err != nil {
		return nil, fmt.Errorf("virtio: descriptor table: %v: %w", err, ErrBroken)
	}
	if q.availRng, err = mem.Slice(cfg.Avail, 4+2*n+extra); err != nil {
		return nil, fmt.Errorf("virtio: avail ring: %v: %w", err, ErrBroken)
	}
	if q.usedRng, err = mem.Slice(cfg.Used, 4+8*n+extra); err != nil {
		return nil, fmt.Errorf("virtio: used ring: %v: %w", err, ErrBroken)
	}
	return q, nil
}

// Size is the queue size.
func (q *Queue) Size() uint16 { return q.size }

// Broken returns the error that broke the queue, or nil.
func (q *Queue) Broken() error { return q.brokenErr }

// LastDrop describes the last malformed chain (for logs and tests).
func (q *Queue) LastDrop() string { return q.dropReason }

// Stats returns a snapshot of the counters.
func (q *Queue) Stats() QueueStats {
	return QueueStats{
		Popped: q.popped.Load(), Pushed: q.pushed.Load(), Dropped: q.dropped.Load(),
		Interrupts: q.interrupts.Load(), Suppressed: q.suppressed.Load(),
	}
}

func (q *Queue) fail(format string, args ...any) error {
	if q.brokenErr == nil {
		q.brokenErr = fmt.Errorf("virtio: "+format+": %w", append(args, ErrBroken)...)
	}
	return q.brokenErr
}

func (q *Queue) availIdx() uint16 { return load16(q.availRng[2:]) }

// Pending is the number of chains the driver made available and Pop has not taken
// yet, or an error if avail.idx ran more than a queue size ahead.
func (q *Queue) Pending() (int, error) {
	if q.brokenErr != nil {
		return 0, q.brokenErr
	}
	n := q.availIdx() - q.lastAvail
	if n > q.size {
		return 0, q.fail("avail index jumped %d entries ahead of a %d-entry queue", n, q.size)
	}
	return int(n), nil
}

// Pop takes the next available chain into c (reusing c.Bufs). It returns false when
// the ring is empty. Malformed chains are returned to the driver with nothing written
// (counted in Dropped) and skipped; the caller must Flush after popping, as for its own
// Push calls. A non-nil error means the ring is broken.
//
// One call skips at most a queue size of malformed chains and then returns false even
// if more are pending, so a driver that posts garbage as fast as it is dropped cannot
// hold the caller; Drain looks again within its budget.
func (q *Queue) Pop(c *Chain) (bool, error) {
	for drops := 0; drops < int(q.size); drops++ {
		n, err := q.Pending()
		if err != nil || n == 0 {
			return false, err
		}
		slot := int(q.lastAvail&q.mask)*2 + 4
		head := binary.LittleEndian.Uint16(q.availRng[slot:])
		if head >= q.size {
			return false, q.fail("avail entry %d names descriptor %d of %d", q.lastAvail, head, q.size)
		}
		c.pos = q.lastAvail
		q.lastAvail++
		if err := q.parse(head, c); err != nil {
			q.dropReason = err.Error()
			q.dropped.Add(1)
			q.Push(head, 0)
			continue
		}
		q.popped.Add(1)
		return true, nil
	}
	return false, nil
}

// Unpop gives back c, the chain the last Pop returned, so that the next Pop returns it
// again (e.g. the backend had no room for it). It refuses, returning false, for any
// other chain: rewinding over chains consumed since, a malformed one among them already
// returned to the driver, would hand those out a second time.
func (q *Queue) Unpop(c *Chain) bool {
	if c.pos+1 != q.lastAvail {
		return false
	}
	q.lastAvail = c.pos
	return true
}

// Verdict is what a Drain callback did with a chain.
type Verdict int

const (
	// Next: the chain is consumed (pushed now or kept by the caller); hand over the next.
	Next Verdict = iota
	// Stop: the chain is consumed; stop here.
	Stop
	// Refuse: the chain is not consumed (e.g. the backend is full); Drain gives it back
	// with Unpop, so it stays first in the ring, and stops.
	Refuse
)

// drainRechecks bounds how often one Drain finds the ring empty, re-arms and finds it
// non-empty again without handing out a chain (a driver racing garbage at the device).
const drainRechecks = 4

// Drain is the one service loop of a queue. It pops chains and hands each to fn until
// fn says Stop or Refuse, budget chains were handed out, or the ring is empty. When
// the ring runs dry it re-arms notifications (EnableNotify) and looks once more: a
// driver that published a chain while notifications were off did not kick for it, so
// the caller may sleep only after that re-check found nothing.
//
// It returns more = true when the caller must come back without waiting for a kick:
// budget used up, fn stopped or refused, or chains kept arriving; notifications may
// then still be off. more = false means the ring was seen empty after re-arming (sleep
// until a kick) or the queue is broken (see Broken). Drain never blocks and does a
// bounded amount of work. The caller flushes (Flush or NeedInterrupt) afterwards.
func (q *Queue) Drain(c *Chain, budget int, fn func(c *Chain) Verdict) (more bool) {
	handed, rechecks := 0, 0
	for handed < budget {
		ok, err := q.Pop(c)
		if err != nil {
			return false
		}
		if !ok {
			// Empty (or garbage skipped): ask for a kick, then look again.
			if !q.EnableNotify() || q.brokenErr != nil {
				return false
			}
			if rechecks++; rechecks > drainRechecks {
				return true
			}
			continue
		}
		handed++
		switch fn(c) {
		case Stop:
			return true
		case Refuse:
			q.Unpop(c)
			return true
		}
	}
	return true
}

// parse reads the chain starting at head into c.
func (q *Queue) parse(head uint16, c *Chain) error {
	c.Head, c.Bufs, c.NRead, c.ReadLen, c.WriteLen, c.Descs = head, c.Bufs[:0], 0, 0, 0, 1
	table := q.desc
	limit := int(q.size) // chain bound: longer means a loop or an oversized chain
	indirect := false
	idx := int(head)
	for steps := 0; ; steps++ {
		if !indirect {
			c.Descs = steps + 1
		}
		if steps >= limit {
			return fmt.Errorf("chain at %d longer than %d descriptors (loop?)", head, limit)
		}
		if idx >= len(table)/descSize {
			return fmt.Errorf("chain at %d: next %d outside a %d-entry table", head, idx, len(table)/descSize)
		}
		// Read the descriptor once; the guest may change it under us.
		var d [descSize]byte
		copy(d[:], table[idx*descSize:])
		addr := binary.LittleEndian.Uint64(d[0:])
		ln := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&DescFIndirect != 0 {
			switch {
			case indirect:
				return fmt.Errorf("chain at %d: indirect table inside an indirect table", head)
			case !q.indirect:
				return fmt.Errorf("chain at %d: indirect descriptor without VIRTIO_F_INDIRECT_DESC", head)
			case flags&DescFNext != 0 || len(c.Bufs) > 0:
				return fmt.Errorf("chain at %d: indirect descriptor must be the only one in its chain", head)
			case ln == 0 || ln%descSize != 0 || ln/descSize > MaxQueueSize:
				return fmt.Errorf("chain at %d: indirect table of %d bytes", head, ln)
			}
			t, err := q.mem.Slice(addr, uint64(ln))
			if err != nil {
				return fmt.Errorf("chain at %d: indirect table: %v", head, err)
			}
			table, limit, idx, indirect, steps = t, int(ln/descSize), 0, true, -1
			continue
		}
		data, err := q.mem.Slice(addr, uint64(ln))
		if err != nil {
			return fmt.Errorf("chain at %d: buffer: %v", head, err)
		}
		w := flags&DescFWrite != 0
		if w {
			c.WriteLen += uint64(ln)
		} else {
			if len(c.Bufs) > c.NRead {
				return fmt.Errorf("chain at %d: readable buffer after a writable one", head)
			}
			c.NRead++
			c.ReadLen += uint64(ln)
		}
		c.Bufs = append(c.Bufs, Buf{Data: data, GPA: addr, Write: w})
		if flags&DescFNext == 0 {
			return nil
		}
		idx = int(next)
	}
}

// Push records that the chain at head is done with written bytes stored in its
// writable buffers. The driver sees it after Flush.
func (q *Queue) Push(head uint16, written uint32) {
	off := 4 + int(q.usedIdx&q.mask)*8
	binary.LittleEndian.PutUint32(q.usedRng[off:], uint32(head))
	binary.LittleEndian.PutUint32(q.usedRng[off+4:], written)
	q.usedIdx++
	q.pushed.Add(1)
}

// Flush publishes the used entries pushed so far (release store of used.idx, a full
// barrier). It returns whether any were new.
func (q *Queue) Flush() bool {
	if q.usedIdx == q.published {
		return false
	}
	store16(q.usedRng[2:], q.usedIdx)
	q.published = q.usedIdx
	return true
}

// NeedInterrupt flushes and reports whether the driver wants an interrupt for the
// used entries published since the last decision: used_event with EVENT_IDX, else
// the avail ring's NO_INTERRUPT flag.
func (q *Queue) NeedInterrupt() bool {
	q.Flush()
	if q.published == q.signalled {
		return false
	}
	old := q.signalled
	q.signalled = q.published
	var need bool
	if q.eventIdx {
		ev := load16(q.availRng[4+2*int(q.size):])
		need = needEvent(ev, q.published, old)
	} else {
		need = load16(q.availRng[0:])&AvailFNoInterrupt == 0
	}
	if need {
		q.interrupts.Add(1)
	} else {
		q.suppressed.Add(1)
	}
	return need
}

// needEvent is the EVENT_IDX rule: notify iff event lies in [old, new).
func needEvent(event, newIdx, old uint16) bool {
	return newIdx-event-1 < newIdx-old
}

// DisableNotify asks the driver not to kick (the worker is polling anyway).
func (q *Queue) DisableNotify() {
	if q.eventIdx {
		return // the driver kicks only when it passes avail_event, which we stop moving
	}
	q.usedFlags |= UsedFNoNotify
	store16(q.usedRng[0:], q.usedFlags)
}

// EnableNotify asks the driver to kick for the next chain and reports whether chains
// arrived meanwhile (then the caller must keep processing instead of sleeping). Service
// loops use Drain, which calls it when the ring runs dry and honours the answer.
func (q *Queue) EnableNotify() bool {
	if q.eventIdx {
		store16(q.usedRng[4+8*int(q.size):], q.lastAvail)
	} else {
		q.usedFlags &^= UsedFNoNotify
		store16(q.usedRng[0:], q.usedFlags)
	}
	// store16 was a full barrier: this load sees any chain the driver published
	// before it read our flag, so no kick can be lost.
	p, err := q.Pending()
	return p > 0 || err != nil
}
