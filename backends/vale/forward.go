package vale

import (
	"time"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// The forwarding pass (VALE's nm_bdg_preflush + nm_bdg_flush), run as the sync
// function of a switch port's TX kring, so under that kring's lock:
//
//  1. TxScan reads up to BatchSize slots of [hwcur, head) once each (whole frames).
//  2. Pass 1, per frame: drop it if its first fragment is shorter than an Ethernet
//     header or the chain is longer than netmap.MaxFrags, else run the lookup and
//     append it to its destination's queue (a list threaded through ft) or to the
//     broadcast queue.
//  3. Pass 2, per destination: reserve all the slots it needs with one lease (one
//     short lock of its RX kring), copy with no lock held, complete the lease. Frames
//     that do not fit are dropped and counted: the sender never waits.
//  4. TxDone: the TX slots go straight back to the user (tail = hwcur-1).

// fwdEntry is one frame of a batch.
type fwdEntry struct {
	first uint16 // index of its first fragment in fwdState.frags
	nf    uint16 // number of fragments
	next  int16  // next entry of the same destination queue; -1 ends it
	bytes uint32 // frame length (all fragments)
}

// dstQueue is a list of batch entries for one destination.
type dstQueue struct {
	head, tail int16 // -1 when empty
	slots      uint32
}

// fwdState is the scratch of one source TX ring. Only the ring's sync uses it. The
// large arrays (about 55 KiB) are made at the ring's first sync, so idle rings of a
// full switch cost little.
type fwdState struct {
	p        *Port
	ring     int
	frags    []netmap.Frag // BatchSize
	ft       []fwdEntry    // BatchSize
	q        *[MaxPorts]dstQueue
	bq       dstQueue
	touched  [MaxPorts]uint8
	ntouched int
	ts       time.Time // pass timestamp for monitors, zero until needed
	mf       [netmap.MaxFrags][]byte
	inited   bool
}

func (f *fwdState) init() {
	f.frags = make([]netmap.Frag, BatchSize)
	f.ft = make([]fwdEntry, BatchSize)
	f.q = new([MaxPorts]dstQueue)
	for i := range f.q {
		f.q[i] = dstQueue{head: -1, tail: -1}
	}
	f.bq = dstQueue{head: -1, tail: -1}
	f.inited = true
}

// sync is the netmap.SyncFunc of the port's TX ring f.ring.
func (f *fwdState) sync(k *netmap.Kring, _ netmap.SyncFlags) error {
	pos := k.HwCur()
	if pos == k.RHead() {
		return nil // nothing to send; the ring's tail is already hwcur-1
	}
	if !f.inited {
		f.init()
	}
	s := f.p.sw
	s.mu.RLock()
	f.ts = time.Time{}
	for {
		n, next := k.TxScan(pos, f.frags)
		if next == pos {
			break
		}
		if n > 0 {
			f.forward(s, n)
		}
		pos = next
	}
	k.TxDone(pos)
	s.mu.RUnlock()
	return nil
}

func (f *fwdState) now() time.Time {
	if f.ts.IsZero() {
		f.ts = time.Now()
	}
	return f.ts
}

// forward runs passes 1 and 2 over frags[:n] (whole frames). Caller holds s.mu shared.
func (f *fwdState) forward(s *Switch, n int) {
	p := f.p
	src := p.idx
	frags := f.frags[:n]
	custom := s.custom
	txMon := hasDir(p.mon, MonitorTX)
	var txFrames, txBytes, dShort, dSelf, dLookup, dNoPort, dFrags uint64
	nft := int16(0)
	for i := 0; i < n; {
		j := i
		for j < n-1 && frags[j].Flags&netmap.NSMoreFrag != 0 {
			j++
		}
		nf := j - i + 1
		first := frags[i].Data
		first = first[:len(first):len(first)] // the lookup sees the frame, not the buffer
		bytes := uint32(len(first))
		for k := i + 1; k <= j; k++ {
			bytes += uint32(len(frags[k].Data))
		}
		txFrames++
		txBytes += uint64(bytes)
		if txMon {
			f.monitor(p, MonitorTX, frags[i:j+1])
		}
		fi := i
		i = j + 1
		if nf > netmap.MaxFrags {
			dFrags++
			continue
		}
		if len(first) < MinFrame {
			dShort++
			continue
		}
		var d int
		if custom == nil {
			d = s.learn.lookup(first, src, frags[fi].Flags&netmap.NSNoLearn == 0)
		} else {
			d = custom(first, src)
		}
		e := nft
		switch {
		case d == Broadcast:
			f.ft[e] = fwdEntry{first: uint16(fi), nf: uint16(nf), next: -1, bytes: bytes}
			f.bq.push(f.ft, e, uint32(nf))
			nft++
		case d == src:
			dSelf++
		case uint(d) >= MaxPorts:
			dLookup++
		case s.ports[d] == nil:
			dNoPort++
		default:
			f.ft[e] = fwdEntry{first: uint16(fi), nf: uint16(nf), next: -1, bytes: bytes}
			q := &f.q[d]
			if q.head < 0 {
				f.touched[f.ntouched] = uint8(d)
				f.ntouched++
			}
			q.push(f.ft, e, uint32(nf))
			nft++
		}
	}
	c := &p.c
	c.txFrames.Add(txFrames)
	c.txBytes.Add(txBytes)
	if dShort|dSelf|dLookup|dNoPort|dFrags != 0 {
		c.dropShort.Add(dShort)
		c.dropSelf.Add(dSelf)
		c.dropLookup.Add(dLookup)
		c.dropNoPort.Add(dNoPort)
		c.dropFrags.Add(dFrags)
	}

	if f.bq.head >= 0 {
		for _, d := range s.active {
			if d != src {
				f.deliver(s.ports[d], &f.q[d])
			}
		}
	} else {
		for _, d := range f.touched[:f.ntouched] {
			f.deliver(s.ports[d], &f.q[d])
		}
	}
	for _, d := range f.touched[:f.ntouched] {
		f.q[d] = dstQueue{head: -1, tail: -1}
	}
	f.ntouched = 0
	f.bq = dstQueue{head: -1, tail: -1}
}

func (q *dstQueue) push(ft []fwdEntry, e int16, slots uint32) {
	if q.head < 0 {
		q.head = e
	} else {
		ft[q.tail].next = e
	}
	q.tail = e
	q.slots += slots
}

// deliver copies the frames of queue u merged with the broadcast queue (in batch
// order) into dp's RX ring. Caller holds the switch lock shared.
func (f *fwdState) deliver(dp *Port, u *dstQueue) {
	slots := u.slots + f.bq.slots
	if slots == 0 {
		return
	}
	np := dp.np
	rk := np.RxRing(f.ring % np.NumRxRings())
	lease := rk.RxReserve(slots)
	num := rk.NumSlots()
	pos := lease.Start
	used := uint32(0)
	rxMon := hasDir(dp.mon, MonitorRX)
	bufSize := dp.bufSize
	var rxFrames, rxBytes, noSpace, tooBig, bad uint64
	ui, bi := u.head, f.bq.head
	for ui >= 0 || bi >= 0 {
		var e int16
		if bi < 0 || (ui >= 0 && ui < bi) {
			e, ui = ui, f.ft[ui].next
		} else {
			e, bi = bi, f.ft[bi].next
		}
		fe := &f.ft[e]
		nf := uint32(fe.nf)
		if used+nf > lease.N {
			noSpace++
			continue
		}
		if nf == 1 && !rxMon { // the common case, without the chain bookkeeping
			d := f.frags[fe.first].Data
			buf := rk.RxSlotBuf(pos)
			if buf == nil || len(d) > len(buf) {
				if len(d) > bufSize {
					tooBig++
					continue
				}
				rk.SetSlotLen(pos, 0, 1<<8)
				bad++
			} else {
				copyFrame(buf, d)
				rk.SetSlotLen(pos, uint16(len(d)), 1<<8)
			}
			if pos++; pos == num {
				pos = 0
			}
			used++
			rxFrames++
			rxBytes += uint64(len(d))
			continue
		}
		fr := f.frags[fe.first : uint32(fe.first)+nf]
		if fe.bytes > uint32(bufSize) && !fragsFit(fr, bufSize) {
			tooBig++
			continue
		}
		flags := uint16(nf) << 8
		for k := range fr {
			fl := flags
			if uint32(k) < nf-1 {
				fl |= netmap.NSMoreFrag
			}
			buf := rk.RxSlotBuf(pos)
			if buf == nil || len(fr[k].Data) > len(buf) {
				// The port's user wrote a bad buffer index into its RX slot.
				rk.SetSlotLen(pos, 0, fl)
				bad++
			} else {
				copyFrame(buf, fr[k].Data)
				rk.SetSlotLen(pos, fr[k].Len, fl)
			}
			pos++
			if pos == num {
				pos = 0
			}
		}
		used += nf
		rxFrames++
		rxBytes += uint64(fe.bytes)
		if rxMon {
			f.monitor(dp, MonitorRX, fr)
		}
	}
	rk.RxComplete(lease, used)
	c := &dp.c
	if rxFrames != 0 {
		c.rxFrames.Add(rxFrames)
		c.rxBytes.Add(rxBytes)
	}
	if noSpace|tooBig|bad != 0 {
		c.dropNoSpace.Add(noSpace)
		c.dropTooBig.Add(tooBig)
		c.rxBadSlots.Add(bad)
	}
}

func fragsFit(fr []netmap.Frag, bufSize int) bool {
	for i := range fr {
		if len(fr[i].Data) > bufSize {
			return false
		}
	}
	return true
}

// copyFrame copies one fragment into a destination buffer (len(dst) >= len(src)).
// copy() is memmove: for short frames it is a few inlined-size moves, for long ones
// the runtime's vector loop; BenchmarkCopy compares it with 64-byte chunk copies.
// Bytes past len(src) are not copied, so nothing beyond the frame (stale data of the
// sender's buffer) leaks to the receiver.
func copyFrame(dst, src []byte) {
	copy(dst, src)
}

func hasDir(m []monitor, d Direction) bool {
	for i := range m {
		if m[i].dir&d != 0 {
			return true
		}
	}
	return false
}

func (f *fwdState) monitor(p *Port, d Direction, fr []netmap.Frag) {
	mf := f.mf[:0]
	for i := range fr {
		if len(mf) == cap(mf) {
			break
		}
		mf = append(mf, fr[i].Data)
	}
	ts := f.now()
	for _, m := range p.mon {
		if m.dir&d != 0 {
			if err := m.m.WriteFragments(ts, mf); err != nil {
				p.c.monitorErrors.Add(1)
			}
		}
	}
	clear(mf)
}
