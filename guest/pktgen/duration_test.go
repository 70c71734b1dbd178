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
