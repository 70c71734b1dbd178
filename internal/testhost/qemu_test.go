package testhost

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeQEMU writes a shell script standing in for qemu.
func fakeQEMU(t *testing.T, body string) string {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh for the fake qemu")
	}
	p := filepath.Join(t.TempDir(), "qemu")
	require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755))
	return p
}

func TestBootParsesConsole(t *testing.T) {
	q := fakeQEMU(t, `printf 'booting\r\nptvmm-agent: ready\r\n--- PASS: TestA (0.50s)\r\n--- FAIL: TestB (1.00s)\r\nptvmm-agent: exit status 1\r\n'`)
	var console strings.Builder
	res, err := Boot(context.Background(), Config{QEMU: q, Timeout: time.Minute, Console: &console})
	require.NoError(t, err)
	assert.Positive(t, res.Ready)
	assert.Equal(t, 1, res.ExitStatus)
	assert.Equal(t, []TestResult{{Name: "TestA", Status: "PASS", Elapsed: 500 * time.Millisecond}, {Name: "TestB", Status: "FAIL", Elapsed: time.Second}}, res.Tests)
	assert.Contains(t, console.String(), "ptvmm-agent: ready\n", "console lines lose their \\r")
}

// A stuck guest must not hang the run: qemu is killed at the timeout, and
// the error carries the last console lines.
func TestBootTimeoutKills(t *testing.T) {
	q := fakeQEMU(t, `echo 'last words'; exec sleep 600`)
	start := time.Now()
	res, err := Boot(context.Background(), Config{QEMU: q, Timeout: 500 * time.Millisecond})
	require.Error(t, err)
	require.NotNil(t, res)
	assert.Less(t, time.Since(start), 30*time.Second)
	assert.Contains(t, err.Error(), "timed out")
	assert.Contains(t, err.Error(), "last words")
	assert.Equal(t, -1, res.ExitStatus)
}

func TestBootQEMUFailure(t *testing.T) {
	q := fakeQEMU(t, `echo 'qemu: could not load kernel' >&2; exit 1`)
	_, err := Boot(context.Background(), Config{QEMU: q, Timeout: time.Minute})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "could not load kernel")
}

func TestConfigArgs(t *testing.T) {
	args := Config{Kernel: "k", Initrd: "i", Append: "a b"}.Args()
	joined := strings.Join(args, " ")
	for _, want := range []string{"-accel tcg", "-cpu max", "-m 4096", "-smp 1", "-no-reboot", "-kernel k", "-initrd i", "-nodefaults"} {
		assert.Contains(t, joined, want)
	}
	assert.Equal(t, "a b", args[len(args)-1], "the command line is one argument")
}

func TestBootNoQEMU(t *testing.T) {
	_, err := Boot(context.Background(), Config{QEMU: "ptvmm-no-such-qemu"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "apt-get install qemu-system-x86")
}

// A test host that stops printing is killed after Config.Silence, long
// before Timeout, so a retry still has time.
func TestBootSilenceKills(t *testing.T) {
	q := fakeQEMU(t, `echo 'ptvmm-agent: ready'; echo 'last words'; exec sleep 600`)
	start := time.Now()
	res, err := Boot(context.Background(), Config{QEMU: q, Timeout: 10 * time.Minute, Silence: 300 * time.Millisecond})
	require.Error(t, err)
	require.NotNil(t, res)
	assert.Less(t, time.Since(start), time.Minute)
	assert.True(t, res.Silent)
	assert.Contains(t, err.Error(), "printed nothing")
	assert.Contains(t, err.Error(), "last words")
}

// Steady output keeps the watchdog quiet.
func TestBootSilenceResets(t *testing.T) {
	q := fakeQEMU(t, `for i in 1 2 3 4 5 6; do echo tick; sleep 0.1; done; echo 'ptvmm-agent: exit status 0'`)
	res, err := Boot(context.Background(), Config{QEMU: q, Timeout: time.Minute, Silence: 400 * time.Millisecond})
	require.NoError(t, err)
	assert.False(t, res.Silent)
	assert.Equal(t, 0, res.ExitStatus)
}

func TestConfigArgsSingleThread(t *testing.T) {
	assert.Contains(t, strings.Join(Config{SingleThread: true}.Args(), " "), "tcg,thread=single")
	assert.Contains(t, strings.Join(Config{}.Args(), " "), "tcg,thread=multi")
}
