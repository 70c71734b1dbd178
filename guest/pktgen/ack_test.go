package pktgen

import (
	"context"
	"flag"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRxAcksPaceASender: a sender that keeps at most a window in flight (sent,
// not acknowledged) gets all its frames through only because rx acknowledges:
// the acks name the next sequence number expected and the frames received, go
// to Dst from Src, and never run ahead of what was sent.
func TestRxAcksPaceASender(t *testing.T) {
	const n, window, every = 3000, 48, 16
	a, b := localPipe(t, 256)
	ctx, cancel := context.WithTimeout(context.Background(), testLimit)
	defer cancel()
	src, dst := [6]byte{2, 0, 0, 0, 0, 1}, [6]byte{2, 0, 0, 0, 0, 2}
	rxc := runAsync(ctx, Config{Mode: ModeRx, Rx: b.Driver.RxRing(0), Ack: b.Driver.TxRing(0), AckEvery: every,
		Count: n, Src: src, Dst: dst, Idle: 2 * time.Second})

	tx, acks := a.Driver.TxRing(0), a.Driver.RxRing(0)
	e := Template(60, 0, src, dst, KindData)
	var sent, acked, nacks uint64
	end := time.Now().Add(testLimit)
	for sent < n && time.Now().Before(end) {
		for sent < n && sent-acked < window && tx.Ring().Space() > 0 {
			Stamp(e, sent, 0)
			send(t, tx, e)
			sent++
		}
		if sent-acked < window {
			continue
		}
		if _, err := acks.Wait(100 * time.Millisecond); err != nil {
			require.NoError(t, err)
		}
		r := acks.Ring()
		for !r.Empty() {
			s := r.Slot(r.Head())
			h, err := Parse(r.Buf(s.BufIdx)[:s.Len])
			require.NoError(t, err)
			require.Equal(t, KindAck, h.Kind)
			assert.Equal(t, dst, h.Dst)
			assert.Equal(t, src, h.Src)
			assert.LessOrEqual(t, h.Seq, sent, "an ack never names a frame not sent")
			assert.LessOrEqual(t, h.Stamp, h.Seq, "frames received, at most the next sequence number")
			assert.GreaterOrEqual(t, h.Seq, acked, "acks move forward")
			acked = h.Seq
			nacks++
			r.Advance(1)
		}
		require.NoError(t, acks.Sync(0))
	}
	require.Equal(t, uint64(n), sent, "the sender got every frame out within %v (%d acknowledged)", testLimit, acked)
	rx := <-rxc
	require.NoError(t, rx.err)
	assert.Equal(t, uint64(n), rx.res.Frames)
	assert.Zero(t, rx.res.Lost)
	assert.Positive(t, nacks)
	assert.GreaterOrEqual(t, rx.res.Acks, nacks)
	assert.Contains(t, rx.res.Summary(), " acks=")
	// Acks come about every AckEvery frames or when rx waits, never per frame.
	assert.Less(t, rx.res.Acks, uint64(n/2))
	// The run's counters are the RX ring's: the acks' syncs are not among them.
	assert.Equal(t, b.Driver.RxRing(0).Stats().Syncs, rx.res.Syncs)
}

// TestAckConfig: acks are rx's; -ack takes a count, with -mode rx.
func TestAckConfig(t *testing.T) {
	a, _ := localPipe(t, 64)
	_, err := Run(context.Background(), Config{Mode: ModeTx, Tx: a.Driver.TxRing(0), Ack: a.Driver.TxRing(0), Count: 1})
	assert.Error(t, err, "tx sends no acks")
	for _, tc := range []struct {
		args []string
		ok   bool
		ack  int
	}{
		{[]string{"-mode", "rx", "-ack", "32"}, true, 32},
		{[]string{"-mode", "rx"}, true, 0},
		{[]string{"-mode", "tx", "-ack", "32"}, false, 0},
		{[]string{"-mode", "rx", "-ack", "-1"}, false, 0},
	} {
		var f Flags
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		f.Register(fs)
		require.NoError(t, fs.Parse(tc.args))
		c, err := f.Config()
		if !tc.ok {
			assert.Error(t, err, "%v", tc.args)
			continue
		}
		require.NoError(t, err, "%v", tc.args)
		assert.Equal(t, tc.ack, c.AckEvery, "%v", tc.args)
	}
}
