package netmap

import (
	"bytes"
	"testing"
)

func newTestPipe(t testing.TB, slots int) (m, s *Port) {
	t.Helper()
	m, s, err := NewPipe("p", "1", PortConfig{TxSlots: slots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// userSend writes frames (each a list of fragments) into a TX ring and advances head.
func userSend(t testing.TB, r *Ring, frames [][][]byte) {
	t.Helper()
	h := r.Head()
	for _, fr := range frames {
		for i, frag := range fr {
			s := r.Slot(h)
			copy(r.Buf(s.BufIdx), frag)
			s.Len, s.Flags = uint16(len(frag)), 0
			if i < len(fr)-1 {
				s.Flags = NSMoreFrag
			}
			r.SetSlot(h, s)
			h = r.Next(h)
		}
	}
	r.SetHeadCur(h, h)
}

// userRecv consumes all complete frames of an RX ring.
func userRecv(r *Ring) (frames [][][]byte, slots []Slot) {
	h, tail := r.Head(), r.Tail()
	var cur [][]byte
	for h != tail {
		s := r.Slot(h)
		slots = append(slots, s)
		cur = append(cur, append([]byte(nil), r.Buf(s.BufIdx)[:s.Len]...))
		if s.Flags&NSMoreFrag == 0 {
			frames = append(frames, cur)
			cur = nil
		}
		h = r.Next(h)
	}
	r.SetHeadCur(h, h)
	return frames, slots
}

func TestPipeNames(t *testing.T) {
	m, s := newTestPipe(t, 8)
	if m.Name() != "p{1" || s.Name() != "p}1" || m.Region() != s.Region() {
		t.Fatalf("pipe %q %q, shared region %v", m.Name(), s.Name(), m.Region() == s.Region())
	}
}

func TestPipeBothWaysZeroCopy(t *testing.T) {
	m, s := newTestPipe(t, 16)
	for _, dir := range []struct {
		name     string
		from, to *Port
	}{{"master to slave", m, s}, {"slave to master", s, m}} {
		t.Run(dir.name, func(t *testing.T) {
			txk, rxk := dir.from.TxRing(0), dir.to.RxRing(0)
			tx, rx := dir.from.UserRing(txk), dir.to.UserRing(rxk)
			frames := [][][]byte{
				{[]byte("hello")},
				{[]byte("frag-a"), []byte("frag-b"), []byte("frag-c")},
				{bytes.Repeat([]byte{0xab}, 2048)},
			}
			h0 := tx.Head()
			var txIdx []uint32
			for i := uint32(0); i < 5; i++ {
				txIdx = append(txIdx, tx.Slot(h0+i).BufIdx)
			}
			var rxIdx []uint32
			for i := uint32(0); i < 5; i++ {
				rxIdx = append(rxIdx, rx.Slot(rx.Head()+i).BufIdx)
			}
			userSend(t, tx, frames)
			if err := txk.Sync(0); err != nil {
				t.Fatal(err)
			}
			if err := rxk.Sync(0); err != nil {
				t.Fatal(err)
			}
			got, slots := userRecv(rx)
			if sprint(got) != sprint(frames) {
				t.Fatalf("received %q, want %q", got, frames)
			}
			for i, sl := range slots {
				// The payload buffer itself moved: no copy.
				if sl.BufIdx != txIdx[i] || sl.Flags&NSBufChanged == 0 {
					t.Errorf("rx slot %d: buffer %d flags %#x, want buffer %d with NS_BUF_CHANGED", i, sl.BufIdx, sl.Flags, txIdx[i])
				}
				// The sender got the receiver's free buffer in exchange.
				ts := tx.Slot(h0 + uint32(i))
				if ts.BufIdx != rxIdx[i] || ts.Flags&NSBufChanged == 0 {
					t.Errorf("tx slot %d: buffer %d flags %#x, want %d with NS_BUF_CHANGED", i, ts.BufIdx, ts.Flags, rxIdx[i])
				}
			}
			wantFlags := []uint16{0, NSMoreFrag, NSMoreFrag, 0, 0}
			for i, sl := range slots {
				if sl.Flags&NSMoreFrag != wantFlags[i] {
					t.Errorf("slot %d MOREFRAG %#x, want %#x", i, sl.Flags&NSMoreFrag, wantFlags[i])
				}
			}
			if tx.Space() != 15 {
				t.Errorf("sender space %d after the swap, want all 15 back", tx.Space())
			}
		})
	}
}

// A full receiver holds frames back (whole frames only) until it releases slots.
func TestPipeBackpressure(t *testing.T) {
	m, s := newTestPipe(t, 8)
	txk, rxk := m.TxRing(0), s.RxRing(0)
	tx, rx := m.UserRing(txk), s.UserRing(rxk)
	var frames [][][]byte
	for i := 0; i < 5; i++ {
		frames = append(frames, [][]byte{{byte(i)}})
	}
	userSend(t, tx, frames)
	if err := txk.Sync(0); err != nil {
		t.Fatal(err)
	}
	// The receiver has 5 of its 7 usable slots full; a 3-slot frame must wait.
	chain := [][][]byte{{{5}, {6}, {7}}}
	userSend(t, tx, chain)
	if err := txk.Sync(0); err != nil {
		t.Fatal(err)
	}
	_ = rxk.Sync(0)
	got, _ := userRecv(rx)
	if sprint(got) != sprint(frames) {
		t.Fatalf("first batch %v, want %v", got, frames)
	}
	if st := txk.State(); st.HwCur != 5 {
		t.Fatalf("tx hwcur %d, want 5 (chain pending)", st.HwCur)
	}
	if err := rxk.Sync(0); err != nil { // release
		t.Fatal(err)
	}
	if err := txk.Sync(0); err != nil {
		t.Fatal(err)
	}
	_ = rxk.Sync(0)
	got, _ = userRecv(rx)
	if sprint(got) != sprint(chain) {
		t.Fatalf("second batch %v, want %v", got, chain)
	}
}

func TestPipeUnfinishedChainWaits(t *testing.T) {
	m, s := newTestPipe(t, 8)
	txk, rxk := m.TxRing(0), s.RxRing(0)
	tx, rx := m.UserRing(txk), s.UserRing(rxk)
	h := tx.Head()
	sl := tx.Slot(h)
	sl.Len, sl.Flags = 1, NSMoreFrag
	tx.SetSlot(h, sl)
	tx.Advance(1)
	_ = txk.Sync(0)
	_ = rxk.Sync(0)
	if !rx.Empty() {
		t.Fatal("half a frame delivered")
	}
	userSend(t, tx, [][][]byte{{{9}}})
	_ = txk.Sync(0)
	_ = rxk.Sync(0)
	got, _ := userRecv(rx)
	if len(got) != 1 || len(got[0]) != 2 {
		t.Fatalf("chain delivered as %v", got)
	}
}

func TestPipePeerClosed(t *testing.T) {
	m, s, err := NewPipe("q", "7", PortConfig{TxSlots: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s.Close()
	txk := m.TxRing(0)
	userSend(t, m.UserRing(txk), [][][]byte{{{1}}, {{2}}})
	if err := txk.Sync(0); err != nil {
		t.Fatal(err)
	}
	if st := txk.Stats(); st.Dropped != 2 {
		t.Fatalf("dropped %d, want 2", st.Dropped)
	}
}

// Buffer conservation: every buffer of the pipe stays in exactly one slot.
func TestPipeConservesBuffers(t *testing.T) {
	m, s := newTestPipe(t, 9)
	all := func() map[uint32]int {
		c := map[uint32]int{}
		for _, p := range []*Port{m, s} {
			for _, k := range p.Krings() {
				for i := uint32(0); i < k.NumSlots(); i++ {
					c[k.SlotAt(i).BufIdx]++
				}
			}
		}
		return c
	}
	before := all()
	for round := 0; round < 40; round++ {
		for _, pr := range [][2]*Port{{m, s}, {s, m}} {
			tx := pr[0].UserRing(pr[0].TxRing(0))
			n := int(tx.Space())
			n = min(n, round%5+1)
			var fr [][][]byte
			for i := 0; i < n; i++ {
				fr = append(fr, [][]byte{{byte(round)}})
			}
			userSend(t, tx, fr)
			_ = pr[0].TxRing(0).Sync(0)
			if round%3 == 0 {
				rx := pr[1].UserRing(pr[1].RxRing(0))
				_ = pr[1].RxRing(0).Sync(0)
				userRecv(rx)
				_ = pr[1].RxRing(0).Sync(0)
			}
		}
	}
	after := all()
	if sprint(before) != sprint(after) {
		t.Fatal("buffer multiset changed")
	}
	for b, n := range after {
		if n != 1 {
			t.Fatalf("buffer %d in %d slots", b, n)
		}
	}
}
