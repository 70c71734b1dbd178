package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/bench"
	"github.com/ptvmm/ptvmm/internal/testhost"
)

// benchTimeout bounds one `vmrun bench` here: the linux tier boots a guest per
// path (four), each running six short pktgen sessions.
const benchTimeout = 15 * time.Minute

// vmrunBench runs the static vmrun's bench subcommand with args and -json; it
// returns stdout, stderr and the JSON report.
func vmrunBench(t *testing.T, dir string, args ...string) (stdout, stderr string, report []byte) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "bench.json")
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	argv := append([]string{"bench", "-json", out}, args...)
	t.Logf("running vmrun %s", strings.Join(argv, " "))
	cmd := exec.CommandContext(ctx, filepath.Join(dir, testhost.AssetVMRun), argv...)
	// The kernel cache beside vmrun in the assets directory (as in the test host).
	cmd.Env = append(os.Environ(), "PTVMM_KERNEL_DIR="+filepath.Join(dir, testhost.AssetKernelDir))
	cmd.WaitDelay = 5 * time.Second
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	t.Logf("vmrun bench took %.1fs; stderr:\n%s\nstdout:\n%s", time.Since(start).Seconds(), e.String(), o.String())
	require.NoError(t, ctx.Err(), "vmrun bench did not finish within %v", benchTimeout)
	require.NoError(t, err, "vmrun bench failed")
	report, rerr := os.ReadFile(out)
	require.NoError(t, rerr)
	return o.String(), e.String(), report
}

// TestBenchLinux is issue 11's linux-tier check: `vmrun bench -tier linux` with
// tiny counts boots a Linux guest per path, its pktgen sends, receives and pings
// over ptnet (switch port, pipe) and over virtio-net (TAP, switch port, through
// pktgen -iface eth0); every tx and rx run's frames are counted by the guest and
// by the far end; virtio-net rows count the device's kicks; the table ends with
// the ratios, and the JSON validates against the schema.
func TestBenchLinux(t *testing.T) {
	dir := requireAssets(t)
	const count = 1000
	stdout, stderr, report := vmrunBench(t, dir, "-tier", "linux", "-count", fmt.Sprint(count), "-repeat", "1",
		"-workloads", "tx,rx,pingpong", "-sizes", "60,1514")
	require.NoError(t, bench.ValidateReport(report), "the JSON follows bench/testdata/report.schema.json")
	var rep bench.Report
	require.NoError(t, json.Unmarshal(report, &rep))
	assert.Equal(t, bench.TierLinux, rep.Tier)
	assert.False(t, rep.Interrupted)
	for _, n := range rep.Notes {
		assert.False(t, strings.Contains(n, "failed") || strings.Contains(n, "skipped"), "note: %s", n)
	}
	for _, p := range bench.Paths {
		for _, w := range bench.Workloads {
			for _, s := range []int{60, 1514} {
				var r *bench.Record
				for i := range rep.Records {
					if x := &rep.Records[i]; x.Path == p && x.Workload == w && x.Size == s {
						r = x
					}
				}
				what := fmt.Sprintf("%s %s %d", p, w, s)
				require.NotNil(t, r, what)
				assert.Equal(t, bench.TierLinux, r.Tier, what)
				assert.Positive(t, r.Mpps, what)
				assert.Positive(t, r.Seconds, what)
				assert.Positive(t, r.CPUGuest, "%s: the vCPU's time in guest mode", what)
				assert.Equal(t, r.Frames, r.Received+r.Drops, what)
				switch w {
				case bench.WorkloadTX:
					assert.Equal(t, uint64(count), r.Frames, "%s: the guest's count", what)
					assert.Positive(t, r.Received, "%s: the far end's count", what)
					if p == bench.PathPtnetPipe {
						assert.Equal(t, uint64(count), r.Received, "%s: a pipe never drops", what)
					}
					if p == bench.PathPtnetSwitch || p == bench.PathPtnetPipe {
						assert.Less(t, r.KicksPerFrame, 0.5, "%s: kicks are suppressed", what)
					} else {
						assert.Positive(t, r.KicksPerFrame, "%s: the device counts the guest's TX kicks", what)
					}
				case bench.WorkloadRX:
					// Frames: what the far end sent, less what was still on the way when
					// the guest stopped; Received: the guest's count.
					assert.Positive(t, r.Received, "%s: the guest's count", what)
					assert.LessOrEqual(t, r.Frames, uint64(count), "%s: the far end's count", what)
					if p == bench.PathPtnetPipe {
						assert.Equal(t, uint64(count), r.Received, "%s: a pipe never drops", what)
					}
				case bench.WorkloadPingPong:
					assert.Positive(t, r.Received, "%s: round trips", what)
					require.NotNil(t, r.LatencyP50, what)
					assert.Positive(t, *r.LatencyP50, what)
					if !(p == bench.PathPtnetSwitch || p == bench.PathPtnetPipe) {
						assert.Positive(t, r.KicksPerFrame, "%s: the device counts the guest's kicks", what)
					}
				}
			}
		}
	}
	assert.True(t, strings.HasPrefix(stdout, "vmrun bench: tier linux; "), stdout)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.NotEmpty(t, lines)
	assert.True(t, strings.HasPrefix(lines[len(lines)-1], "ratio "), "the ratios are last: %q", lines[len(lines)-1])
	assert.Len(t, rep.Ratios, 2*3*2, "two passthrough paths over virtio-tap, per workload and size")
	assert.Contains(t, stderr, "bench: ptnet-switch: booting a Linux guest for 6 runs")
	assert.Contains(t, stderr, "far end")
	assert.Contains(t, stderr, "far end sent", "rx: the far end's count")
	assert.NotContains(t, strings.Join(rep.Notes, "\n"), "count no kicks")
	if strings.Contains(rep.Machine.CPU, "QEMU") {
		assert.Contains(t, stdout, "only the ratios between paths mean anything")
	}
}

// TestBenchMicroVmrun: `vmrun bench -tier micro` from the static binary: guest TX,
// RX and ping-pong of micro guests on each path, every frame (round trip) counted by
// the guest and the far end.
func TestBenchMicroVmrun(t *testing.T) {
	dir := requireAssets(t)
	const count = 4096
	stdout, _, report := vmrunBench(t, dir, "-tier", "micro", "-count", fmt.Sprint(count), "-repeat", "1")
	require.NoError(t, bench.ValidateReport(report))
	var rep bench.Report
	require.NoError(t, json.Unmarshal(report, &rep))
	assert.Equal(t, bench.TierMicro, rep.Tier)
	require.Len(t, rep.Records, len(bench.Paths)*len(bench.Workloads)*len(bench.Sizes), "stdout:\n%s", stdout)
	for _, r := range rep.Records {
		assert.Equal(t, uint64(count), r.Frames, "%s %s %d", r.Path, r.Workload, r.Size)
		assert.Equal(t, uint64(count), r.Received, "%s %s %d", r.Path, r.Workload, r.Size)
	}
	assert.Contains(t, stdout, "ratio tx 60 B: ptnet-switch / virtio-tap")
}
