package pktgen

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// packetPair is two PacketPorts on the ends of a datagram socketpair: what one
// sends the other receives, one frame per datagram, with the flow control of a
// socket (a full peer makes sendmmsg stop early, EAGAIN), as a packet socket on a
// NIC behaves. No privilege needed.
func packetPair(t *testing.T) (a, b *PacketPort) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	a, err = newPacketPort(fds[0], "pair0")
	require.NoError(t, err)
	b, err = newPacketPort(fds[1], "pair1")
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, a.Close())
		assert.NoError(t, b.Close())
	})
	return a, b
}

// TestPacketTxRx: pktgen sends through one port's TX ring and counts on the other's
// RX ring: every frame arrives, in order, of the size sent; the socket's small
// queue makes the sender wait (the flow-control path) and sends are batched.
func TestPacketTxRx(t *testing.T) {
	for _, size := range []int{60, 1514} {
		a, b := packetPair(t)
		const n = 20000
		ctx, cancel := context.WithTimeout(context.Background(), testLimit)
		defer cancel()
		rx := runAsync(ctx, Config{Mode: ModeRx, Rx: b.RxRing(), Count: n})
		tx, err := Run(ctx, Config{Mode: ModeTx, Tx: a.TxRing(), Count: n, FrameSize: size, Batch: 512})
		require.NoError(t, err)
		got := <-rx
		require.NoError(t, got.err)
		assert.Equal(t, uint64(n), tx.Frames)
		assert.Equal(t, uint64(n), got.res.Frames, "size %d", size)
		assert.Equal(t, uint64(n*size), got.res.Bytes)
		assert.Zero(t, got.res.Lost+got.res.Bad+got.res.OOO)
		st := a.TxRing().Stats()
		assert.Positive(t, st.Kicks)
		assert.Less(t, st.Kicks, uint64(n), "frames go in batches")
		assert.Positive(t, st.Waits, "the peer's queue filled: the sender waited")
		assert.Zero(t, st.Errors)
		assert.False(t, a.TxRing().Ring().TxPending(), "drained")
	}
}

// TestPacketPingPong: ping and pong over the pair, every round trip answered.
func TestPacketPingPong(t *testing.T) {
	a, b := packetPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), testLimit)
	defer cancel()
	pctx, stop := context.WithCancel(ctx)
	pong := runAsync(pctx, Config{Mode: ModePong, Tx: b.TxRing(), Rx: b.RxRing(), Src: [6]byte{2, 0, 0, 0, 0, 9}})
	res, err := Run(ctx, Config{Mode: ModePing, Tx: a.TxRing(), Rx: a.RxRing(), Count: 200, FrameSize: 100})
	stop()
	require.NoError(t, err)
	p := <-pong
	require.NoError(t, p.err)
	assert.Equal(t, uint64(200), res.Frames)
	assert.Zero(t, res.Lost)
	assert.Equal(t, uint64(200), p.res.Frames)
	assert.Positive(t, res.Latency.P50)
}

// TestPacketBadHead: a head outside the ring, or past the free slots, is refused by
// netmap's prologue (the ring is reinitialised) and nothing is sent.
func TestPacketBadHead(t *testing.T) {
	a, b := packetPair(t)
	r := a.TxRing().Ring()
	r.SetHeadCur(PacketSlots+5, PacketSlots+5)
	assert.ErrorIs(t, a.TxRing().Sync(0), netmap.ErrRingReinit)
	assert.Equal(t, uint32(0), r.Head())
	// RX: head beyond tail (nothing received yet).
	rr := b.RxRing().Ring()
	rr.SetHeadCur(7, 7)
	assert.ErrorIs(t, b.RxRing().Sync(0), netmap.ErrRingReinit)
	assert.Equal(t, uint32(0), rr.Head())
	var buf [2048]byte
	_, err := unix.Read(b.fd, buf[:])
	assert.ErrorIs(t, err, unix.EAGAIN, "nothing was sent")
}

// TestPacketBadSlots: slots whose length exceeds the buffer or is zero are dropped
// and counted; the good frames around them go out in order.
func TestPacketBadSlots(t *testing.T) {
	a, b := packetPair(t)
	r := a.TxRing().Ring()
	lens := []uint16{64, 0, 4000, 70}
	for i, l := range lens {
		s := r.Slot(uint32(i))
		binary.LittleEndian.PutUint32(r.Buf(s.BufIdx), uint32(i))
		s.Len = l
		r.SetSlot(uint32(i), s)
	}
	r.SetHeadCur(uint32(len(lens)), uint32(len(lens)))
	require.NoError(t, a.TxRing().Sync(0))
	assert.False(t, r.TxPending())
	assert.Equal(t, uint64(1), a.TxRing().Stats().Errors, "the empty frame")
	assert.Equal(t, uint64(1), a.np.TxRing(0).Stats().BadSlots, "the oversized frame")
	buf := make([]byte, 4096)
	for _, want := range []struct {
		n   int
		tag uint32
	}{{64, 0}, {70, 3}} {
		n, err := unix.Read(b.fd, buf)
		require.NoError(t, err)
		assert.Equal(t, want.n, n)
		assert.Equal(t, want.tag, binary.LittleEndian.Uint32(buf))
	}
	_, err := unix.Read(b.fd, buf)
	assert.ErrorIs(t, err, unix.EAGAIN)
}

// TestPacketSendError: a frame the kernel refuses for good (here: the peer is gone)
// is dropped and the error returned, so the ring never wedges.
func TestPacketSendError(t *testing.T) {
	a, b := packetPair(t)
	require.NoError(t, unix.Shutdown(b.fd, unix.SHUT_RDWR))
	r := a.TxRing().Ring()
	s := r.Slot(0)
	s.Len = 60
	r.SetSlot(0, s)
	r.SetHeadCur(1, 1)
	err := a.TxRing().Sync(0)
	require.Error(t, err)
	assert.True(t, errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EPIPE), "%v", err)
	assert.False(t, r.TxPending(), "the frame was dropped")
}

// TestPacketWaitTimesOut: an RX wait with nothing to receive returns false after
// about its timeout.
func TestPacketWaitTimesOut(t *testing.T) {
	_, b := packetPair(t)
	start := time.Now()
	ok, err := b.RxRing().Wait(30 * time.Millisecond)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.GreaterOrEqual(t, time.Since(start), 25*time.Millisecond)
	assert.Equal(t, uint64(1), b.RxRing().Stats().Waits)
}

// TestPacketOnLoopback: OpenPacket on lo (root only): frames sent on one socket
// are received on another, which sees only pktgen's EtherType.
func TestPacketOnLoopback(t *testing.T) {
	a, err := OpenPacket("lo")
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		t.Skip("needs CAP_NET_RAW")
	}
	require.NoError(t, err)
	defer a.Close()
	b, err := OpenPacket("lo")
	require.NoError(t, err)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testLimit)
	defer cancel()
	const n = 2000
	rx := runAsync(ctx, Config{Mode: ModeRx, Rx: b.RxRing(), Count: n, Idle: 2 * time.Second})
	tx, err := Run(ctx, Config{Mode: ModeTx, Tx: a.TxRing(), Count: n, Rate: 100000, Batch: 64})
	require.NoError(t, err)
	got := <-rx
	require.NoError(t, got.err)
	assert.Equal(t, uint64(n), tx.Frames)
	assert.Equal(t, uint64(n), got.res.Frames)
	assert.Zero(t, got.res.Bad)
	_, err = OpenPacket("ptvm-no-such-if")
	assert.Error(t, err)
}

// FuzzPacketRing drives the rings with head/cur values and slot contents as a
// hostile user could write them: syncs return errors or move frames, never panic,
// and tail stays inside the ring.
func FuzzPacketRing(f *testing.F) {
	f.Add([]byte{4, 4, 0, 60, 0, 200, 10, 1, 1})
	f.Add([]byte{255, 255, 255, 255, 0, 0, 0, 0})
	f.Add([]byte{3, 1, 2, 0, 0xff, 0xff, 0xff, 0xff, 7, 9})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 64 {
			ops = ops[:64]
		}
		a, b := packetPair(t)
		for i := 0; i+2 < len(ops); i += 3 {
			op, x, y := ops[i], uint32(ops[i+1]), uint32(ops[i+2])
			var pr *PacketRing
			if op&1 == 0 {
				pr = a.TxRing()
			} else {
				pr = b.RxRing()
			}
			r := pr.Ring()
			switch op % 6 / 2 {
			case 0: // move head and cur
				h := (r.Head() + x) % (PacketSlots + 8)
				r.SetHeadCur(h, (h+y%3)%(PacketSlots+8))
			case 1: // scribble a slot
				s := r.Slot(x % PacketSlots)
				s.Len, s.BufIdx, s.Flags = uint16(y*37), s.BufIdx^(y&3)<<20, uint16(y&netmap.NSMoreFrag)
				r.SetSlot(x%PacketSlots, s)
			}
			_ = pr.Sync(netmap.SyncFlags(y & 3))
			assert.Less(t, r.Tail(), uint32(PacketSlots))
		}
	})
}
