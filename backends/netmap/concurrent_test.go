package netmap

import (
	"encoding/binary"
	"runtime"
	"sync"
	"testing"
)

// Two producers fill one RX ring through leases while its user consumes it: every
// frame arrives once, each producer's frames in order, and (under -race) the lease
// protocol keeps producers and consumer off each other's slots.
func TestConcurrentLeases(t *testing.T) {
	p := newTestPort(t, 64)
	k := p.RxRing(0)
	r := p.UserRing(k)
	const perProducer = 20000
	var wg sync.WaitGroup
	for id := 0; id < 2; id++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			var msg [8]byte
			for seq := 0; seq < perProducer; {
				l := k.RxReserve(uint32(1 + seq%5))
				if l.N == 0 {
					runtime.Gosched()
					continue
				}
				used := uint32(0)
				for ; used < l.N && seq < perProducer; used++ {
					i := used
					binary.LittleEndian.PutUint32(msg[0:], uint32(id))
					binary.LittleEndian.PutUint32(msg[4:], uint32(seq))
					if !k.RxFill(k.add(l.Start, i), msg[:], 0) {
						t.Error("fill failed")
						return
					}
					seq++
				}
				k.RxComplete(l, used) // unused slots are given back or become empty frames
			}
		}(id)
	}
	next := [2]int{}
	for next[0] < perProducer || next[1] < perProducer {
		if err := k.Sync(0); err != nil {
			t.Fatal(err)
		}
		h, tail := r.Head(), r.Tail()
		if h == tail {
			runtime.Gosched()
			continue
		}
		for ; h != tail; h = r.Next(h) {
			s := r.Slot(h)
			if s.Len == 0 {
				continue
			}
			b := r.Buf(s.BufIdx)
			id, seq := binary.LittleEndian.Uint32(b), int(binary.LittleEndian.Uint32(b[4:]))
			if id > 1 || seq != next[id] {
				t.Fatalf("producer %d: got seq %d, want %d", id, seq, next[id])
			}
			next[id]++
		}
		r.SetHeadCur(h, h)
	}
	wg.Wait()
}

// A sender and a receiver goroutine on the two ends of a pipe, each syncing its own ring.
func TestConcurrentPipe(t *testing.T) {
	m, s := newTestPipe(t, 32)
	txk, rxk := m.TxRing(0), s.RxRing(0)
	tx, rx := m.UserRing(txk), s.UserRing(rxk)
	const frames = 30000
	done := make(chan struct{})
	go func() {
		defer close(done)
		seq := uint32(0)
		for seq < frames {
			if err := txk.Sync(0); err != nil {
				t.Error(err)
				return
			}
			h := tx.Head()
			n := min(tx.Space(), frames-seq)
			if n == 0 {
				runtime.Gosched()
				continue
			}
			for i := uint32(0); i < n; i++ {
				sl := tx.Slot(h)
				binary.LittleEndian.PutUint32(tx.Buf(sl.BufIdx), seq)
				sl.Len, sl.Flags = 4, 0
				tx.SetSlot(h, sl)
				h = tx.Next(h)
				seq++
			}
			tx.SetHeadCur(h, h)
		}
		for txk.State().HwCur != tx.Head() {
			_ = txk.Sync(0)
			runtime.Gosched()
		}
	}()
	want := uint32(0)
	for want < frames {
		if err := rxk.Sync(0); err != nil {
			t.Fatal(err)
		}
		h, tail := rx.Head(), rx.Tail()
		if h == tail {
			runtime.Gosched()
			continue
		}
		for ; h != tail; h = rx.Next(h) {
			sl := rx.Slot(h)
			if got := binary.LittleEndian.Uint32(rx.Buf(sl.BufIdx)); got != want {
				t.Fatalf("got frame %d, want %d", got, want)
			}
			want++
		}
		rx.SetHeadCur(h, h)
	}
	<-done
}

// Traffic through a pipe in a caller-owned region, then close: every buffer is back.
func TestPipeNoLeak(t *testing.T) {
	rc, err := RegionConfigFor(PortConfig{TxSlots: 16, RxSlots: 16}, 1)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := NewRegion(rc)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	free := reg.FreeBufs()
	m, s, err := NewPipe("leak", "0", PortConfig{TxSlots: 16, Region: reg, ExtraBufs: 3})
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 10; round++ {
		for _, pr := range [][2]*Port{{m, s}, {s, m}} {
			tx := pr[0].UserRing(pr[0].TxRing(0))
			userSend(t, tx, [][][]byte{{{1}, {2}}, {{3}}})
			_ = pr[0].TxRing(0).Sync(0)
			_ = pr[1].RxRing(0).Sync(0)
			userRecv(pr[1].UserRing(pr[1].RxRing(0)))
		}
	}
	m.Close()
	s.Close()
	if got := reg.FreeBufs(); got != free {
		t.Fatalf("%d buffers free after close, want %d", got, free)
	}
}
