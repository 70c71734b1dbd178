package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/bench"
)

// TestBenchCommand runs `vmrun bench` with tiny counts on two paths and checks the
// table on stdout, progress on stderr, and the JSON and PNG files.
func TestBenchCommand(t *testing.T) {
	dir := t.TempDir()
	jsonPath, plotPath := filepath.Join(dir, "b.json"), filepath.Join(dir, "b.png")
	var out, errOut bytes.Buffer
	code := benchMain(context.Background(), []string{"-tier", "process", "-paths", "ptnet-pipe,virtio-switch",
		"-workloads", "tx,pingpong", "-sizes", "60", "-count", "500", "-json", jsonPath, "-plot", plotPath}, &out, &errOut)
	require.Equal(t, 0, code, "stderr: %s", errOut.String())

	table := out.String()
	assert.True(t, strings.HasPrefix(table, "vmrun bench: tier process; "), table)
	assert.Contains(t, table, "ptnet-pipe")
	assert.Contains(t, table, "virtio-switch")
	assert.Contains(t, table, "ratio: none", "no virtio-tap in this run")
	assert.NotContains(t, table, "bench: [", "progress stays on stderr")
	assert.Contains(t, errOut.String(), "bench: [1/4] ptnet-pipe tx 60 B: 500 frames")
	assert.Contains(t, errOut.String(), "bench: [4/4] virtio-switch pingpong 60 B: 500 round trips")

	b, err := os.ReadFile(jsonPath)
	require.NoError(t, err)
	var rep bench.Report
	require.NoError(t, json.Unmarshal(b, &rep))
	require.Len(t, rep.Records, 4)
	for _, r := range rep.Records {
		assert.Equal(t, bench.TierProcess, r.Tier)
		assert.Equal(t, 60, r.Size)
		assert.Equal(t, uint64(500), r.Frames, "%s %s", r.Path, r.Workload)
		assert.Positive(t, r.Mpps)
		assert.NotEmpty(t, r.Kernel)
		assert.NotEmpty(t, r.Date)
		assert.Positive(t, r.Machine.Cores)
		assert.Equal(t, r.Workload == bench.WorkloadPingPong, r.LatencyP50 != nil)
	}
	var raw map[string]any
	require.NoError(t, json.Unmarshal(b, &raw))
	rec := raw["records"].([]any)[0].(map[string]any)
	for _, k := range []string{"mpps", "gbps", "cpu_guest_s_per_mframe", "cpu_host_s_per_mframe", "kicks_per_frame", "irqs_per_frame", "drops", "machine", "kernel", "date", "tier", "wait"} {
		assert.Contains(t, rec, k)
	}

	f, err := os.Open(plotPath)
	require.NoError(t, err)
	defer f.Close()
	_, err = png.Decode(f)
	require.NoError(t, err)
}

// TestBenchFlags: bad flags are usage errors (status 2) before anything runs.
func TestBenchFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-paths", "ptnet-moon"},
		{"-sizes", "sixty"},
		{"-sizes", "40"},
		{"-tier", "cloud"},
		{"-wait", "spin"},
		{"-spin", "-1us"},
		{"-bogus"},
		{"extra"},
	} {
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, benchMain(context.Background(), args, &out, &errOut), "%q", args)
		assert.Empty(t, out.String(), "%q", args)
		assert.NotEmpty(t, errOut.String(), "%q", args)
		assert.Equal(t, 1, strings.Count(errOut.String(), "\n"), "%q: one line, no usage: %s", args, errOut.String())
	}
}

// TestBenchTierMissing: a tier this machine cannot run is one line saying why, and a
// failing status (nothing was measured).
func TestBenchTierMissing(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err == nil {
		t.Skip("/dev/kvm exists here")
	}
	var out, errOut bytes.Buffer
	assert.Equal(t, 1, benchMain(context.Background(), []string{"-tier", "micro", "-count", "10"}, &out, &errOut))
	assert.Contains(t, out.String(), "note: tier micro: /dev/kvm missing")
}
