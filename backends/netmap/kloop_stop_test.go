package netmap

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/notify"
)

// TestKloopStopSyncsReleasedSlots: an app releases RX slots in its CSB without a
// kick (the host asked for none) and then goes away. Stop hands those slots back to
// the kring, so the next session (InitCSB, as a new CREATE) does not offer the same
// frames again.
func TestKloopStopSyncsReleasedSlots(t *testing.T) {
	m, s, err := NewPipe("stop", "1", PortConfig{TxSlots: 64})
	require.NoError(t, err)
	defer s.Close()
	defer m.Close()
	loc, err := StartLocal(m, notify.Block)
	require.NoError(t, err)
	peer, err := NewEndpoint(s, false)
	require.NoError(t, err)
	defer peer.Close()

	frame := make([]byte, 60)
	sent, err := peer.Send([][]byte{frame, frame, frame, frame, frame})
	require.NoError(t, err)
	require.Equal(t, 5, sent)
	rx := loc.Driver.RxRing(0)
	deadline := time.Now().Add(5 * time.Second)
	for rx.Ring().Space() < 5 && time.Now().Before(deadline) {
		require.NoError(t, rx.Sync(0))
		if rx.Ring().Space() < 5 {
			_, err := rx.Wait(100 * time.Millisecond)
			require.NoError(t, err)
		}
	}
	require.Equal(t, uint32(5), rx.Ring().Space(), "frames arrived")

	// Release them in the CSB only: no sync, no kick.
	ci := m.NumTxRings()
	loc.CSB.SetHeadCur(ci, 5, 5)
	k := m.RxRing(0)
	require.Equal(t, uint32(0), k.State().HwCur, "the host has not seen the release yet")
	require.NoError(t, loc.Close())
	require.Equal(t, uint32(5), k.State().HwCur, "Stop synced the released slots")

	// A new session starts after them: nothing to receive.
	loc2, err := StartLocal(m, notify.Block)
	require.NoError(t, err)
	defer loc2.Close()
	require.Equal(t, uint32(5), loc2.CSB.Head(ci))
	require.Equal(t, uint32(5), loc2.CSB.HwCur(ci))
	require.Equal(t, uint32(5), loc2.CSB.HwTail(ci), "no old frame offered again")
}
