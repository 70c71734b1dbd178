package netmap

import (
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
// Called with tk's lock held; takes the RX kring's lock (TX before RX).
func pipeTxSync(tk *Kring, l *pipeLink) error {
	rk := l.peer.Load()
	if rk != nil {
		rk.mu.Lock()
		if rk.closed {
			rk.mu.Unlock()
			rk = nil
		}
	}
	if rk == nil {
		// Peer closed: discard, so the sender never stalls.
		n := tk.dist(tk.hwcur, tk.rhead)
		tk.CountDropped(uint64(n))
		tk.TxDone(tk.rhead)
		return nil
	}
	if rk.hwlease != rk.hwtail {
		rk.mu.Unlock()
		return fmt.Errorf("netmap: pipe %s: rx ring has leases outstanding", rk.name)
	}
	space := rk.rxSpaceLocked()
	t, r := tk.hwcur, rk.hwtail
	end := tk.rhead
	reg := tk.reg
	bufSize := reg.BufSize()
	for t != end {
		// Measure the next frame; move it only whole.
		n, p, complete := uint32(0), t, false
		for p != end {
			n++
			fl := getSlot(tk.mem, tk.slotOff(p)).Flags
			p = tk.Next(p)
			if fl&NSMoreFrag == 0 {
				complete = true
				break
			}
		}
		if !complete {
			if end == tk.rtail || n >= rk.num-1 {
				tk.dropped.Add(1) // can never complete or never fit: drop it
				t = p
			}
			break
		}
		if n > space {
			if n > rk.num-1 {
				tk.dropped.Add(1)
				t = p
				continue
			}
			break // peer RX full: the rest stays pending
		}
		for ; t != p; t = tk.Next(t) {
			to := tk.slotOff(t)
			ro := rk.slotOff(r)
			ts := getSlot(tk.mem, to)
			rs := getSlot(rk.mem, ro)
			if reg.ValidBuf(ts.BufIdx) && reg.ValidBuf(rs.BufIdx) && uint32(ts.Len) <= bufSize {
				ts.BufIdx, rs.BufIdx = rs.BufIdx, ts.BufIdx
				rs.Len, rs.Ptr = ts.Len, ts.Ptr
				rs.Flags = ts.Flags | NSBufChanged
				ts.Flags = NSBufChanged
				putSlot(tk.mem, to, ts)
			} else {
				// A bad buffer on either side: deliver an empty fragment, keep both
				// buffers where they are.
				tk.badSlots.Add(1)
				rs.Len, rs.Flags = 0, ts.Flags&NSMoreFrag
			}
			putSlot(rk.mem, ro, rs)
			r = rk.Next(r)
		}
		space -= n
	}
	moved := r != rk.hwtail
	rk.hwtail, rk.hwlease = r, r
	rk.mu.Unlock()
	tk.TxDone(t)
	if moved {
		rk.Notify()
	}
	return nil
}
