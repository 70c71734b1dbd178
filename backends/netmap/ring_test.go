package netmap

import (
	"errors"
	"testing"
)

func newTestPort(t testing.TB, slots int) *Port {
	t.Helper()
	p, err := NewPort(PortConfig{Name: "t", TxSlots: slots, RxSlots: slots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestInitialRingState(t *testing.T) {
	p := newTestPort(t, 7)
	tx, rx := p.UserRing(p.TxRing(0)), p.UserRing(p.RxRing(0))
	if tx.Head() != 0 || tx.Cur() != 0 || tx.Tail() != 6 {
		t.Errorf("tx head/cur/tail %d/%d/%d, want 0/0/6", tx.Head(), tx.Cur(), tx.Tail())
	}
	if s := p.TxRing(0).State(); s.HwCur != 0 || s.HwTail != 6 || s.RHead != 0 || s.RTail != 6 {
		t.Errorf("tx kring %+v", s)
	}
	if rx.Head() != 0 || rx.Cur() != 0 || rx.Tail() != 0 || !rx.Empty() {
		t.Errorf("rx head/cur/tail %d/%d/%d, want 0/0/0", rx.Head(), rx.Cur(), rx.Tail())
	}
	if s := p.RxRing(0).State(); s != (KringState{}) {
		t.Errorf("rx kring %+v, want all zero", s)
	}
	// One slot always stays empty.
	if tx.Space() != 6 || p.RxRing(0).RxSpace() != 6 {
		t.Errorf("tx space %d rx space %d, want 6", tx.Space(), p.RxRing(0).RxSpace())
	}
	// Every slot has its own valid buffer.
	seen := map[uint32]bool{}
	for _, k := range p.Krings() {
		for i := uint32(0); i < k.NumSlots(); i++ {
			b := k.SlotAt(i).BufIdx
			if !p.Region().ValidBuf(b) || seen[b] {
				t.Fatalf("%s slot %d: buffer %d invalid or shared", k.Name(), i, b)
			}
			seen[b] = true
		}
	}
}

// TX with the default (discarding) sync: the user sees the ring wrap many times
// around a slot count that is not a power of two.
func TestTxWrapAround(t *testing.T) {
	p := newTestPort(t, 7)
	k := p.TxRing(0)
	r := p.UserRing(k)
	total := 0
	for round := 0; round < 50; round++ {
		n := uint32(round%6 + 1)
		if r.Space() < n {
			t.Fatalf("round %d: space %d < %d", round, r.Space(), n)
		}
		r.Advance(n)
		if err := k.Sync(0); err != nil {
			t.Fatal(err)
		}
		total += int(n)
		want := uint32(total % 7)
		if r.Head() != want || k.State().HwCur != want {
			t.Fatalf("round %d: head %d hwcur %d, want %d", round, r.Head(), k.State().HwCur, want)
		}
		if r.Tail() != (want+6)%7 || r.Space() != 6 || r.TxPending() {
			t.Fatalf("round %d: tail %d space %d", round, r.Tail(), r.Space())
		}
	}
}

// RX filled through leases: wrap-around, one slot empty, out-of-order completion.
func TestRxLeases(t *testing.T) {
	p := newTestPort(t, 5)
	k := p.RxRing(0)
	r := p.UserRing(k)
	notified := 0
	k.SetNotify(func() { notified++ })

	l1 := k.RxReserve(2)
	l2 := k.RxReserve(10) // only 2 more fit: one slot stays empty
	if l1.N != 2 || l2.N != 2 || l2.Start != 2 {
		t.Fatalf("leases %+v %+v", l1, l2)
	}
	if l3 := k.RxReserve(1); l3.N != 0 {
		t.Fatalf("full ring leased %+v", l3)
	}
	for i := uint32(0); i < 2; i++ {
		if !k.RxFill(l2.Start+i, []byte{byte(10 + i)}, 0) {
			t.Fatal("fill l2")
		}
	}
	k.RxComplete(l2, 2)
	if st := k.State(); st.HwTail != 0 || notified != 0 {
		t.Fatalf("later lease completed first moved hwtail: %+v", st)
	}
	k.RxFill(l1.Start, []byte{1, 2, 3}, 0)
	k.RxComplete(l1, 1) // not the newest: slot 1 becomes an empty frame
	if st := k.State(); st.HwTail != 4 || notified != 1 {
		t.Fatalf("after both leases: %+v, notified %d", st, notified)
	}
	if err := k.Sync(0); err != nil {
		t.Fatal(err)
	}
	if r.Tail() != 4 || r.Space() != 4 {
		t.Fatalf("user tail %d space %d", r.Tail(), r.Space())
	}
	wantLens := []uint16{3, 0, 1, 1}
	for i, w := range wantLens {
		if s := r.Slot(uint32(i)); s.Len != w {
			t.Errorf("slot %d len %d, want %d", i, s.Len, w)
		}
	}
	if b := r.SlotBuf(0); b[0] != 1 || b[2] != 3 {
		t.Errorf("slot 0 data % x", b[:3])
	}
	// Release 3, then the ring has room for 3 again and wraps.
	r.Advance(3)
	if err := k.Sync(0); err != nil {
		t.Fatal(err)
	}
	if k.RxSpace() != 3 {
		t.Fatalf("space after release %d", k.RxSpace())
	}
	l := k.RxReserve(3)
	if l.Start != 4 || l.N != 3 {
		t.Fatalf("wrap lease %+v", l)
	}
	k.RxComplete(l, 1) // newest lease: 2 slots given back
	if st := k.State(); st.HwTail != 0 || st.HwLease != 0 {
		t.Fatalf("after shrink %+v", st)
	}
	if err := k.Sync(0); err != nil {
		t.Fatal(err)
	}
	if r.Tail() != 0 || r.Space() != 2 {
		t.Fatalf("user tail %d space %d", r.Tail(), r.Space())
	}
}

// hold is a TX sync that transmits nothing, so the slots the user gave stay pending
// and the valid interval for head is [rhead, rtail], narrower than the whole ring.
func hold(*Kring, SyncFlags) error { return nil }

// Corrupted head/cur/tail from the ring's user: reinitialised and counted, never trusted.
func TestCorruptTxRing(t *testing.T) {
	// State before each case: 8 slots, user gave 3 (rhead 3), nothing completed
	// (hwcur 0, hwtail 7): valid head is 3..7, valid cur is head..7.
	cases := []struct {
		name            string
		head, cur, tail uint32
		reinit          bool
	}{
		{"valid: more slots", 5, 6, 7, false},
		{"valid: cur at tail", 3, 7, 7, false},
		{"head beyond ring", 9, 9, 7, true},
		{"cur beyond ring", 3, 1000, 7, true},
		{"head behind rhead", 1, 1, 7, true},
		{"cur before head", 5, 4, 7, true},
		{"cur wraps past tail", 5, 0, 7, true},
		{"head at hwcur", 0, 0, 7, true},
		{"user moved tail", 4, 4, 1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newTestPort(t, 8)
			k := p.TxRing(0)
			k.SetSync(hold)
			r := p.UserRing(k)
			r.Advance(3)
			if err := k.Sync(0); err != nil {
				t.Fatal(err)
			}
			r.SetHeadCur(c.head, c.cur)
			store32(r.mem, r.off+RingTailOff, c.tail)
			err := k.Sync(0)
			if c.reinit != errors.Is(err, ErrRingReinit) {
				t.Fatalf("sync err %v, want reinit %v", err, c.reinit)
			}
			st := k.State()
			if c.reinit {
				if r.Head() != 0 || r.Cur() != 0 || st.RHead != 0 || k.Stats().Reinits != 1 {
					t.Errorf("after reinit head %d cur %d kring %+v reinits %d", r.Head(), r.Cur(), st, k.Stats().Reinits)
				}
			} else if st.RHead != c.head || st.RCur != c.cur || k.Stats().Reinits != 0 {
				t.Errorf("valid head/cur not taken: %+v", st)
			}
			if r.Tail() != 7 || st.HwTail != 7 || st.HwCur != 0 {
				t.Errorf("tail %d, kring %+v", r.Tail(), st)
			}
		})
	}
}

func TestCorruptRxRing(t *testing.T) {
	p := newTestPort(t, 8)
	k := p.RxRing(0)
	r := p.UserRing(k)
	l := k.RxReserve(4)
	for i := uint32(0); i < 4; i++ {
		k.RxFill(l.Start+i, []byte{byte(i)}, 0)
	}
	k.RxComplete(l, 4)
	// The user claims to have consumed 6 of the 4 frames.
	r.SetHeadCur(6, 6)
	// ...and scribbles on a slot it still owns.
	s := r.Slot(2)
	s.BufIdx, s.Len = 1, 100
	r.SetSlot(2, s)
	s = r.Slot(3)
	s.Len = 60000
	r.SetSlot(3, s)
	if err := k.Sync(0); !errors.Is(err, ErrRingReinit) {
		t.Fatalf("sync err %v", err)
	}
	if r.Head() != 0 || r.Cur() != 0 || r.Tail() != 4 {
		t.Fatalf("after reinit %d/%d/%d, want 0/0/4", r.Head(), r.Cur(), r.Tail())
	}
	if s := r.Slot(2); s.BufIdx != 0 || s.Len != 0 {
		t.Errorf("reserved buffer not cleared: %+v", s)
	}
	if s := r.Slot(3); s.Len != 0 || !p.Region().ValidBuf(s.BufIdx) {
		t.Errorf("oversized len not cleared: %+v", s)
	}
	if st := k.Stats(); st.Reinits != 1 || st.BadSlots != 2 {
		t.Errorf("stats %+v", st)
	}
	// The ring works again afterwards.
	r.Advance(4)
	if err := k.Sync(0); err != nil {
		t.Fatal(err)
	}
	if st := k.State(); st.HwCur != 4 {
		t.Fatalf("release after reinit: %+v", st)
	}
}

func TestSyncCSB(t *testing.T) {
	p := newTestPort(t, 16)
	k := p.TxRing(0)
	r := p.UserRing(k)
	hwcur, hwtail, err := k.SyncCSB(5, 5, 0)
	if err != nil || hwcur != 5 || hwtail != 4 {
		t.Fatalf("csb sync %d/%d %v", hwcur, hwtail, err)
	}
	k.SetSync(hold)
	hwcur, hwtail, err = k.SyncCSB(8, 8, 0)
	if err != nil || hwcur != 5 || hwtail != 4 {
		t.Fatalf("held csb sync %d/%d %v", hwcur, hwtail, err)
	}
	if r.Tail() != 15 || r.Head() != 0 {
		t.Errorf("CSB sync touched the ring header: tail %d head %d", r.Tail(), r.Head())
	}
	if _, _, err := k.SyncCSB(6, 6, 0); !errors.Is(err, ErrRingReinit) {
		t.Fatalf("head moved backwards accepted: %v", err)
	}
	if st := k.State(); st.RHead != 5 || st.HwCur != 5 || k.Stats().Reinits != 1 {
		t.Errorf("state after CSB reinit %+v", st)
	}
}

// TxScan groups MOREFRAG chains, leaves an unfinished chain pending, drops bad frames.
func TestTxScan(t *testing.T) {
	p := newTestPort(t, 16)
	k := p.TxRing(0)
	r := p.UserRing(k)
	// Frames: [a] [b1 b2 b3] [bad] [c1 c2] [d1 (unfinished)]
	lens := []uint16{10, 20, 21, 22, 5, 30, 31, 40}
	flags := []uint16{0, NSMoreFrag, NSMoreFrag, 0, 0, NSMoreFrag, 0, NSMoreFrag}
	for i := range lens {
		s := r.Slot(uint32(i))
		s.Len, s.Flags = lens[i], flags[i]
		if i == 4 {
			s.BufIdx = 1 << 30
		}
		r.SetSlot(uint32(i), s)
	}
	r.Advance(uint32(len(lens)))
	var got [][]uint16
	k.SetSync(func(k *Kring, _ SyncFlags) error {
		frags := make([]Frag, 4)
		pos := k.HwCur()
		for {
			n, next := k.TxScan(pos, frags)
			if next == pos {
				break
			}
			var fr []uint16
			for _, f := range frags[:n] {
				if len(f.Data) != int(f.Len) {
					t.Errorf("frag data %d bytes, len %d", len(f.Data), f.Len)
				}
				fr = append(fr, f.Len)
				if f.Flags&NSMoreFrag == 0 {
					got = append(got, fr)
					fr = nil
				}
			}
			if fr != nil {
				t.Errorf("batch ended inside a frame: %v", fr)
			}
			pos = next
		}
		k.TxDone(pos)
		return nil
	})
	if err := k.Sync(0); err != nil {
		t.Fatal(err)
	}
	want := "[[10] [20 21 22] [30 31]]"
	if g := sprint(got); g != want {
		t.Errorf("frames %s, want %s", g, want)
	}
	if st := k.State(); st.HwCur != 7 || st.HwTail != 6 {
		t.Errorf("unfinished chain not pending: %+v", st)
	}
	if k.Stats().BadSlots != 1 {
		t.Errorf("bad frame count %d", k.Stats().BadSlots)
	}
	// Finish the chain.
	s := r.Slot(8)
	s.Len, s.Flags = 41, 0
	r.SetSlot(8, s)
	r.Advance(1)
	got = nil
	if err := k.Sync(0); err != nil {
		t.Fatal(err)
	}
	if g := sprint(got); g != "[[40 41]]" {
		t.Errorf("finished chain %s", g)
	}
}

// TestSetSlotLen: len and flags change together or alone, the buffer index and
// ptr never; an unchanged slot reads back the same.
func TestSetSlotLen(t *testing.T) {
	p := newTestPort(t, 8)
	k := p.RxRing(0)
	r := p.UserRing(k)
	before := r.Slot(3)
	before.Ptr = 0x1122334455667788
	r.SetSlot(3, before)
	for _, c := range []struct{ n, flags uint16 }{{60, 0}, {60, 0}, {60, NSMoreFrag}, {1514, NSMoreFrag}, {0, 0}} {
		k.SetSlotLen(3, c.n, c.flags)
		s := r.Slot(3)
		if s.Len != c.n || s.Flags != c.flags || s.BufIdx != before.BufIdx || s.Ptr != before.Ptr {
			t.Fatalf("SetSlotLen(%d, %#x): slot %+v, was %+v", c.n, c.flags, s, before)
		}
	}
	k.SetSlotLen(8, 1, 1) // out of range: ignored
}
