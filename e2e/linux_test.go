package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/internal/testhost"
)

// bootTimeout bounds one inner guest boot; vmrun is killed after it.
const bootTimeout = 4 * time.Minute

// failHint prefixes a failure's console dump.
var failHint = "(the guest kernel log is quiet; make e2e E2E_FLAGS=-guestlog keeps it)\n"

// requireAssets skips unless `make e2e` prepared the guest kernel,
// initramfs and vmrun.
func requireAssets(t *testing.T) string {
	t.Helper()
	requireHardwareKVM(t)
	dir := testhost.AssetsDir()
	if dir == "" {
		t.Skip("no e2e assets: run `make e2e` (it builds the guest initramfs and vmrun)")
	}
	if _, err := os.Stat(filepath.Join(dir, testhost.AssetVMRun)); err != nil {
		t.Skip("vmrun not built (no cmd/vmrun in the repository yet)")
	}
	return dir
}

// console collects a guest console line by line, timing the lines we look for.
type console struct {
	start time.Time
	mu    sync.Mutex
	lines []string
	ready time.Duration // start to the agent's ready line
	first time.Duration // start to the first console line
}

func (c *console) feed(r io.Reader) {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := strings.TrimRight(s.Text(), "\r")
		at := time.Since(c.start)
		c.mu.Lock()
		if len(c.lines) == 0 {
			c.first = at
		}
		if c.ready == 0 && strings.Contains(line, testhost.ReadyLine) {
			c.ready = at
		}
		c.lines = append(c.lines, line)
		c.mu.Unlock()
	}
}

func (c *console) text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

func (c *console) hasLine(want string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}

func (c *console) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lines
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return "    " + strings.Join(l, "\n    ")
}

// bootResult is one vmrun run.
type bootResult struct {
	status  int // vmrun's exit status
	console *console
	elapsed time.Duration
}

// bootGuest runs vmrun booting Debian's kernel with the agent initramfs and
// guestCmd as the agent's command. It fails the test, with the last console
// lines, if vmrun does not finish within bootTimeout.
func bootGuest(t *testing.T, dir, guestCmd string) bootResult {
	t.Helper()
	return runVMRun(t, testhost.VMRunArgs(filepath.Join(dir, testhost.AssetVMRun), dir, guestCmd), nil)
}

// runVMRun runs args (args[0] is vmrun) with env (nil: this process's) as
// bootGuest does.
func runVMRun(t *testing.T, args, env []string) bootResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	t.Logf("running %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	c := &console{start: time.Now()}
	done := make(chan struct{})
	go func() { c.feed(pr); close(done) }()
	err := cmd.Run()
	pw.Close()
	<-done
	res := bootResult{console: c, elapsed: time.Since(c.start)}
	if ctx.Err() != nil {
		t.Fatalf("vmrun did not finish within %s (killed); %slast console lines:\n%s", bootTimeout, failHint, c.tail(40))
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		res.status = ee.ExitCode()
	default:
		t.Fatalf("vmrun: %v; %slast console lines:\n%s", err, failHint, c.tail(40))
	}
	t.Logf("inner guest: first console line %.2fs, agent ready %.2fs, vmrun exit %.2fs after start",
		c.first.Seconds(), c.ready.Seconds(), res.elapsed.Seconds())
	return res
}

// TestLinuxBoot is the headline: vmrun boots Debian's kernel with the guest
// agent, the agent runs a command, and vmrun exits with the command's status.
func TestLinuxBoot(t *testing.T) {
	dir := requireAssets(t)
	for _, c := range guestCases(t, dir) {
		t.Run(c.name, func(t *testing.T) {
			res := bootGuest(t, dir, c.cmd)
			out := res.console.text()
			fail := func() string { return failHint + "last console lines:\n" + res.console.tail(40) }
			require.Contains(t, out, testhost.ReadyLine, fail())
			if c.output != "" {
				assert.True(t, res.console.hasLine(c.output), "no console line %q; %s", c.output, fail())
			}
			assert.Contains(t, out, fmt.Sprintf("ptvmm-agent: exit status %d", c.status), fail())
			assert.Equal(t, c.status, res.status, "vmrun exit status; %s", fail())
		})
	}

	// Without -initrd and without the prepared initramfs, the static vmrun
	// packs itself as the guest's /init and is the agent there. No go command
	// is reachable (none in the test host, an empty PATH here), so this shows
	// that a lone vmrun binary needs no toolchain.
	t.Run("self_packed_agent", func(t *testing.T) {
		version, err := os.ReadFile(filepath.Join(dir, testhost.AssetKernelDir, "VERSION"))
		require.NoError(t, err)
		empty := t.TempDir()
		// AssetsDir prefers $PTVMM_E2E_DIR to the test host's assets; an
		// empty one holds no prepared initramfs.
		env := append(withoutEnv(os.Environ(), "PTVMM_E2E_DIR", "PATH"), "PTVMM_E2E_DIR="+empty, "PATH="+empty)
		args := []string{filepath.Join(dir, testhost.AssetVMRun), "-v",
			"-kernel", filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
			"-append", testhost.GuestCmdline("/bin/ptvmm-agent uname -r")}
		res := runVMRun(t, args, env)
		out := res.console.text()
		fail := func() string { return failHint + "last console lines:\n" + res.console.tail(40) }
		assert.Contains(t, out, "this static vmrun as /init", "vmrun -v does not say it packed itself; %s", fail())
		require.Contains(t, out, testhost.ReadyLine, fail())
		assert.True(t, res.console.hasLine(strings.TrimSpace(string(version))), "no uname -r line; %s", fail())
		assert.Contains(t, out, "ptvmm-agent: exit status 0", fail())
		assert.Equal(t, 0, res.status, "vmrun exit status; %s", fail())
	})
}

// withoutEnv returns env without the entries for keys.
func withoutEnv(env []string, keys ...string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(keys, k) {
			out = append(out, kv)
		}
	}
	return out
}
