package bench

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/notify"
)

// microCount is a multiple of both guests' batches, so no rounding.
const microCount = 4096

// TestMicroTier runs the micro tier where /dev/kvm is usable (in the QEMU test host
// here: go run ./e2e/cmd/testhost -pkgs ./bench -run TestMicroTier): guest TX, RX
// and ping-pong on every path and size, each frame counted by the guest (its report,
// its counters) and by the far end, none dropped (TX: the far end's credit paces the
// guest; RX: its window), RX frames and pongs in sequence, RX bytes the guest's own
// count, kicks suppressed for TX and RX (ping-pong: about one a round trip), the
// guest's round-trip percentiles; the report validates against the schema.
func TestMicroTier(t *testing.T) {
	if ok, why := TierStatus(TierMicro); !ok {
		t.Skip(why)
	}
	var progress bytes.Buffer
	rep, err := Run(context.Background(), Config{Tier: TierMicro, Count: microCount, Progress: &progress})
	require.NoError(t, err)
	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	t.Logf("progress:\n%s\n%s", progress.String(), table.String())
	assert.Equal(t, TierMicro, rep.Tier)
	assert.False(t, rep.Interrupted)
	notes := rep.Notes
	ws := tierWorkloads[TierMicro]
	if un := unsupported(TierMicro, Workloads); len(un) > 0 {
		require.NotEmpty(t, notes)
		assert.Equal(t, "tier micro: "+joinList(un)+" not measured: "+unsupportedWhy[TierMicro], notes[0])
		notes = notes[1:]
	}
	assert.NotContains(t, progress.String(), "out of sequence")
	tapSkipped := false
	for _, n := range notes {
		require.True(t, strings.HasPrefix(n, "virtio-tap: skipped: "), "unexpected note: %s", n)
		tapSkipped = true
	}
	for _, p := range Paths {
		if p == PathVirtioTap && tapSkipped {
			continue
		}
		for _, w := range ws {
			for _, s := range Sizes {
				r := find(rep, p, w, s)
				require.NotNil(t, r, "%s %s %d", p, w, s)
				what := fmt.Sprintf("%s %s %d", p, w, s)
				assert.Equal(t, TierMicro, r.Tier, what)
				assert.Equal(t, uint64(microCount), r.Frames, "%s: the sender's count", what)
				assert.Equal(t, uint64(microCount), r.Received, "%s: the receiver's count", what)
				assert.Zero(t, r.Drops, what)
				assert.Positive(t, r.Mpps, what)
				// Bytes: the far end's count for TX, the guest's own for RX, the
				// pongs' for ping-pong.
				gotBytes := r.Gbps * 1e9 / 8 * r.Seconds
				assert.InEpsilon(t, float64(r.Received)*float64(s), gotBytes, 1e-6, "%s: bytes received", what)
				assert.Positive(t, r.CPUHost+r.CPUGuest, what)
				if w == WorkloadPingPong {
					require.NotNil(t, r.LatencyP50, what)
					require.NotNil(t, r.LatencyP99, what)
					assert.Positive(t, *r.LatencyP50, what)
					assert.GreaterOrEqual(t, *r.LatencyP99, *r.LatencyP50, what)
					// The TSC calibration: half the round trips take p50 or more, so the
					// mean is at least p50/2; none is longer than the run.
					assert.Less(t, *r.LatencyP50, 2*r.Seconds*1e6/float64(r.Received), "%s: p50 vs the mean", what)
					assert.Less(t, *r.LatencyP99, r.Seconds*1e6, "%s: p99 vs the run", what)
					// A kick per ping at most, one per pong (virtio-net's RX queue may
					// ask for each buffer back), one for the first RX buffers.
					assert.Less(t, r.KicksPerFrame, 2.5, "%s: kicks per round trip", what)
					continue
				}
				assert.Nil(t, r.LatencyP50, what)
				assert.Less(t, r.KicksPerFrame, 0.5, "%s: kicks are suppressed", what)
			}
		}
	}
	for _, r := range rep.Records {
		assert.Contains(t, ws, r.Workload)
	}
	if !tapSkipped {
		assert.Len(t, rep.Ratios, 2*len(ws)*len(Sizes))
	}
	var b bytes.Buffer
	require.NoError(t, rep.WriteJSON(&b))
	require.NoError(t, ValidateReport(b.Bytes()))
	total := len(Paths) * len(ws) * len(Sizes)
	assert.Contains(t, progress.String(), fmt.Sprintf("bench: [1/%d] ptnet-switch tx 60 B: 4096 frames", total))
	assert.Contains(t, progress.String(), fmt.Sprintf("bench: [3/%d] ptnet-switch rx 60 B: 4096 frames", total))
}

// fakeRXPath is a far-end port whose frames a fake RX guest takes, as the micro RX
// programs do: a batch at a time, then its count stored, then the feed flag looked
// at and the doorbell rung if set. lose drops every frame with that sequence index
// (0: none). Send records the most frames ever in flight.
type fakeRXPath struct {
	mu       sync.Mutex
	q        chan struct{}
	sent     uint64
	frames   []byte // the guest's RXFrames qword
	flag     []byte
	bell     *notify.EventFD
	lose     uint64
	maxAhead uint64
}

func (f *fakeRXPath) Name() string                          { return "fake" }
func (f *fakeRXPath) Recv(_ [][]byte, _ []int) (int, error) { return 0, nil }
func (f *fakeRXPath) ReadyFD() int                          { return -1 }
func (f *fakeRXPath) Close() error                          { return nil }

func (f *fakeRXPath) Send(frames [][]byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := 0
	for range frames {
		select {
		case f.q <- struct{}{}:
			k++
		default:
		}
	}
	f.sent += uint64(k)
	f.maxAhead = max(f.maxAhead, f.sent-min(f.sent, loadQword(f.frames)))
	return k, nil
}

// guest takes frames until done is closed: per batch the count, then the flag; it
// calls report once it counted want frames, as the programs report at DoneAddr.
func (f *fakeRXPath) guest(done <-chan struct{}, batch int, want uint64, report func()) {
	var got, seq uint64
	for {
		select {
		case <-done:
			return
		case <-f.q:
		}
		n := 1
		for n < batch {
			select {
			case <-f.q:
				n++
				continue
			default:
			}
			break
		}
		for range n {
			seq++
			if seq != f.lose {
				got++
			}
		}
		storeQword(f.frames, got)
		if loadQword(f.flag) != 0 {
			storeQword(f.flag, 0)
			_ = f.bell.Signal()
		}
		if got >= want {
			report()
		}
	}
}

// TestMicroFeeder: the RX far end keeps at most its window in flight, sends every
// frame, sleeps on the doorbell the guest rings; when a frame is lost it stops the
// guest after microQuiet instead of waiting forever.
func TestMicroFeeder(t *testing.T) {
	for _, tc := range []struct {
		name string
		lose uint64
	}{{"lossless", 0}, {"one lost", 700}} {
		t.Run(tc.name, func(t *testing.T) {
			bell, err := notify.NewEventFD()
			require.NoError(t, err)
			defer bell.Close()
			mem := make([]byte, micro.RXCountersSize+8)
			path := &fakeRXPath{q: make(chan struct{}, 4096), frames: mem[micro.RXFrames : micro.RXFrames+8],
				flag: mem[micro.RXCountersSize:], bell: bell, lose: tc.lose}
			const want, window = 5000, 300
			guestDone := make(chan struct{})
			var stopOnce sync.Once
			stopped := false
			stop := func() {
				stopOnce.Do(func() { stopped = true; close(guestDone) })
			}
			f := &microFeeder{src: newSource(path, 60, driverMAC, peerMAC, want), frames: path.frames, flag: path.flag,
				bell: bell, want: want, window: window, stop: stop}
			go path.guest(guestDone, 64, want, stop)
			start := time.Now()
			last := f.run(guestDone)
			require.NoError(t, f.src.err)
			assert.Equal(t, uint64(want), f.src.sent, "every frame sent")
			assert.LessOrEqual(t, path.maxAhead, uint64(window), "never more than the window in flight")
			assert.True(t, stopped)
			if tc.lose == 0 {
				assert.False(t, f.gaveUp)
				assert.Equal(t, uint64(want), loadQword(path.frames))
				assert.False(t, last.IsZero())
			} else {
				assert.True(t, f.gaveUp, "a lost frame ends the run")
				assert.Equal(t, uint64(want-1), loadQword(path.frames))
				assert.GreaterOrEqual(t, time.Since(start), microQuiet)
				assert.Less(t, math.Abs(float64(time.Since(last)-microQuiet)), float64(microQuiet), "last is when the count last moved")
			}
		})
	}
}
