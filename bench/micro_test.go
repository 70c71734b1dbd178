package bench

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// microCount is a multiple of both guests' batches, so no rounding.
const microCount = 4096

// TestMicroTier runs the micro tier where /dev/kvm is usable (in the QEMU test host
// here: go run ./e2e/cmd/testhost -pkgs ./bench -run TestMicroTier): guest TX on
// every path and size, each frame counted by the guest (its report) and by the far
// end, none dropped (the far end's credit paces the guest), kicks suppressed on
// passthrough; the report validates against the schema.
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
	require.NotEmpty(t, rep.Notes)
	assert.Equal(t, "tier micro: rx, pingpong not measured: "+unsupportedWhy[TierMicro], rep.Notes[0])
	tapSkipped := false
	for _, n := range rep.Notes[1:] {
		require.True(t, strings.HasPrefix(n, "virtio-tap: skipped: "), "unexpected note: %s", n)
		tapSkipped = true
	}
	for _, p := range Paths {
		if p == PathVirtioTap && tapSkipped {
			continue
		}
		for _, s := range Sizes {
			r := find(rep, p, WorkloadTX, s)
			require.NotNil(t, r, "%s %d", p, s)
			what := fmt.Sprintf("%s %d", p, s)
			assert.Equal(t, TierMicro, r.Tier, what)
			assert.Equal(t, uint64(microCount), r.Frames, "%s: the guest's count", what)
			assert.Equal(t, uint64(microCount), r.Received, "%s: the far end's count", what)
			assert.Zero(t, r.Drops, what)
			assert.Positive(t, r.Mpps, what)
			assert.Positive(t, r.CPUHost+r.CPUGuest, what)
			assert.Less(t, r.KicksPerFrame, 0.5, "%s: kicks are suppressed", what)
		}
	}
	for _, w := range rep.Records {
		assert.Equal(t, WorkloadTX, w.Workload)
	}
	if !tapSkipped {
		assert.Len(t, rep.Ratios, 2*len(Sizes))
	}
	var b bytes.Buffer
	require.NoError(t, rep.WriteJSON(&b))
	require.NoError(t, ValidateReport(b.Bytes()))
	assert.Contains(t, progress.String(), "bench: [1/8] ptnet-switch tx 60 B: 4096 frames")
}
