package bench

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/guest/pktgen"
)

// TestWaitFor: auto spins only where every busy thread of a run has a core; an
// explicit choice is kept.
func TestWaitFor(t *testing.T) {
	for _, tc := range []struct {
		w     Wait
		tier  Tier
		wl    Workload
		cores int
		want  Wait
	}{
		{WaitAuto, TierProcess, WorkloadTX, 2, WaitAdaptive},
		{WaitAuto, TierProcess, WorkloadRX, 2, WaitAdaptive},
		{WaitAuto, TierProcess, WorkloadPingPong, 2, WaitBlock},
		{WaitAuto, TierProcess, WorkloadPingPong, 3, WaitAdaptive},
		{WaitAuto, TierProcess, WorkloadTX, 1, WaitBlock},
		{WaitAuto, TierMicro, WorkloadTX, 2, WaitBlock},
		{WaitAuto, TierLinux, WorkloadTX, 4, WaitAdaptive},
		{WaitBlock, TierProcess, WorkloadTX, 64, WaitBlock},
		{WaitAdaptive, TierLinux, WorkloadPingPong, 1, WaitAdaptive},
	} {
		assert.Equal(t, tc.want, tc.w.For(tc.tier, tc.wl, tc.cores), "%+v", tc)
	}
	for name, c := range map[string]Config{
		"wait": {Wait: "spin"},
		"spin": {Spin: -time.Microsecond},
		"long": {Spin: 2 * time.Second},
	} {
		_, err := Run(context.Background(), c)
		assert.Error(t, err, name)
	}
}

// TestWaitRecorded: every record says how its run waited (auto resolved), the
// table says it too, and an explicit -wait reaches the host side: with adaptive and
// a window far longer than a round trip, ptnet's host loop never sleeps between
// pings, so the driver does not kick; with block it kicks for every ping.
func TestWaitRecorded(t *testing.T) {
	rep := sharedReport(t)
	assert.Equal(t, WaitAuto, rep.Wait)
	assert.Equal(t, us(DefaultSpin), rep.SpinUS)
	for _, r := range rep.Records {
		want := WaitAuto.For(TierProcess, r.Workload, rep.Machine.Cores)
		assert.Equal(t, want, r.Wait, "%s %s %d", r.Path, r.Workload, r.Size)
		if want == WaitAdaptive {
			assert.Equal(t, rep.SpinUS, r.SpinUS)
		} else {
			assert.Zero(t, r.SpinUS)
		}
	}
	var b bytes.Buffer
	require.NoError(t, rep.WriteTable(&b))
	assert.Contains(t, b.String(), "(host side and driver wait: ")

	kicks := map[Wait]float64{}
	for _, w := range []Wait{WaitBlock, WaitAdaptive} {
		rep, err := Run(context.Background(), Config{Tier: TierProcess, Paths: []Path{PathPtnetPipe}, Workloads: []Workload{WorkloadPingPong},
			Sizes: []int{60}, Count: 100, Wait: w, Spin: time.Second})
		require.NoError(t, err)
		require.Len(t, rep.Records, 1)
		r := rep.Records[0]
		assert.Equal(t, w, r.Wait)
		assert.Equal(t, uint64(100), r.Received)
		kicks[w] = r.KicksPerFrame
	}
	assert.InDelta(t, 1, kicks[WaitBlock], 0.2, "block: the host loop sleeps between pings")
	assert.Less(t, kicks[WaitAdaptive], 0.1, "adaptive: the host loop polls through the round trips")
}

// TestSinkCounts: the ring sink counts slots of the expected length, refuses other
// lengths, and parses the first frame of every drain.
func TestSinkCounts(t *testing.T) {
	m, s, err := netmap.NewPipe("sinktest", "0", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer m.Close()
	defer s.Close()
	tx, err := netmap.NewEndpoint(m, false)
	require.NoError(t, err)
	defer tx.Close()
	rx, err := netmap.NewEndpoint(s, false)
	require.NoError(t, err)
	defer rx.Close()
	sk := newSink(rx, s, 60)
	good := pktgen.Template(60, 0, peerMAC, driverMAC, pktgen.KindData)
	other := make([]byte, 100)
	copy(other, good)
	junk := make([]byte, 60) // not a pktgen frame
	send := func(frames ...[]byte) {
		n, err := tx.Send(frames)
		require.NoError(t, err)
		require.Equal(t, len(frames), n)
	}
	send(good, good, other, good)
	sk.drain()
	assert.Equal(t, uint64(3), sk.got)
	assert.Equal(t, uint64(1), sk.bad, "a frame of another length")
	send(junk, good, good)
	sk.drain()
	assert.Equal(t, uint64(5), sk.got)
	assert.Equal(t, uint64(2), sk.bad, "the drain's first frame is parsed")
	require.NoError(t, sk.err)
}
