package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/internal/testhost"
	"github.com/ptvmm/ptvmm/vmm"
)

// requireGuest skips unless `make e2e` prepared the guest kernel and
// initramfs; it returns the assets directory.
func requireGuest(t *testing.T) string {
	t.Helper()
	requireHardwareKVM(t)
	dir := testhost.AssetsDir()
	if dir == "" {
		t.Skip("no e2e assets: run `make e2e` (it builds the guest initramfs)")
	}
	return dir
}

// guestCase is a command for the agent and what it must produce.
type guestCase struct {
	name   string
	cmd    string
	status int
	output string // a console line must be exactly this ("" - no check)
}

// guestCases are the headline cases: a known output with status 0, and a
// known non-zero status.
func guestCases(t *testing.T, dir string) []guestCase {
	version, err := os.ReadFile(filepath.Join(dir, testhost.AssetKernelDir, "VERSION"))
	require.NoError(t, err)
	return []guestCase{
		{"uname_status_0", "/bin/ptvmm-agent uname -r", 0, strings.TrimSpace(string(version))},
		{"exit_status_7", "/bin/ptvmm-agent exit 7", 7, ""},
	}
}

// TestLinuxBootLibrary boots Debian's kernel through the vmm library (what
// vmrun wraps), checks the agent's readiness, output and exit status, and
// reports how long the guest took from its first instruction to the agent
// being ready.
func TestLinuxBootLibrary(t *testing.T) {
	dir := requireGuest(t)
	for _, gc := range guestCases(t, dir) {
		t.Run(gc.name, func(t *testing.T) {
			c, status, ok := bootLibrary(t, dir, gc.cmd)
			fail := func() string { return failHint + "last console lines:\n" + c.tail(40) }
			require.Contains(t, c.text(), testhost.ReadyLine, fail())
			require.True(t, ok, "no exit status line; %s", fail())
			assert.Equal(t, gc.status, status, fail())
			if gc.output != "" {
				assert.True(t, c.hasLine(gc.output), "no console line %q; %s", gc.output, fail())
			}
			assert.Contains(t, c.text(), fmt.Sprintf("ptvmm-agent: exit status %d", gc.status), fail())
		})
	}
}

// bootLibrary runs one guest with vmm.New/Run until it shuts down and
// returns its console and the agent's exit status.
func bootLibrary(t *testing.T, dir, cmd string, extra ...string) (*console, int, bool) {
	t.Helper()
	g := newLibGuest(t, vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  filepath.Join(dir, testhost.AssetGuestInit),
		Cmdline: testhost.GuestCmdline(cmd, extra...),
		MemSize: 512 << 20,
		CPUs:    1,
	})
	c, watch := g.c, g.watch
	runErr := g.run()
	tm := g.vm.Timings()
	t.Logf("inner guest: first vCPU entry %.2fs, agent ready %.2fs, shut down %.2fs after vmm.New",
		tm.FirstEntry.Seconds(), c.ready.Seconds(), time.Since(c.start).Seconds())
	if c.ready > 0 {
		t.Logf("inner guest: kernel start (first vCPU entry) to agent ready: %.2fs", (c.ready - tm.FirstEntry).Seconds())
	}
	require.NoError(t, runErr, "vmm Run; %slast console lines:\n%s", failHint, c.tail(40))
	status, ok := watch.ExitStatus()
	return c, status, ok
}

// TestGuestModules loads the module groups other tests need (virtio-net,
// uio) in the inner guest and checks the kernel lists them: the cached
// modules match the kernel and the agent loads them in order.
func TestGuestModules(t *testing.T) {
	dir := requireGuest(t)
	k, err := testhost.LoadKernel(filepath.Join(dir, testhost.AssetKernelDir))
	require.NoError(t, err)
	arg, err := testhost.GuestModuleArg(k, testhost.GuestModules...)
	require.NoError(t, err)
	mods, err := k.Modules(testhost.GuestModules...)
	require.NoError(t, err)

	c, status, ok := bootLibrary(t, dir, "/bin/ptvmm-agent cat /proc/modules", arg)
	fail := func() string { return failHint + "last console lines:\n" + c.tail(40) }
	require.True(t, ok, "no exit status line; %s", fail())
	require.Equal(t, 0, status, fail())
	assert.NotContains(t, c.text(), "ptvmm-agent: error", fail())
	loaded := map[string]bool{}
	for _, l := range strings.Split(c.text(), "\n") {
		// /proc/modules: "name size refs deps state addr"
		if f := strings.Fields(l); len(f) >= 5 && (f[4] == "Live" || f[4] == "Loading") {
			loaded[f[0]] = true
		}
	}
	for _, m := range mods {
		assert.True(t, loaded[strings.ReplaceAll(m, "-", "_")], "module %s not in /proc/modules; %s", m, fail())
	}
}
