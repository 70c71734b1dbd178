package netmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

func TestPipeTable(t *testing.T) {
	var tab PipeTable
	m, err := tab.Open("tp{1@conf:slots=32", PortConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Open("tp{1", PortConfig{}); err == nil {
		t.Fatal("master opened twice")
	}
	s, err := tab.Open("tp}1", PortConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Name() != "tp{1" || s.Name() != "tp}1" || m.Region() != s.Region() || m.TxRing(0).NumSlots() != 32 {
		t.Fatalf("pair %q %q", m.Name(), s.Name())
	}
	if _, err := tab.Open("tp", PortConfig{}); err == nil {
		t.Fatal("non-pipe name accepted")
	}
	m.Close()
	s.Close()
	// Freed: the name makes a new pair.
	m2, err := tab.Open("tp}1", PortConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if m2 == s {
		t.Fatal("closed port handed out again")
	}
	reg := m2.Region()
	refs := func() int { reg.mu.Lock(); defer reg.mu.Unlock(); return reg.refs }
	if refs() != 2 {
		t.Fatalf("region refs %d, want 2 (one per end)", refs())
	}
	// Closing the only opened end also closes the never-opened master.
	m2.Close()
	if !reg.freed {
		t.Fatal("region not released after the last end closed")
	}
}

// Zero-copy hand-over: the user swaps an extra buffer into a TX slot (NS_BUF_CHANGED);
// the pipe delivers that very buffer. A reserved index is refused and counted.
func TestBufChangedHandover(t *testing.T) {
	m, s, err := NewPipe("bc", "0", PortConfig{TxSlots: 8, ExtraBufs: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer m.Close()
	f, err := OpenIf(m.Region().Bytes(), m.NifpOffset())
	if err != nil {
		t.Fatal(err)
	}
	extra := f.BufsHead()
	reg := m.Region()
	f.SetBufsHead(binary.LittleEndian.Uint32(reg.Buf(extra))) // take it off the list
	txk, rxk := m.TxRing(0), s.RxRing(0)
	tx, rx := m.UserRing(txk), s.UserRing(rxk)

	h := tx.Head()
	sl := tx.Slot(h)
	old := sl.BufIdx
	orig1 := tx.Slot(h + 1).BufIdx
	copy(reg.Buf(extra), "zero-copy")
	tx.SetSlot(h, Slot{BufIdx: extra, Len: 9, Flags: NSBufChanged})
	tx.SetSlot(h+1, Slot{BufIdx: 1, Len: 4, Flags: NSBufChanged}) // reserved buffer
	tx.Advance(2)
	// The displaced buffer goes back on the extra list so nothing leaks.
	binary.LittleEndian.PutUint32(reg.Buf(old), f.BufsHead())
	f.SetBufsHead(old)

	if err := txk.Sync(0); err != nil {
		t.Fatal(err)
	}
	_ = rxk.Sync(0)
	_, slots := userRecv(rx)
	if len(slots) != 2 {
		t.Fatalf("received %d slots", len(slots))
	}
	if slots[0].BufIdx != extra || string(rx.Buf(extra)[:9]) != "zero-copy" {
		t.Errorf("handed-over buffer %d not delivered as is (got %d)", extra, slots[0].BufIdx)
	}
	if slots[1].Len != 0 || slots[1].BufIdx == 1 {
		t.Errorf("reserved buffer passed through: %+v", slots[1])
	}
	if txk.Stats().BadSlots != 1 {
		t.Errorf("bad slots %d, want 1", txk.Stats().BadSlots)
	}
	if tx.Slot(h+1).BufIdx != 1 {
		t.Error("refused slot's buffer was swapped")
	}
	tx.SetSlot(h+1, Slot{BufIdx: orig1}) // repair what the test broke
}

// A receiver that released a slot holding a bad buffer index gets an empty slot back;
// the sender keeps its buffer.
func TestPipeBadRxBuffer(t *testing.T) {
	m, s := newTestPipe(t, 8)
	txk, rxk := m.TxRing(0), s.RxRing(0)
	tx, rx := m.UserRing(txk), s.UserRing(rxk)
	keep := rx.Slot(0).BufIdx
	rx.SetSlot(0, Slot{BufIdx: 0xfffffff0, Flags: NSBufChanged})
	txBuf := tx.Slot(0).BufIdx
	userSend(t, tx, [][][]byte{{[]byte("x")}})
	_ = txk.Sync(0)
	_ = rxk.Sync(0)
	_, slots := userRecv(rx)
	if len(slots) != 1 || slots[0].Len != 0 {
		t.Fatalf("slots %+v", slots)
	}
	if tx.Slot(0).BufIdx != txBuf {
		t.Error("sender lost its buffer to a bad swap")
	}
	rx.SetSlot(0, Slot{BufIdx: keep}) // repair for Close
}

// Releasing RX slots on a pipe notifies the sender's TX ring.
func TestPipeReleaseNotifiesSender(t *testing.T) {
	m, s := newTestPipe(t, 8)
	woken := 0
	m.TxRing(0).SetNotify(func() { woken++ })
	tx, rx := m.UserRing(m.TxRing(0)), s.UserRing(s.RxRing(0))
	userSend(t, tx, [][][]byte{{{1}}, {{2}}})
	_ = m.TxRing(0).Sync(0)
	_ = s.RxRing(0).Sync(0)
	if woken != 0 {
		t.Fatal("notified before any release")
	}
	userRecv(rx)
	_ = s.RxRing(0).Sync(0)
	if woken != 1 {
		t.Fatalf("woken %d times, want 1", woken)
	}
}

// Two ports share one region (@share); closing one leaves the other working.
func TestSharedRegion(t *testing.T) {
	rc, err := RegionConfigFor(PortConfig{TxSlots: 64, RxSlots: 64}, 2)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := NewRegion(rc)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewPort(PortConfig{Name: "a", Region: reg, TxSlots: 64, RxSlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewPort(PortConfig{Name: "b", Region: reg, TxSlots: 64, RxSlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	reg.Close() // the ports keep it alive
	if a.NifpOffset() == b.NifpOffset() || a.TxRing(0).Offset() == b.TxRing(0).Offset() {
		t.Fatal("ports overlap in the shared region")
	}
	fb, err := OpenIf(reg.Bytes(), b.NifpOffset())
	if err != nil || fb.Name() != "b" {
		t.Fatalf("second netmap_if: %v", err)
	}
	fl := binary.LittleEndian.Uint32(reg.Bytes()[a.NifpOffset()+IfFlagsOff:])
	if fl&NIPrivMem != 0 {
		t.Error("shared-region port claims NI_PRIV_MEM")
	}
	a.Close()
	if reg.freed {
		t.Fatal("region freed while b still uses it")
	}
	r := b.UserRing(b.TxRing(0))
	r.Advance(5)
	if err := b.TxRing(0).Sync(0); err != nil || b.TxRing(0).State().HwCur != 5 {
		t.Fatalf("b after a closed: %v", err)
	}
	b.Close()
	if !reg.freed {
		t.Fatal("region not freed after the last port")
	}
}

func TestHostRings(t *testing.T) {
	p, err := NewPort(PortConfig{Name: "h", HostRings: 1, TxSlots: 8, RxSlots: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ht, hr := p.TxRing(1), p.RxRing(1)
	if ht == nil || hr == nil || !ht.IsHost() || !hr.IsHost() || p.TxRing(2) != nil {
		t.Fatal("host rings missing")
	}
	if len(p.Krings()) != 4 {
		t.Fatalf("%d krings", len(p.Krings()))
	}
}

func TestPortConfigErrors(t *testing.T) {
	for _, c := range []PortConfig{
		{TxRings: 17}, {HostRings: 2}, {TxSlots: 1}, {RxSlots: 5000}, {BufSize: 32}, {BufSize: 70000}, {ExtraBufs: -1}, {Pipes: -1},
	} {
		if p, err := NewPort(c); err == nil {
			p.Close()
			t.Errorf("%+v accepted", c)
		}
	}
}

// Close waits for a lease another port is filling, then refuses new work.
func TestCloseWaitsForLeases(t *testing.T) {
	p, err := NewPort(PortConfig{Name: "c", TxSlots: 8, RxSlots: 8})
	if err != nil {
		t.Fatal(err)
	}
	k, tk := p.RxRing(0), p.TxRing(0)
	l := k.RxReserve(2)
	closed := make(chan error)
	go func() { closed <- p.Close() }()
	// Fill the leased slots: the memory must still be there.
	k.RxFill(l.Start, []byte("late"), 0)
	select {
	case <-closed:
		t.Fatal("Close returned with a lease outstanding")
	default:
	}
	k.RxComplete(l, 1)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if l2 := k.RxReserve(1); l2.N != 0 {
		t.Fatal("lease granted on a closed ring")
	}
	if err := k.Sync(0); err != ErrClosed {
		t.Fatalf("sync after close: %v", err)
	}
	if _, _, err := tk.SyncCSB(0, 0, 0); err != ErrClosed {
		t.Fatalf("CSB sync after close: %v", err)
	}
}

// A pipe end's user overwrites the other end's ring header (they share a region): the
// kernel side and the user views built by the port keep using the real geometry.
func TestCorruptRingHeaderGeometry(t *testing.T) {
	m, s := newTestPipe(t, 8)
	rk := s.RxRing(0)
	h := s.Region().Bytes()[rk.Offset():]
	binary.LittleEndian.PutUint32(h[RingNumSlotsOff:], 0xffffffff)
	binary.LittleEndian.PutUint32(h[RingBufSizeOff:], 3)
	binary.LittleEndian.PutUint64(h[RingBufOfsOff:], 1<<62)
	tx := m.UserRing(m.TxRing(0))
	userSend(t, tx, [][][]byte{{[]byte("still fine")}})
	if err := m.TxRing(0).Sync(0); err != nil {
		t.Fatal(err)
	}
	if err := rk.Sync(0); err != nil {
		t.Fatal(err)
	}
	got, _ := userRecv(s.UserRing(rk))
	if len(got) != 1 || string(got[0][0]) != "still fine" {
		t.Fatalf("got %q", got)
	}
	// A user view opened from the corrupted memory is refused, not trusted.
	if _, err := NewRing(s.Region().Bytes(), rk.Offset()); err == nil {
		t.Fatal("corrupted ring header accepted by NewRing")
	}
}

// A port's private region sized with Pipes holds that many pipes (netmap's
// pipes-on-a-port share the parent's memory).
func TestPipesInParentRegion(t *testing.T) {
	parent, err := NewPort(PortConfig{Name: "vale0:p", Pipes: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	free := parent.Region().FreeBufs()
	var ends []*Port
	for _, id := range []string{"1", "2"} {
		m, s, err := NewPipe("vale0:p", id, PortConfig{Region: parent.Region()})
		if err != nil {
			t.Fatalf("pipe %s: %v", id, err)
		}
		ends = append(ends, m, s)
	}
	// netmap's growth rule over-provisions; eventually the region runs out, cleanly.
	for i := 3; ; i++ {
		m, s, err := NewPipe("vale0:p", fmt.Sprint(i), PortConfig{Region: parent.Region()})
		if err != nil {
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("pipe %d: %v, want ErrNoSpace", i, err)
			}
			break
		}
		if i > 100 {
			t.Fatal("region never fills")
		}
		ends = append(ends, m, s)
	}
	for _, e := range ends {
		if e.Region() != parent.Region() {
			t.Fatal("pipe not in the parent's region")
		}
		e.Close()
	}
	if got := parent.Region().FreeBufs(); got != free {
		t.Fatalf("%d buffers free after closing the pipes, want %d", got, free)
	}
	// Everything the pipes took is back: a new pair fits again.
	m, s, err := NewPipe("vale0:p", "4", PortConfig{Region: parent.Region()})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	s.Close()
}

// SetNotify(nil) returns only after a notify call running elsewhere has returned, so
// its owner may then close what the notify function writes to.
func TestSetNotifyWaitsForRunningNotify(t *testing.T) {
	p := newTestPort(t, 8)
	k := p.RxRing(0)
	entered, release := make(chan struct{}), make(chan struct{})
	k.SetNotify(func() { close(entered); <-release })
	go k.Notify()
	<-entered
	done := make(chan struct{})
	go func() { k.SetNotify(nil); close(done) }()
	select {
	case <-done:
		t.Fatal("SetNotify(nil) returned while the old notify was running")
	default:
	}
	close(release)
	<-done
	k.Notify() // nothing installed: no call
}
