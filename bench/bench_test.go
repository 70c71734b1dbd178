package bench

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/tap"
)

const tinyCount = 2000

var shared struct {
	once     sync.Once
	rep      *Report
	err      error
	progress bytes.Buffer
}

// sharedReport is one tiny run over every path, workload and size, shared by the
// tests that only read it.
func sharedReport(t *testing.T) *Report {
	t.Helper()
	shared.once.Do(func() {
		shared.rep, shared.err = Run(context.Background(), Config{Tier: TierProcess, Count: tinyCount, Progress: &shared.progress})
	})
	require.NoError(t, shared.err)
	return shared.rep
}

func find(rep *Report, p Path, w Workload, size int) *Record {
	for i := range rep.Records {
		if r := &rep.Records[i]; r.Path == p && r.Workload == w && r.Size == size {
			return r
		}
	}
	return nil
}

// TestRunTiny: every path, workload and size gives a record with the fields filled
// from what was measured (or, for a TAP this process cannot create, a note).
func TestRunTiny(t *testing.T) {
	rep := sharedReport(t)
	canTap, _ := tap.CanCreate()
	assert.Equal(t, TierProcess, rep.Tier)
	assert.NotEmpty(t, rep.Kernel)
	assert.Positive(t, rep.Machine.Cores)
	assert.False(t, rep.Interrupted)
	tapSkipped := false
	for _, n := range rep.Notes {
		tapSkipped = tapSkipped || strings.HasPrefix(n, "virtio-tap: skipped: ")
	}
	if !canTap {
		require.Len(t, rep.Notes, 1)
		assert.Contains(t, rep.Notes[0], "virtio-tap: skipped: cannot create a TAP")
	}
	for _, p := range Paths {
		if p == PathVirtioTap && tapSkipped {
			// One line saying why (no TAP here), and the other paths still ran.
			assert.Nil(t, find(rep, p, WorkloadTX, 60))
			continue
		}
		for _, w := range Workloads {
			for _, s := range Sizes {
				r := find(rep, p, w, s)
				require.NotNil(t, r, "%s %s %d", p, w, s)
				assert.Equal(t, rep.Date, r.Date)
				assert.Equal(t, 1, r.Runs)
				assert.Positive(t, r.Received, "%s %s %d", p, w, s)
				assert.Positive(t, r.Mpps, "%s %s %d", p, w, s)
				assert.Positive(t, r.Seconds, "%s %s %d", p, w, s)
				assert.LessOrEqual(t, r.Received, r.Frames, "%s %s %d", p, w, s)
				assert.Positive(t, r.CPUGuest+r.CPUHost, "%s %s %d", p, w, s)
				switch w {
				case WorkloadTX:
					assert.Equal(t, uint64(tinyCount), r.Frames, "%s tx %d: every frame sent", p, s)
					assert.Equal(t, r.Frames-r.Received, r.Drops)
					if p.passthrough() {
						// The driver kicks only when the host loop sleeps: far fewer
						// kicks than frames with 512-frame batches.
						assert.Less(t, r.KicksPerFrame, 0.05, "%s tx %d", p, s)
					}
					assert.Nil(t, r.LatencyP50)
				case WorkloadRX:
					assert.Equal(t, uint64(tinyCount), r.Received+r.Drops, "%s rx %d: counted or lost", p, s)
				case WorkloadPingPong:
					require.NotNil(t, r.LatencyP50)
					require.NotNil(t, r.LatencyP99)
					assert.Positive(t, *r.LatencyP50)
					assert.GreaterOrEqual(t, *r.LatencyP99, *r.LatencyP50)
					if r.Wait == WaitBlock {
						// One kick per ping: the host loop or device sleeps between rounds.
						assert.InDelta(t, 1, r.KicksPerFrame, 0.2, "%s pingpong %d", p, s)
					} else {
						assert.LessOrEqual(t, r.KicksPerFrame, 1.2, "%s pingpong %d", p, s)
					}
				}
			}
		}
	}
	if !tapSkipped {
		assert.Empty(t, rep.Notes)
		require.Len(t, rep.Ratios, len(Workloads)*len(Sizes)*2)
		for _, q := range rep.Ratios {
			pt, tp := find(rep, q.Passthrough, q.Workload, q.Size), find(rep, PathVirtioTap, q.Workload, q.Size)
			assert.InDelta(t, pt.Mpps/tp.Mpps, q.Ratio, 1e-9)
		}
	}
	// Progress went to its writer, one start and one end line per run.
	assert.Contains(t, shared.progress.String(), "bench: [1/24] ptnet-switch tx 60 B: 2000 frames")
}

// TestTable: the header names tier, machine and date; one row per record; the
// ratios are the last lines.
func TestTable(t *testing.T) {
	rep := sharedReport(t)
	var b bytes.Buffer
	require.NoError(t, rep.WriteTable(&b))
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	require.Greater(t, len(lines), len(rep.Records)+1)
	assert.True(t, strings.HasPrefix(lines[0], "vmrun bench: tier process; "), lines[0])
	assert.Contains(t, lines[0], rep.Date)
	assert.Contains(t, lines[0], rep.Machine.CPU)
	for _, col := range []string{"path", "workload", "size", "Mpps", "Gbit/s", "guest s/Mf", "host s/Mf", "kicks/f", "irqs/f", "p50 us", "p99 us", "drops"} {
		assert.Contains(t, lines[1], col)
	}
	rows := 0
	for _, l := range lines[2:] {
		f := strings.Fields(l)
		if len(f) > 3 && (f[0] == string(PathPtnetSwitch) || f[0] == string(PathPtnetPipe) || f[0] == string(PathVirtioTap) || f[0] == string(PathVirtioSwitch)) {
			rows++
		}
	}
	assert.Equal(t, len(rep.Records), rows)
	n := len(rep.Ratios)
	if n == 0 {
		n = 1 // "ratio: none (...)"
	}
	for _, l := range lines[len(lines)-n:] {
		assert.True(t, strings.HasPrefix(l, "ratio"), "last lines are ratios: %q", l)
	}
}

// TestPlot: the plot is a PNG with one panel per workload.
func TestPlot(t *testing.T) {
	rep := sharedReport(t)
	out := filepath.Join(t.TempDir(), "bench.png")
	require.NoError(t, rep.Plot(out))
	f, err := os.Open(out)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	assert.Greater(t, img.Bounds().Dy(), img.Bounds().Dx()/2, "three panels stacked")
	empty := &Report{Tier: TierProcess}
	assert.Error(t, empty.Plot(out), "nothing to plot")
}

// TestInterrupt: a cancelled context ends the run in progress, keeps it as partial
// and stops the benchmark.
func TestInterrupt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	rep, err := Run(ctx, Config{Tier: TierProcess, Paths: []Path{PathPtnetPipe, PathVirtioSwitch}, Workloads: []Workload{WorkloadTX}, Sizes: []int{60}, Duration: time.Minute})
	require.NoError(t, err)
	assert.Less(t, time.Since(start), 20*time.Second)
	assert.True(t, rep.Interrupted)
	require.Len(t, rep.Records, 1)
	assert.True(t, rep.Records[0].Partial)
	assert.Positive(t, rep.Records[0].Received)
	var b bytes.Buffer
	require.NoError(t, rep.WriteTable(&b))
	assert.Contains(t, b.String(), "interrupted")
}

// TestConfigErrors: bad lists are refused before anything runs.
func TestConfigErrors(t *testing.T) {
	for name, c := range map[string]Config{
		"path":     {Paths: []Path{"ptnet-moon"}},
		"workload": {Workloads: []Workload{"tx", "flood"}},
		"small":    {Sizes: []int{59}},
		"large":    {Sizes: []int{1515}},
		"tier":     {Tier: "cloud"},
	} {
		_, err := Run(context.Background(), c)
		assert.Error(t, err, name)
	}
}

// TestTierWithoutKVM: without /dev/kvm the micro and linux tiers are one note each
// saying why and what to do, and nothing runs.
func TestTierWithoutKVM(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err == nil {
		t.Skip("/dev/kvm exists here")
	}
	for _, tier := range []Tier{TierMicro, TierLinux} {
		rep, err := Run(context.Background(), Config{Tier: tier, Count: 10})
		require.NoError(t, err)
		assert.Empty(t, rep.Records)
		require.Len(t, rep.Notes, 1)
		assert.Contains(t, rep.Notes[0], "tier "+string(tier)+": /dev/kvm missing")
		assert.Contains(t, rep.Notes[0], "-tier process")
	}
}

// TestTapMissing: a TAP that is not there is one note saying why and what to do; the
// other paths still run, and the ratio line says none.
func TestTapMissing(t *testing.T) {
	rep, err := Run(context.Background(), Config{Tier: TierProcess, Paths: []Path{PathVirtioTap, PathPtnetPipe}, Workloads: []Workload{WorkloadTX, WorkloadRX},
		Sizes: []int{60}, Count: 500, Tap: "ptvbnothere"})
	require.NoError(t, err)
	require.Len(t, rep.Notes, 1, "one line for the path, not one per run")
	assert.Contains(t, rep.Notes[0], "virtio-tap: skipped: TAP ptvbnothere does not exist: create it with `ip tuntap add ptvbnothere mode tap")
	require.Len(t, rep.Records, 2)
	assert.Equal(t, PathPtnetPipe, rep.Records[0].Path)
	assert.Empty(t, rep.Ratios)
	var b bytes.Buffer
	require.NoError(t, rep.WriteTable(&b))
	assert.Contains(t, b.String(), "note: virtio-tap: skipped: TAP ptvbnothere does not exist")
	assert.True(t, strings.HasSuffix(b.String(), "ratio: none (needs virtio-tap and a ptnet path measured in this run)\n"))
}

// TestRepeat: each configuration runs Repeat times and one record (the fastest) is
// kept, saying how many runs there were.
func TestRepeat(t *testing.T) {
	var progress bytes.Buffer
	rep, err := Run(context.Background(), Config{Tier: TierProcess, Paths: []Path{PathPtnetPipe}, Workloads: []Workload{WorkloadTX}, Sizes: []int{60},
		Count: 500, Repeat: 3, Progress: &progress})
	require.NoError(t, err)
	require.Len(t, rep.Records, 1)
	assert.Equal(t, 3, rep.Records[0].Runs)
	assert.Equal(t, uint64(500), rep.Records[0].Frames)
	_, err = Run(context.Background(), Config{Repeat: -1})
	assert.Error(t, err)
}
