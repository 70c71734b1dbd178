package netmap

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A pipe's two ends share one region, so the user of either end can write the other
// end's ring header and slots. These are the attacks an Endpoint must survive.

func newEndpointPipe(t *testing.T, slots int) (a, b *Endpoint, bp *Port) {
	t.Helper()
	m, s, err := NewPipe("atk", "0", PortConfig{TxSlots: slots, RxSlots: slots})
	if err != nil {
		t.Fatal(err)
	}
	if a, err = NewEndpoint(m, true); err != nil {
		t.Fatal(err)
	}
	if b, err = NewEndpoint(s, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b, s
}

func frame(tag byte, n int) []byte { return bytes.Repeat([]byte{tag}, n) }

// TestEndpointRecvUnfinishedChain: the peer marks every slot of our full RX ring
// NS_MOREFRAG. The chain can never end: Recv must drop it rather than leave the ring
// stuck, and must not keep its ReadyFD readable for a frame that is not there (a
// readiness-driven consumer would spin).
func TestEndpointRecvUnfinishedChain(t *testing.T) {
	a, b, bp := newEndpointPipe(t, 8)
	frames := make([][]byte, 7)
	for i := range frames {
		frames[i] = frame(byte(i+1), 60)
	}
	if n, err := a.Send(frames); n != 7 || err != nil {
		t.Fatalf("send %d %v", n, err)
	}
	rx := bp.UserRing(bp.RxRing(0))
	for i := uint32(0); i < rx.NumSlots(); i++ {
		s := rx.Slot(i)
		s.Flags |= NSMoreFrag
		rx.SetSlot(i, s)
	}
	bufs := [][]byte{make([]byte, 2048), make([]byte, 2048)}
	lens := make([]int, 2)
	n, err := b.Recv(bufs, lens)
	if err != nil || n != 0 {
		t.Fatalf("recv of an unfinished chain: %d frames, %v", n, err)
	}
	if readable(t, b.ReadyFD()) {
		t.Fatal("ReadyFD readable after a Recv that found no frame: its consumer spins")
	}
	if b.Dropped() != 1 {
		t.Errorf("dropped %d chains, want 1", b.Dropped())
	}
	// The ring is usable again.
	if n, err := a.Send([][]byte{frame(9, 100)}); n != 1 || err != nil {
		t.Fatalf("send after the drop: %d %v", n, err)
	}
	if n, err := b.Recv(bufs, lens); n != 1 || err != nil || !bytes.Equal(bufs[0][:lens[0]], frame(9, 100)) {
		t.Fatalf("recv after the drop: %d %v", n, err)
	}
}

// TestEndpointRecvUnfinishedChainWaits: a chain still open at tail (but not filling
// the ring) stays for later, without a self-wakeup; its last slot completes it.
func TestEndpointRecvUnfinishedChainWaits(t *testing.T) {
	a, b, bp := newEndpointPipe(t, 8)
	if n, err := a.Send([][]byte{frame(1, 60), frame(2, 60)}); n != 2 || err != nil {
		t.Fatalf("send %d %v", n, err)
	}
	rx := bp.UserRing(bp.RxRing(0))
	s := rx.Slot(1)
	s.Flags |= NSMoreFrag
	rx.SetSlot(1, s)
	bufs := [][]byte{make([]byte, 2048), make([]byte, 2048)}
	lens := make([]int, 2)
	if n, err := b.Recv(bufs, lens); n != 1 || err != nil {
		t.Fatalf("recv %d %v", n, err)
	}
	if readable(t, b.ReadyFD()) {
		t.Fatal("ReadyFD readable for an unfinished frame")
	}
	if n, err := a.Send([][]byte{frame(3, 60)}); n != 1 || err != nil {
		t.Fatalf("send %d %v", n, err)
	}
	if n, err := b.Recv(bufs, lens); n != 1 || err != nil || lens[0] != 120 {
		t.Fatalf("recv of the completed chain: %d frames, len %d, %v", n, lens[0], err)
	}
}

// TestEndpointRecvTailPastRing: the peer keeps writing a tail beyond the ring and
// NS_MOREFRAG everywhere into our RX ring while we receive. Recv takes tail from the
// kernel state and bounds its walk, so every call returns. (Before, a tail read back
// from the header after the peer's store made the walk never end.)
func TestEndpointRecvTailPastRing(t *testing.T) {
	a, b, bp := newEndpointPipe(t, 8)
	if n, err := a.Send([][]byte{frame(1, 60), frame(2, 60), frame(3, 60)}); n != 3 || err != nil {
		t.Fatalf("send %d %v", n, err)
	}
	rk := bp.RxRing(0)
	rx := bp.UserRing(rk)
	mem := bp.Region().Bytes()
	stop := make(chan struct{})
	started := make(chan struct{})
	var rounds atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the hostile peer
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i := uint32(0); i < rx.NumSlots(); i++ {
				s := rx.Slot(i)
				s.Flags |= NSMoreFrag
				rx.SetSlot(i, s)
			}
			for i := 0; i < 64; i++ {
				store32(mem, rk.Offset()+RingTailOff, rx.NumSlots()+3)
			}
			if rounds.Add(1) == 1 {
				close(started)
			}
		}
	}()
	<-started
	var calls atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		bufs := [][]byte{make([]byte, 2048)}
		lens := make([]int, 1)
		// Receive for as long as the peer keeps writing (a bounded number of its
		// rounds), so the two overlap whatever the scheduler does.
		for calls.Load() < 50000 || rounds.Load() < 2000 {
			_, _ = b.Recv(bufs, lens)
			calls.Add(1)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		close(stop)
		t.Fatalf("Recv did not return (call %d) with the peer writing tail past the ring", calls.Load()+1)
	}
	close(stop)
	wg.Wait()
}

// TestEndpointSendIgnoresCorruptHead: the peer moves our TX ring's head and cur
// ahead over slots we never filled. Send takes its position from the kernel state,
// so exactly the frame given is sent.
func TestEndpointSendIgnoresCorruptHead(t *testing.T) {
	a, b, _ := newEndpointPipe(t, 8)
	ap := a.Port()
	tk := ap.TxRing(0)
	store32(ap.Region().Bytes(), tk.Offset()+RingCurOff, 3)
	store32(ap.Region().Bytes(), tk.Offset()+RingHeadOff, 3)
	if n, err := a.Send([][]byte{frame(7, 80)}); n != 1 || err != nil {
		t.Fatalf("send %d %v", n, err)
	}
	bufs := [][]byte{make([]byte, 2048), make([]byte, 2048), make([]byte, 2048), make([]byte, 2048), make([]byte, 2048)}
	lens := make([]int, len(bufs))
	n, err := b.Recv(bufs, lens)
	if err != nil || n != 1 || !bytes.Equal(bufs[0][:lens[0]], frame(7, 80)) {
		t.Fatalf("received %d frames (%v), want exactly the one sent", n, err)
	}
}

// TestEndpointRoomFD: a Send that leaves frames behind (pipe peer full) is followed by
// a RoomFD signal once the peer frees room; a Send that took everything leaves it quiet.
func TestEndpointRoomFD(t *testing.T) {
	a, b, _ := newEndpointPipe(t, 8)
	frames := make([][]byte, 10)
	for i := range frames {
		frames[i] = frame(byte(i), 60)
	}
	n, err := a.Send(frames)
	if err != nil || n != 7 {
		t.Fatalf("send %d %v, want 7 of 10 (peer ring of 8)", n, err)
	}
	if readable(t, a.RoomFD()) {
		t.Fatal("RoomFD readable before the peer freed anything")
	}
	bufs := [][]byte{make([]byte, 2048), make([]byte, 2048)}
	lens := make([]int, 2)
	if n, err := b.Recv(bufs, lens); n != 2 || err != nil {
		t.Fatalf("recv %d %v", n, err)
	}
	if !readable(t, a.RoomFD()) {
		t.Fatal("RoomFD not readable after the peer freed room")
	}
	if n, err := a.Send(frames[7:9]); n != 2 || err != nil {
		t.Fatalf("send %d %v", n, err)
	}
	if readable(t, a.RoomFD()) {
		t.Fatal("RoomFD still readable after a Send that took everything")
	}
	if n, err := b.Recv(bufs, lens); n != 2 || err != nil {
		t.Fatalf("recv %d %v", n, err)
	}
	if readable(t, a.RoomFD()) {
		t.Fatal("RoomFD signalled with no Send waiting")
	}
}
