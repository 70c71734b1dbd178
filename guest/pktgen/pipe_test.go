package pktgen

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
)

// testLimit bounds every run; a healthy one ends far sooner.
const testLimit = 20 * time.Second

// localPipe makes a pipe and drives both ends through the passthrough
// protocol in-process: a CSB, eventfd kicks and interrupts, each end's host
// loop, and a driver per end (what a ptnet guest does over PCI).
func localPipe(t *testing.T, slots int) (a, b *netmap.Local) {
	t.Helper()
	m, s, err := netmap.NewPipe("pktgen", "0", netmap.PortConfig{TxSlots: slots, RxSlots: slots})
	require.NoError(t, err)
	a, err = netmap.StartLocal(m, notify.Block)
	require.NoError(t, err)
	b, err = netmap.StartLocal(s, notify.Block)
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, a.Close())
		assert.NoError(t, b.Close())
		s.Close()
		m.Close()
	})
	return a, b
}

type outcome struct {
	res Result
	err error
}

func runAsync(ctx context.Context, c Config) <-chan outcome {
	ch := make(chan outcome, 1)
	go func() {
		r, err := Run(ctx, c)
		ch <- outcome{r, err}
	}()
	return ch
}

func TestTxRxOverPipe(t *testing.T) {
	for _, tc := range []struct {
		size, hdr, batch int
	}{{60, 0, 256}, {1514, 12, 64}, {60, 0, 1}} {
		t.Run("", func(t *testing.T) {
			const n = 20000
			a, b := localPipe(t, 1024)
			ctx, cancel := context.WithTimeout(context.Background(), testLimit)
			defer cancel()
			rxc := runAsync(ctx, Config{Mode: ModeRx, Rx: b.Driver.RxRing(0), Count: n, HdrLen: tc.hdr, Batch: tc.batch})
			tx, err := Run(ctx, Config{Mode: ModeTx, Tx: a.Driver.TxRing(0), Count: n, FrameSize: tc.size, HdrLen: tc.hdr, Batch: tc.batch})
			require.NoError(t, err)
			rx := <-rxc
			require.NoError(t, rx.err)
			t.Logf("%d B batch %d\n%s%s", tc.size, tc.batch, tx.Human(), rx.res.Human())

			assert.Equal(t, uint64(n), tx.Frames)
			assert.Equal(t, uint64(n*tc.size), tx.Bytes)
			assert.Equal(t, uint64(n), rx.res.Frames, "a pipe has flow control: nothing is lost")
			assert.Equal(t, uint64(n*tc.size), rx.res.Bytes)
			assert.Zero(t, rx.res.Lost)
			assert.Zero(t, rx.res.OOO)
			assert.Zero(t, rx.res.Bad)
			assert.Positive(t, tx.Elapsed)
			assert.Positive(t, tx.Syncs)
			// The stats are the driver ring's, as a delta over the run.
			assert.Equal(t, a.Driver.TxRing(0).Stats().Kicks, tx.Kicks)
			// A sync kicks at most once, and only when the host asked.
			assert.LessOrEqual(t, tx.Kicks, tx.Syncs)
			if tc.batch == 256 {
				// Batching: frames go in groups, not one sync (or kick) each.
				assert.Less(t, tx.Syncs, uint64(n/10))
			}
		})
	}
}

func TestPingPongOverPipe(t *testing.T) {
	const n = 300
	a, b := localPipe(t, 256)
	ctx, cancel := context.WithTimeout(context.Background(), testLimit)
	defer cancel()
	pongSrc := [6]byte{2, 0, 0, 0, 0, 2}
	pc := runAsync(ctx, Config{Mode: ModePong, Tx: b.Driver.TxRing(0), Rx: b.Driver.RxRing(0), Count: n, Src: pongSrc})
	ping, err := Run(ctx, Config{Mode: ModePing, Tx: a.Driver.TxRing(0), Rx: a.Driver.RxRing(0), Count: n})
	require.NoError(t, err)
	pong := <-pc
	require.NoError(t, pong.err)
	t.Logf("\n%s%s%s", ping.Human(), ping.Summary(), "\n"+pong.res.Human())

	assert.Equal(t, uint64(n), ping.Frames)
	assert.Zero(t, ping.Lost)
	assert.Zero(t, ping.Bad)
	assert.Equal(t, uint64(n), pong.res.Frames)
	l := ping.Latency
	assert.Equal(t, uint64(n), l.N)
	assert.Positive(t, l.Min)
	assert.LessOrEqual(t, l.Min, l.P50)
	assert.LessOrEqual(t, l.P50, l.P99)
	assert.LessOrEqual(t, l.P99, l.Max)
	// Each round trip blocks on the echo, so the ping side takes interrupts.
	assert.Positive(t, ping.Irqs)
}

func TestPongAnswersToSender(t *testing.T) {
	a, b := localPipe(t, 64)
	ctx, cancel := context.WithTimeout(context.Background(), testLimit)
	defer cancel()
	pongSrc := [6]byte{2, 0, 0, 0, 0, 9}
	pc := runAsync(ctx, Config{Mode: ModePong, Tx: b.Driver.TxRing(0), Rx: b.Driver.RxRing(0), Count: 1, Src: pongSrc})
	// One ping by hand, then read the echo by hand.
	tx := a.Driver.TxRing(0)
	e := Template(60, 0, Broadcast, DefaultSrc, KindPing)
	Stamp(e, 42, 7)
	send(t, tx, e)
	require.NoError(t, (<-pc).err)
	got := recvOne(t, a.Driver.RxRing(0))
	h, err := Parse(got)
	require.NoError(t, err)
	assert.Equal(t, Header{Dst: DefaultSrc, Src: pongSrc, Kind: KindPong, Seq: 42, Stamp: 7}, h)
	assert.Len(t, got, 60)
}

func TestRxCountsForeignFrames(t *testing.T) {
	a, b := localPipe(t, 64)
	ctx, cancel := context.WithTimeout(context.Background(), testLimit)
	defer cancel()
	rxc := runAsync(ctx, Config{Mode: ModeRx, Rx: b.Driver.RxRing(0), Count: 3})
	tx := a.Driver.TxRing(0)
	arp := make([]byte, 60)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	send(t, tx, arp)
	e := Template(60, 0, Broadcast, DefaultSrc, KindData)
	Stamp(e, 0, 0)
	send(t, tx, e)
	Stamp(e, 2, 0)
	send(t, tx, e)
	rx := <-rxc
	require.NoError(t, rx.err)
	assert.Equal(t, uint64(3), rx.res.Frames)
	assert.Equal(t, uint64(1), rx.res.Bad, "the ARP frame")
	assert.Equal(t, uint64(1), rx.res.Lost, "sequence 1 never came")
}

func TestRateLimit(t *testing.T) {
	const n, rate = 100, 4000.0
	a, b := localPipe(t, 256)
	ctx, cancel := context.WithTimeout(context.Background(), testLimit)
	defer cancel()
	rxc := runAsync(ctx, Config{Mode: ModeRx, Rx: b.Driver.RxRing(0), Count: n})
	tx, err := Run(ctx, Config{Mode: ModeTx, Tx: a.Driver.TxRing(0), Count: n, Rate: rate})
	require.NoError(t, err)
	require.NoError(t, (<-rxc).err)
	// Frame k goes no earlier than k/rate after the start.
	assert.GreaterOrEqual(t, tx.Elapsed, time.Duration(float64(n-1)/rate*float64(time.Second)))
	assert.LessOrEqual(t, tx.Mpps(), rate/1e6*1.01)
}

func TestDurationAndCancel(t *testing.T) {
	_, b := localPipe(t, 64)
	rx := b.Driver.RxRing(0)
	start := time.Now()
	res, err := Run(context.Background(), Config{Mode: ModeRx, Rx: rx, Duration: 30 * time.Millisecond})
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond)
	assert.Zero(t, res.Frames)

	ctx, cancel := context.WithCancel(context.Background())
	ch := runAsync(ctx, Config{Mode: ModeRx, Rx: rx})
	cancel()
	select {
	case o := <-ch:
		assert.NoError(t, o.err, "a canceled run is a normal end")
	case <-time.After(testLimit):
		t.Fatal("rx did not notice the canceled context")
	}
}

func TestPingTimesOut(t *testing.T) {
	a, _ := localPipe(t, 64) // nobody answers
	res, err := Run(context.Background(), Config{Mode: ModePing, Tx: a.Driver.TxRing(0), Rx: a.Driver.RxRing(0),
		Count: 2, RoundTimeout: 20 * time.Millisecond})
	require.NoError(t, err)
	assert.Zero(t, res.Frames)
	assert.Equal(t, uint64(2), res.Lost)
	assert.GreaterOrEqual(t, res.Elapsed, 40*time.Millisecond)
}

func TestConfigErrors(t *testing.T) {
	a, _ := localPipe(t, 64)
	tx, rx := a.Driver.TxRing(0), a.Driver.RxRing(0)
	bad := map[string]Config{
		"no tx ring":     {Mode: ModeTx},
		"no rx ring":     {Mode: ModePing, Tx: tx},
		"frame too big":  {Mode: ModeTx, Tx: tx, FrameSize: 2040, HdrLen: 12},
		"frame too tiny": {Mode: ModeTx, Tx: tx, FrameSize: 20},
		"header length":  {Mode: ModeRx, Rx: rx, HdrLen: 10},
		"negative rate":  {Mode: ModeTx, Tx: tx, Rate: -1},
		"unknown mode":   {Mode: Mode(9), Tx: tx, Rx: rx},
	}
	for name, c := range bad {
		_, err := Run(context.Background(), c)
		assert.Error(t, err, name)
	}
}

// send puts one frame in the TX ring and syncs.
func send(t *testing.T, r *netmap.DriverRing, e []byte) {
	t.Helper()
	ok, err := r.Wait(testLimit)
	require.NoError(t, err)
	require.True(t, ok)
	ring := r.Ring()
	h := ring.Head()
	s := ring.Slot(h)
	copy(ring.Buf(s.BufIdx), e)
	s.Len, s.Flags = uint16(len(e)), 0
	ring.SetSlot(h, s)
	ring.Advance(1)
	require.NoError(t, r.Sync(0))
}

// recvOne takes one frame from the RX ring.
func recvOne(t *testing.T, r *netmap.DriverRing) []byte {
	t.Helper()
	ok, err := r.Wait(testLimit)
	require.NoError(t, err)
	require.True(t, ok)
	ring := r.Ring()
	s := ring.Slot(ring.Head())
	out := append([]byte(nil), ring.Buf(s.BufIdx)[:s.Len]...)
	ring.Advance(1)
	require.NoError(t, r.Sync(0))
	return out
}
