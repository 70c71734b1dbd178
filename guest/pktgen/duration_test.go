package pktgen

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// discardRing is a TX ring whose host takes every frame at once (a netmap port
// without a backend: txsync discards), so it never fills.
type discardRing struct {
	k *netmap.Kring
	r *netmap.Ring
}

func (d discardRing) Ring() *netmap.Ring               { return d.r }
func (d discardRing) Sync(f netmap.SyncFlags) error    { return d.k.Sync(f) }
func (d discardRing) Wait(time.Duration) (bool, error) { return true, d.k.Sync(0) }
func (d discardRing) Stats() netmap.DriverRingStats    { return netmap.DriverRingStats{} }

// TestTxDurationWithRoom: a tx run with a Duration ends on time even when its ring
// never fills: the deadline is checked every batch, not only when waiting for room.
func TestTxDurationWithRoom(t *testing.T) {
	np, err := netmap.NewPort(netmap.PortConfig{Name: "discard", TxSlots: 256, RxSlots: 256})
	require.NoError(t, err)
	defer np.Close()
	ring := discardRing{k: np.TxRing(0), r: np.UserRing(np.TxRing(0))}
	const bound = 200_000_000
	res, err := Run(context.Background(), Config{Mode: ModeTx, Tx: ring, Duration: 50 * time.Millisecond, Count: bound, Batch: 64})
	require.NoError(t, err)
	assert.Positive(t, res.Frames)
	assert.Less(t, res.Frames, uint64(bound), "the run ended at its Duration")
	assert.Less(t, res.Elapsed, 2*time.Second)
}

// hookRing calls after once the first sync returned.
type hookRing struct {
	discardRing
	after func()
	done  bool
}

func (h *hookRing) Sync(f netmap.SyncFlags) error {
	err := h.discardRing.Sync(f)
	if !h.done {
		h.done = true
		h.after()
	}
	return err
}

// TestPrefill: with Prefill a buffer is written when its slot first carries it and
// never again (a mark made after the first sync survives the run), but a slot whose
// buffer changed is written again; without Prefill every frame is written.
func TestPrefill(t *testing.T) {
	for _, prefill := range []bool{false, true} {
		np, err := netmap.NewPort(netmap.PortConfig{Name: "prefill", TxSlots: 256, RxSlots: 256})
		require.NoError(t, err)
		r := np.UserRing(np.TxRing(0))
		const markAt = 59 // the last byte of a 60-byte frame
		buf := func(i uint32) []byte { return r.Buf(r.Slot(i).BufIdx) }
		ring := &hookRing{discardRing: discardRing{k: np.TxRing(0), r: r}, after: func() {
			buf(0)[markAt] = 0xee
			buf(2)[markAt] = 0xee
			// Slot 2's marked buffer moves to slot 3, as a pipe's swap would.
			s2, s3 := r.Slot(2), r.Slot(3)
			s2.BufIdx, s3.BufIdx = s3.BufIdx, s2.BufIdx
			r.SetSlot(2, s2)
			r.SetSlot(3, s3)
		}}
		res, err := Run(context.Background(), Config{Mode: ModeTx, Tx: ring, Count: 1024, Batch: 64, Prefill: prefill})
		require.NoError(t, err)
		require.Equal(t, uint64(1024), res.Frames)
		assert.Equal(t, prefill, buf(0)[markAt] == 0xee, "prefill %v: slot 0's buffer written again", prefill)
		assert.NotEqual(t, byte(0xee), buf(3)[markAt], "prefill %v: a slot's new buffer is written", prefill)
		h, err := Parse(buf(5)[:60])
		require.NoError(t, err)
		if prefill {
			assert.Zero(t, h.Seq, "prefilled frames carry sequence 0")
		} else {
			assert.Equal(t, uint64(1024-256+5), h.Seq, "the last frame through slot 5")
		}
		np.Close()
	}
}
