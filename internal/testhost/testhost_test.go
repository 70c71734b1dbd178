package testhost

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseResult(t *testing.T) {
	for _, c := range []struct {
		line string
		want TestResult
		ok   bool
	}{
		{"--- PASS: TestKVMSanity (0.21s)", TestResult{Name: "TestKVMSanity", Status: "PASS", Elapsed: 210 * time.Millisecond}, true},
		{"    --- FAIL: TestBoot/status_7 (12.50s)", TestResult{Name: "TestBoot/status_7", Status: "FAIL", Elapsed: 12500 * time.Millisecond}, true},
		{"        --- SKIP: TestX/a/b (0.00s)", TestResult{Name: "TestX/a/b", Status: "SKIP"}, true},
		{"        \t            \t    --- PASS: TestQuoted (2.46s)", TestResult{}, false},
		{"x--- PASS: TestX (0.00s)", TestResult{}, false},
		{"=== RUN   TestKVMSanity", TestResult{}, false},
		{"--- PASS: TestX (fast)", TestResult{}, false},
	} {
		got, ok := ParseResult(c.line)
		assert.Equal(t, c.ok, ok, c.line)
		assert.Equal(t, c.want, got, c.line)
	}
}

func TestParseExitStatus(t *testing.T) {
	n, ok := ParseExitStatus("ptvmm-agent: exit status 7")
	assert.True(t, ok)
	assert.Equal(t, 7, n)
	n, ok = ParseExitStatus("[ 1.0] ptvmm-agent: exit status 0\r")
	assert.True(t, ok)
	assert.Equal(t, 0, n)
	_, ok = ParseExitStatus("ptvmm-agent: exit status x")
	assert.False(t, ok)
	_, ok = ParseExitStatus("ptvmm-agent: ready")
	assert.False(t, ok)
}

func TestResultLineTracking(t *testing.T) {
	r := &Result{ExitStatus: -1}
	for i := 0; i < TailLines+10; i++ {
		r.line("noise", time.Second)
	}
	r.line("ptvmm-agent: ready", 3*time.Second)
	r.line("ptvmm-agent: ready", 9*time.Second)
	r.line("--- PASS: TestA (1.00s)", 4*time.Second)
	r.line("ptvmm-agent: exit status 3", 5*time.Second)
	assert.Equal(t, 3*time.Second, r.Ready, "first ready line counts")
	assert.Equal(t, 3, r.ExitStatus)
	assert.Len(t, r.Tests, 1)
	assert.Len(t, r.Tail, TailLines)
	assert.Equal(t, "ptvmm-agent: exit status 3", r.Tail[TailLines-1])
}

func TestKernelModulesOrder(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "modules"), 0o755))
	write := func(name, s string) { require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644)) }
	write("VERSION", "6.1.0-test\n")
	write("vmlinuz", "x")
	write("a.order", "virtio_ring\nvirtio\n")
	write("b.order", "virtio_ring\nvirtio_net\n")
	for _, m := range []string{"virtio_ring", "virtio", "virtio_net"} {
		write("modules/"+m+".ko", "m")
	}
	k, err := LoadKernel(dir)
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-test", k.Version)
	mods, err := k.Modules("a", "b")
	require.NoError(t, err)
	assert.Equal(t, []string{"virtio_ring", "virtio", "virtio_net"}, mods)

	_, err = k.Modules("missing")
	assert.ErrorContains(t, err, "make kernel")
	require.NoError(t, os.Remove(filepath.Join(dir, "modules", "virtio.ko")))
	_, err = k.Modules("a")
	assert.ErrorContains(t, err, "virtio")
	_, err = LoadKernel(t.TempDir())
	assert.ErrorContains(t, err, "make kernel")
}

func TestCmdline(t *testing.T) {
	got := Cmdline()
	assert.Contains(t, got, CmdlineMarker)
	assert.Contains(t, got, "console=ttyS0")
	assert.NotContains(t, got, "ptvmm.cmd", "the command goes into the initramfs, not the command line")
}

func TestVMRunArgs(t *testing.T) {
	args := VMRunArgs("/x/vmrun", "/a", "/bin/ptvmm-agent exit 7", "ptvmm.modules=a,b")
	require.Equal(t, "/x/vmrun", args[0])
	assert.Contains(t, args, "/a/kernel/vmlinuz")
	assert.Contains(t, args, "/a/guest.cpio")
	last := args[len(args)-1]
	assert.Contains(t, last, "ptvmm.modules=a,b")
	assert.True(t, strings.HasSuffix(last, `ptvmm.cmd="/bin/ptvmm-agent exit 7"`), last)
}

func TestGuestCmdlineQuiet(t *testing.T) {
	t.Setenv(GuestLogEnv, "")
	assert.Contains(t, strings.Fields(GuestCmdline("x")), "quiet")
	t.Setenv(GuestLogEnv, "1")
	assert.NotContains(t, strings.Fields(GuestCmdline("x")), "quiet")
	assert.Contains(t, GuestCmdline("a b"), `ptvmm.cmd="a b"`)
}

func TestPassFiles(t *testing.T) {
	dir := t.TempDir()
	ko := filepath.Join(dir, "netmap.ko")
	require.NoError(t, os.WriteFile(ko, []byte("x"), 0o644))
	env := map[string]string{"PTVMM_NETMAP_KO": ko}
	files, kv, err := passFiles(func(k string) string { return env[k] })
	require.NoError(t, err)
	require.Len(t, files, 1, "only the variable that is set")
	assert.Equal(t, ko, files[0].Host)
	assert.Equal(t, TestHostAssets+"/extra/PTVMM_NETMAP_KO/netmap.ko", files[0].Guest, "the file keeps its name")
	assert.Equal(t, []string{"PTVMM_NETMAP_KO=" + files[0].Guest}, kv)

	env["PTVMM_PKTGEN"] = filepath.Join(dir, "missing")
	_, _, err = passFiles(func(k string) string { return env[k] })
	assert.ErrorContains(t, err, "PTVMM_PKTGEN", "a named file that is not there fails")
	env["PTVMM_PKTGEN"] = dir
	_, _, err = passFiles(func(k string) string { return env[k] })
	assert.ErrorContains(t, err, "not a regular file")
}
