package netmap_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/backends/vale"
	"github.com/ptvmm/ptvmm/notify"
)

const extWait = 10 * time.Second

const etherType = 0x88b5

func macAddr(b byte) []byte { return []byte{0x02, 0, 0, 0, 0, b} }

var bcast = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// putFrame writes an Ethernet frame dst, src, our EtherType, seq into b[:size].
func putFrame(b, dst, src []byte, size int, seq uint32) {
	copy(b, dst)
	copy(b[6:], src)
	binary.BigEndian.PutUint16(b[12:], etherType)
	binary.BigEndian.PutUint32(b[14:], seq)
	_ = b[size-1]
}

// sendFrames fills up to n TX slots with frames and syncs; returns how many.
func sendFrames(r *netmap.DriverRing, n, size int, dst, src []byte, seq *uint32) (int, error) {
	ring := r.Ring()
	h := ring.Head()
	k := min(n, int(ring.Space()))
	for i := 0; i < k; i++ {
		sl := ring.Slot(h)
		putFrame(ring.Buf(sl.BufIdx), dst, src, size, *seq)
		*seq++
		sl.Len, sl.Flags = uint16(size), 0
		ring.SetSlot(h, sl)
		h = ring.Next(h)
	}
	ring.SetHeadCur(h, h)
	return k, r.Sync(0)
}

// recvFrames consumes every unread RX frame, calling fn with each.
func recvFrames(r *netmap.DriverRing, fn func([]byte)) int {
	ring := r.Ring()
	h, tl := ring.Head(), ring.Tail()
	n := 0
	for ; h != tl; h = ring.Next(h) {
		sl := ring.Slot(h)
		if b := ring.Buf(sl.BufIdx); b != nil && int(sl.Len) <= len(b) {
			fn(b[:sl.Len])
		}
		n++
	}
	ring.SetHeadCur(h, h)
	return n
}

func newSwitchLocal(t testing.TB, s *vale.Switch, name string, slots int, mode notify.Mode) (*vale.Port, *netmap.Local) {
	t.Helper()
	p, err := s.NewPort(name, netmap.PortConfig{TxSlots: slots, RxSlots: slots})
	require.NoError(t, err)
	l, err := netmap.StartLocal(p.Netmap(), mode)
	require.NoError(t, err)
	t.Cleanup(func() {
		l.Close()
		p.Detach()
	})
	return p, l
}

// TestKloopSwitchExactlyN: a driver sends N frames through its host loop into a
// switch port; a second port's driver receives them through its own host loop.
// Received plus the drops the switch counted is exactly N; B's MAC was learned, so
// nothing floods elsewhere.
func TestKloopSwitchExactlyN(t *testing.T) {
	const n = 50000
	s, err := vale.New("vale9")
	require.NoError(t, err)
	pa, a := newSwitchLocal(t, s, "a", 1024, notify.Block)
	pb, b := newSwitchLocal(t, s, "b", 1024, notify.Block)
	atx, arx := a.Driver.TxRing(0), a.Driver.RxRing(0)
	btx, brx := b.Driver.TxRing(0), b.Driver.RxRing(0)

	// B announces its MAC; A receives the broadcast through its RX host loop.
	var seq uint32 = 1 << 30
	k, err := sendFrames(btx, 1, 60, bcast, macAddr(0xb), &seq)
	require.NoError(t, err)
	require.Equal(t, 1, k)
	ok, err := arx.Wait(extWait)
	require.NoError(t, err)
	require.True(t, ok, "the broadcast did not reach A")
	require.Equal(t, 1, recvFrames(arx, func(f []byte) { assert.Equal(t, macAddr(0xb), f[6:12]) }))
	where, found := s.Learning().Where(macAddr(0xb))
	require.True(t, found)
	require.Equal(t, pb.Index(), where)

	// Pass 1: the sender stays at most window frames ahead of what B released, so
	// B's ring never overflows: exactly N arrive. Pass 2: no window, the receiver
	// falls behind: received + counted drops = N.
	for _, window := range []int{128, 0} {
		drops0, rx0 := pb.Counters().DropNoSpace, pb.Counters().RxFrames
		credit := make(chan int, 1)
		done := make(chan error, 1)
		go func() {
			var seq uint32
			acked := 0
			for sent := 0; sent < n; {
				for window > 0 && sent-acked >= window {
					acked = <-credit
				}
				ok, err := atx.Wait(extWait)
				if err == nil && !ok {
					err = fmt.Errorf("no TX room after %d frames", sent)
				}
				if err == nil {
					var k int
					k, err = sendFrames(atx, min(64, n-sent), 60, macAddr(0xb), macAddr(0xa), &seq)
					sent += k
				}
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		got, last := 0, -1
		// The switch counts drops just after delivering: poll the counter with
		// short waits rather than block on frames that will not come.
		deadline := time.Now().Add(extWait)
		for got+int(pb.Counters().DropNoSpace-drops0) < n {
			ok, err := brx.Wait(20 * time.Millisecond)
			require.NoError(t, err)
			if !ok {
				require.True(t, time.Now().Before(deadline), "window %d: stalled at %d received, %d dropped", window, got, pb.Counters().DropNoSpace-drops0)
				continue
			}
			deadline = time.Now().Add(extWait)
			got += recvFrames(brx, func(f []byte) {
				v := int(binary.BigEndian.Uint32(f[14:]))
				assert.Greater(t, v, last, "frames stay in order")
				last = v
			})
			require.NoError(t, brx.Sync(0)) // release before granting credit
			select {
			case <-credit:
			default:
			}
			credit <- got
		}
		require.NoError(t, <-done)
		cb := pb.Counters()
		drops := int(cb.DropNoSpace - drops0)
		t.Logf("window %d: received %d of %d, dropped %d; loop a %+v; driver a tx %+v", window, got, n, drops, a.Loop.Stats()[0], atx.Stats())
		assert.Equal(t, n, got+drops, "received + counted drops = N")
		waitFor(t, "rx counter", func() bool { return pb.Counters().RxFrames-rx0 == uint64(got) })
		if window > 0 {
			assert.Zero(t, drops, "a receiver that keeps up loses nothing")
		}
	}
	assert.Zero(t, pa.Counters().Drops())
	assert.Equal(t, uint64(2*n), pa.Counters().TxFrames)
}

// TestKloopSwitchTap: a TAP joined to the switch through a BackendPort; frames from
// the driver come out of the TAP on the host side, and host frames into the TAP reach
// the driver.
func TestKloopSwitchTap(t *testing.T) {
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create TAP interfaces here: " + why)
	}
	name := fmt.Sprintf("ptkl%d", os.Getpid()%100000)
	tp, err := tap.Open(tap.Options{Name: name})
	require.NoError(t, err)
	defer tp.Close()
	proto := etherType<<8&0xff00 | etherType>>8
	ifi, err := net.InterfaceByName(name)
	require.NoError(t, err)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}))

	s, err := vale.New("vale8")
	require.NoError(t, err)
	bp, err := s.AttachBackend("tap", tp.Queue(0), vale.BackendOptions{})
	require.NoError(t, err)
	defer bp.Close()
	require.NoError(t, bp.Start())
	_, l := newSwitchLocal(t, s, "vm", 256, notify.Block)

	// Driver -> host loop -> switch -> TAP -> host socket.
	seq := uint32(0x5157)
	_, err = sendFrames(l.Driver.TxRing(0), 1, 60, bcast, macAddr(0x1), &seq)
	require.NoError(t, err)
	buf := make([]byte, 2048)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, int(extWait/time.Millisecond))
		require.NoError(t, err)
		require.Equal(t, 1, n, "frame did not come out of the TAP")
		k, err := unix.Read(fd, buf)
		require.NoError(t, err)
		if k >= 18 && binary.BigEndian.Uint32(buf[14:]) == 0x5157 {
			assert.Equal(t, macAddr(0x1), buf[6:12])
			break
		}
	}

	// Host socket -> TAP -> switch -> host loop -> driver.
	in := make([]byte, 60)
	putFrame(in, macAddr(0x1), macAddr(0x2), 60, 0x1234)
	_, err = unix.Write(fd, in)
	require.NoError(t, err)
	rx := l.Driver.RxRing(0)
	for found := false; !found; {
		ok, err := rx.Wait(extWait)
		require.NoError(t, err)
		require.True(t, ok, "host frame did not reach the driver")
		recvFrames(rx, func(f []byte) {
			if len(f) >= 18 && binary.BigEndian.Uint32(f[14:]) == 0x1234 {
				assert.Equal(t, in, f)
				found = true
			}
		})
	}
	assert.Positive(t, l.Loop.Stats()[1].Notifies, "the switch notified the RX host loop")
}

// waitFor polls cond (yielding) until it holds or extWait passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(extWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
	}
}

// TestKloopSwitchAttacks: a hostile app writes the CSB and its slots directly and
// kicks regardless of kern_need_kick. Each case is counted by the loop or the switch,
// the port keeps working, nothing panics or hangs.
func TestKloopSwitchAttacks(t *testing.T) {
	s, err := vale.New("vale7")
	require.NoError(t, err)
	pa, a := newSwitchLocal(t, s, "a", 64, notify.Block)
	pb, b := newSwitchLocal(t, s, "b", 64, notify.Block)
	csb := a.CSB
	ring := a.Driver.TxRing(0).Ring()
	kick := func() { require.NoError(t, a.Kicks[0].Signal()) }
	// sendRaw writes slots from the last head on and publishes head directly.
	head := csb.Head(0)
	bufs := make([]uint32, ring.NumSlots()) // the slots' own buffers, before any attack
	for i := range bufs {
		bufs[i] = ring.Slot(uint32(i)).BufIdx
	}
	sendRaw := func(slots ...netmap.Slot) {
		h := head
		for _, sl := range slots {
			if sl.BufIdx == 0 {
				sl.BufIdx = bufs[h]
				putFrame(ring.Buf(sl.BufIdx), macAddr(0xb), macAddr(0xa), 60, 7)
			}
			ring.SetSlot(h, sl)
			h = ring.Next(h)
		}
		csb.SetHeadCur(0, h, h)
		head = h
		kick()
	}
	// A good frame after the bad ones: once B has it, the loop processed them all.
	received := 0
	good := func() {
		// The app may reuse slots only once the loop took them (hwcur reached head).
		waitFor(t, "hwcur", func() bool { return csb.HwCur(0) == head })
		sendRaw(netmap.Slot{Len: 60})
		rx := b.Driver.RxRing(0)
		for before := received; received == before; {
			ok, err := rx.Wait(extWait)
			require.NoError(t, err)
			require.True(t, ok, "the good frame did not arrive")
			received += recvFrames(rx, func([]byte) {})
		}
	}
	good()

	t.Run("head beyond ring", func(t *testing.T) {
		csb.SetHeadCur(0, 5000, 5000)
		kick()
		// A kick still pending from the last frame may run the ring once more.
		waitFor(t, "reinit", func() bool { return a.Loop.Stats()[0].Reinits >= 1 && csb.KernNeedKick(0) == 1 })
		assert.Positive(t, pa.Counters().RingReinits)
		csb.SetHeadCur(0, head, head) // hwcur did not move
		good()
	})
	t.Run("rx head beyond ring", func(t *testing.T) {
		csb.SetHeadCur(1, 64, 3)
		require.NoError(t, a.Kicks[1].Signal())
		waitFor(t, "reinit", func() bool { return a.Loop.Stats()[1].Reinits >= 1 })
		hw := csb.HwCur(1)
		csb.SetHeadCur(1, hw, hw)
	})
	t.Run("buf_idx outside the pool", func(t *testing.T) {
		bad0 := pa.Counters().BadSlots
		sendRaw(netmap.Slot{BufIdx: pa.Netmap().Region().NumBufs(), Len: 60}, netmap.Slot{BufIdx: 1, Len: 60}, netmap.Slot{BufIdx: ^uint32(0), Len: 60})
		good()
		assert.Equal(t, bad0+3, pa.Counters().BadSlots)
	})
	t.Run("len above buffer size", func(t *testing.T) {
		bad0 := pa.Counters().BadSlots
		bs := uint16(pa.Netmap().Region().BufSize())
		sl := netmap.Slot{BufIdx: bufs[head], Len: bs + 1}
		sendRaw(sl)
		good()
		assert.Equal(t, bad0+1, pa.Counters().BadSlots)
	})
	t.Run("endless MOREFRAG", func(t *testing.T) {
		// Every slot the app owns carries NS_MOREFRAG: the chain can never end.
		chain := make([]netmap.Slot, 63)
		for i := range chain {
			chain[i] = netmap.Slot{Len: 60, Flags: netmap.NSMoreFrag}
		}
		sendRaw(chain...)
		good()
		assert.Equal(t, uint64(1), pa.Counters().DropFrags)
	})
	waitFor(t, "rx counter", func() bool { return pb.Counters().RxFrames == uint64(received) })
	assert.Zero(t, a.Loop.Stats()[0].Errors)
}

// TestKloopSaturationSuppression: a driver that sends faster than the host loop can
// forward (1514-byte frames the switch copies; batches of 256, the receiver drained in
// the sender's goroutine: two busy threads) keeps the loop busy, so the loop keeps
// kicks off and the driver blocks only when its ring fills. Without suppression
// every sync would kick (1 per 256 frames) and every hwtail move would interrupt.
func TestKloopSaturationSuppression(t *testing.T) {
	const n, batch = 200000, 256
	s, err := vale.New("vale6")
	require.NoError(t, err)
	pa, a := newSwitchLocal(t, s, "a", 1024, notify.Block)
	pb, err := s.NewPort("b", netmap.PortConfig{})
	require.NoError(t, err)
	defer pb.Detach()
	rk := pb.Netmap().RxRing(0)
	rr := pb.Netmap().UserRing(rk)
	got := 0
	drain := func() {
		require.NoError(t, rk.Sync(0))
		h, tl := rr.Head(), rr.Tail()
		got += int((tl + rr.NumSlots() - h) % rr.NumSlots())
		rr.SetHeadCur(tl, tl)
	}
	tx := a.Driver.TxRing(0)
	var seq uint32
	for sent := 0; sent < n; {
		if tx.Ring().Space() == 0 {
			ok, err := tx.Wait(extWait)
			require.NoError(t, err)
			require.True(t, ok)
		}
		k, err := sendFrames(tx, min(batch, n-sent), 1514, bcast, macAddr(0xa), &seq)
		require.NoError(t, err)
		sent += k
		drain()
	}
	waitFor(t, "forwarding", func() bool { drain(); return uint64(n) == pa.Counters().TxFrames })
	st, ls := tx.Stats(), a.Loop.Stats()[0]
	kicks, irqs := float64(st.Kicks)/n, float64(ls.Interrupts)/n
	t.Logf("kicks/frame %.5f irqs/frame %.5f kicks/sync %.3f; loop %+v", kicks, irqs, float64(st.Kicks)/float64(st.Syncs), a.Loop.Totals())
	assert.LessOrEqual(t, kicks, 1.0/256, "at most one kick per 256 frames")
	assert.Less(t, float64(st.Kicks), 0.75*float64(st.Syncs), "kicks are not suppressed while the loop is busy")
	assert.LessOrEqual(t, irqs, 1.0/256, "interrupts are not suppressed")
	waitFor(t, "delivery", func() bool { drain(); return uint64(n) == uint64(got)+pb.Counters().Drops() })
}
