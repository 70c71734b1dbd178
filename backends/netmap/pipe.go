package netmap

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// pipeLink is the RX kring a pipe end's TX ring delivers to; nil once the peer closed.
type pipeLink struct {
	peer atomic.Pointer[Kring]
}

// NewPipe creates a netmap pipe: master "base{id" and slave "base}id", two ports with
// one TX and one RX ring each, in one region (cfg.Region, else a new one sized for the
// pair). A txsync on either end moves complete frames into the other end's RX ring by
// swapping buffers (buf_idx exchanged, NS_BUF_CHANGED set on both slots), never
// copying payload. cfg.Name is ignored; ring counts are forced to one pair.
func NewPipe(base, id string, cfg PortConfig) (master, slave *Port, err error) {
	cfg.TxRings, cfg.RxRings, cfg.HostRings = 1, 1, 0
	if cfg.RxSlots == 0 {
		cfg.RxSlots = cfg.TxSlots
	}
	if cfg.TxSlots == 0 {
		cfg.TxSlots = cfg.RxSlots
	}
	cfg.Name = base + "{" + id
	c, err := cfg.normalize()
	if err != nil {
		return nil, nil, err
	}
	reg := c.Region
	if reg == nil {
		rc, err := RegionConfigFor(c, 1)
		if err != nil {
			return nil, nil, err
		}
		if reg, err = NewRegion(rc); err != nil {
			return nil, nil, err
		}
		defer reg.Close() // the ports hold their own references
	}
	c.Region = reg
	if master, err = NewPort(c); err != nil {
		return nil, nil, err
	}
	c.Name = base + "}" + id
	if slave, err = NewPort(c); err != nil {
		master.Close()
		return nil, nil, err
	}
	linkPipe(master, slave)
	linkPipe(slave, master)
	return master, slave, nil
}

// linkPipe makes from's TX ring deliver into to's RX ring.
func linkPipe(from, to *Port) {
	l := &pipeLink{}
	l.peer.Store(to.rx[0])
	tk := from.tx[0]
	tk.SetSync(func(k *Kring, _ SyncFlags) error { return pipeTxSync(k, l) })
	// Released RX slots may unblock the sender: tell its TX ring (netmap's pipe
	// rxsync notifies the peer TX kring the same way). No TX lock is taken here.
	to.rx[0].SetSync(func(k *Kring, _ SyncFlags) error {
		if k.Released() > 0 {
			tk.Notify()
		}
		return nil
	})
	// When the receiving end closes, stop delivering: taking the TX kring lock waits
	// for a running sync to finish.
	to.OnClose(func() {
		tk.mu.Lock()
		l.peer.Store(nil)
		tk.mu.Unlock()
	})
}

// pipeTxSync hands the frames in [hwcur, rhead) of tk to the peer's RX ring.
// Called with tk's lock held. The peer's RX kring lock is taken only twice per
// sync, to lease slots and to complete the lease, not while slots are swapped: the
// receiver's rxsync (on another thread) runs meanwhile instead of waiting.
func pipeTxSync(tk *Kring, l *pipeLink) error {
	end := tk.rhead
	if tk.hwcur == end {
		return nil
	}
	rk := l.peer.Load()
	var lease Lease
	if rk != nil {
		var closed bool
		var err error
		if lease, closed, err = rk.pipeReserve(tk.dist(tk.hwcur, end)); err != nil {
			return err
		}
		if closed {
			rk = nil
		}
	}
	if rk == nil {
		// Peer closed: discard, so the sender never stalls.
		n := tk.dist(tk.hwcur, end)
		tk.CountDropped(uint64(n))
		tk.TxDone(end)
		return nil
	}
	t, used := pipeMove(tk, rk, lease, end)
	rk.RxComplete(lease, used) // hwtail moves and the receiver is notified
	tk.TxDone(t)
	return nil
}

// pipeReserve leases up to n slots of rk for a pipe's TX sync (the only filler of a
// pipe's RX ring: the sender's TX lock serialises them). closed: the ring's port
// closed, discard.
func (rk *Kring) pipeReserve(n uint32) (l Lease, closed bool, err error) {
	rk.mu.Lock()
	defer rk.mu.Unlock()
	if rk.closed {
		return Lease{}, true, nil
	}
	if rk.hwlease != rk.hwtail {
		return Lease{}, false, fmt.Errorf("netmap: pipe %s: rx ring has leases outstanding", rk.name)
	}
	if n = min(n, rk.rxSpaceLocked()); n == 0 {
		return Lease{}, false, nil
	}
	l = Lease{Start: rk.hwlease, N: n}
	rk.hwlease = rk.add(rk.hwlease, n)
	l.seq = rk.leases.push(rk.hwlease)
	return l, false, nil
}

// pipeMove swaps whole frames from tk's slots [hwcur, end) into the lease's slots of
// rk, and returns the TX position after the last frame consumed (moved or dropped)
// and how many RX slots it filled. Every slot is read once; buffer indices from
// either ring are checked before they are swapped.
func pipeMove(tk, rk *Kring, lease Lease, end uint32) (t, used uint32) {
	tn, rn := tk.num, rk.num
	ts := tk.slots()
	rs := rk.slots()
	t = tk.hwcur
	r := lease.Start
	space := lease.N
	for t != end {
		// One-slot frames, the common case, in runs that wrap in neither ring.
		if k := min(space, tk.dist(t, end), tn-t, rn-r); k > 0 {
			to, ro := uint64(t)*SlotSize, uint64(r)*SlotSize
			n := pipeRun(tk, ts[to:to+uint64(k)*SlotSize], rs[ro:ro+uint64(k)*SlotSize])
			if t += n; t == tn {
				t = 0
			}
			if r += n; r == rn {
				r = 0
			}
			space -= n
			used += n
			if n == k {
				continue
			}
		}
		if t == end {
			break
		}
		o := uint64(t) * SlotSize
		if binary.LittleEndian.Uint16(ts[o+SlotFlagsOff:])&NSMoreFrag == 0 {
			return t, used // a one-slot frame and no room for it
		}
		var ok bool
		if t, r, space, used, ok = pipeChain(tk, rk, ts, rs, t, r, end, space, used); !ok {
			return t, used
		}
	}
	return t, used
}

// pipeRun swaps one-slot frames from the TX slots tr into the RX slots rr (runs of
// equal length) until a TX slot has NS_MOREFRAG, and returns how many it swapped.
// Per slot: one 8-byte load of the TX slot (buf_idx | len<<32 | flags<<48), the RX
// buf_idx, then four stores, the fewest that leave both slots as pipeSwap does.
func pipeRun(tk *Kring, tr, rr []byte) uint32 {
	le := binary.LittleEndian
	reg := tk.reg
	bufSize := reg.BufSize()
	// Valid buffers are [ReservedBufs, NumBufs): one unsigned compare of idx-lo.
	lo, nvalid := uint32(ReservedBufs), reg.NumBufs()-ReservedBufs
	const changed = uint64(NSBufChanged) << 48
	n := uint32(0)
	for o := 0; o+SlotSize <= len(tr) && o+SlotSize <= len(rr); o += SlotSize {
		ts := (*[SlotSize]byte)(tr[o : o+SlotSize])
		rs := (*[SlotSize]byte)(rr[o : o+SlotSize])
		tw := le.Uint64(ts[:8]) // read once
		if uint16(tw>>48)&NSMoreFrag != 0 {
			break
		}
		rbuf := le.Uint32(rs[:4])
		if uint32(tw)-lo < nvalid && rbuf-lo < nvalid && uint32(tw>>32)&0xffff <= bufSize {
			le.PutUint64(rs[:8], tw|changed)
			le.PutUint64(rs[8:], le.Uint64(ts[8:])) // ptr
			le.PutUint32(ts[:4], rbuf)              // len stays
			le.PutUint16(ts[SlotFlagsOff:], NSBufChanged)
		} else {
			tk.badSlots.Add(1)
			le.PutUint32(rs[4:8], 0) // len 0, no flags; both buffers stay
		}
		n++
	}
	return n
}

// pipeChain moves (or drops) the MOREFRAG chain at TX slot t, the slow path of
// pipeMove; ok is false when pipeMove must stop (an open chain, or no room).
func pipeChain(tk, rk *Kring, ts, rs []byte, t, r, end, space, used uint32) (nt, nr, nspace, nused uint32, ok bool) {
	rn := rk.num
	n, p, complete := pipeFrame(tk, t, end)
	if !complete {
		if end == tk.rtail || n >= rn-1 {
			tk.dropped.Add(1) // can never complete or never fit: drop it
			t = p
		}
		return t, r, space, used, false
	}
	if n > space {
		if n > rn-1 {
			tk.dropped.Add(1)
			return p, r, space, used, true
		}
		return t, r, space, used, false // peer RX full: the rest stays pending
	}
	le := binary.LittleEndian
	for ; t != p; t = tk.Next(t) {
		o := uint64(t) * SlotSize
		tsl := ts[o : o+SlotSize : o+SlotSize]
		pipeSwap(tk, tsl, rs, le.Uint64(tsl), r)
		if r++; r == rn {
			r = 0
		}
	}
	return t, r, space - n, used + n, true
}

// pipeFrame measures the frame starting at TX slot t: its slot count, the position
// after it, and whether it ends before end.
func pipeFrame(tk *Kring, t, end uint32) (n, p uint32, complete bool) {
	for p = t; p != end; {
		n++
		fl := getSlot(tk.mem, tk.slotOff(p)).Flags
		p = tk.Next(p)
		if fl&NSMoreFrag == 0 {
			return n, p, true
		}
	}
	return n, p, false
}

// pipeSwap moves TX slot tsl, whose first 8 bytes (buf_idx | len<<32 | flags<<48)
// were read once as tw, into RX slot r of rs: buffers exchanged, NS_BUF_CHANGED on
// both; a bad buffer on either side delivers an empty fragment and keeps both.
func pipeSwap(tk *Kring, tsl, rs []byte, tw uint64, r uint32) {
	le := binary.LittleEndian
	reg := tk.reg
	ro := uint64(r) * SlotSize
	rsl := rs[ro : ro+SlotSize : ro+SlotSize]
	tbuf, tlen, tflags := uint32(tw), uint32(tw>>32)&0xffff, uint16(tw>>48)
	rbuf := le.Uint32(rsl)
	if reg.ValidBuf(tbuf) && reg.ValidBuf(rbuf) && tlen <= reg.BufSize() {
		le.PutUint64(rsl, uint64(tbuf)|uint64(tlen)<<32|uint64(tflags|NSBufChanged)<<48)
		le.PutUint64(rsl[8:], le.Uint64(tsl[8:])) // ptr
		le.PutUint64(tsl, uint64(rbuf)|uint64(tlen)<<32|uint64(NSBufChanged)<<48)
		return
	}
	tk.badSlots.Add(1)
	le.PutUint32(rsl[4:], uint32(tflags&NSMoreFrag)<<16) // len 0
}
