package main

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/u-root/u-root/pkg/cpio"

	"github.com/ptvmm/ptvmm/vmm"
)

var (
	staticOnce  sync.Once
	staticPath  string
	staticError error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if staticPath != "" {
		os.RemoveAll(filepath.Dir(staticPath))
	}
	os.Exit(code)
}

// staticVMRun builds this command with CGO_ENABLED=0, as `make build` does,
// once per test run.
func staticVMRun(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds vmrun with the go command; skipped with -short")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command in PATH to build a static vmrun")
	}
	staticOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vmrun-test-")
		if err != nil {
			staticError = err
			return
		}
		staticPath = filepath.Join(dir, "vmrun")
		cmd := exec.Command("go", "build", "-trimpath", "-o", staticPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			staticError = errors.New(string(out))
		}
	})
	require.NoError(t, staticError, "go build")
	return staticPath
}

// dynamicExecutable is the system shell, dynamically linked on the usual
// distributions.
func dynamicExecutable(t *testing.T) string {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh in PATH to serve as a dynamically linked executable")
	}
	return sh
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestStaticExecutable(t *testing.T) {
	static := staticVMRun(t)
	ok, err := staticExecutable(static)
	require.NoError(t, err)
	assert.True(t, ok, "a CGO_ENABLED=0 build is static")

	ok, err = staticExecutable(dynamicExecutable(t))
	require.NoError(t, err)
	assert.False(t, ok, "sh has an ELF interpreter")

	// The same static binary for another machine cannot be an x86-64 guest's /init.
	data, err := os.ReadFile(static)
	require.NoError(t, err)
	data[18], data[19] = 183, 0 // e_machine = EM_AARCH64
	arm := filepath.Join(t.TempDir(), "arm")
	require.NoError(t, os.WriteFile(arm, data, 0o755))
	ok, err = staticExecutable(arm)
	require.NoError(t, err)
	assert.False(t, ok, "not x86-64")

	text := filepath.Join(t.TempDir(), "script")
	require.NoError(t, os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755))
	_, err = staticExecutable(text)
	assert.Error(t, err, "not ELF")
	_, err = staticExecutable(filepath.Join(t.TempDir(), "missing"))
	assert.Error(t, err)
}

// initOf returns the content of /init in a newc image.
func initOf(t *testing.T, image []byte) []byte {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(image)))
	require.NoError(t, err)
	for _, r := range recs {
		if r.Name == "init" {
			data, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			require.NoError(t, err)
			return data
		}
	}
	t.Fatal("no /init in the image")
	return nil
}

func TestAgentInitrd(t *testing.T) {
	builds := 0
	fakeAgent := func(out string) error { builds++; return os.WriteFile(out, []byte("built agent"), 0o755) }
	noGo := func(string) error { builds++; return errors.New("exec: go: not found") }

	t.Run("static vmrun packs itself", func(t *testing.T) {
		static := staticVMRun(t)
		builds = 0
		image, err := agentInitrd(static, noGo, quietLog(), nil)
		require.NoError(t, err)
		want, err := os.ReadFile(static)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want, initOf(t, image)), "/init is not this vmrun")
		assert.Zero(t, builds, "no toolchain needed")
	})
	t.Run("dynamic vmrun builds the agent", func(t *testing.T) {
		builds = 0
		image, err := agentInitrd(dynamicExecutable(t), fakeAgent, quietLog(), nil)
		require.NoError(t, err)
		assert.Equal(t, "built agent", string(initOf(t, image)))
		assert.Equal(t, 1, builds)
	})
	t.Run("dynamic vmrun without go", func(t *testing.T) {
		var log bytes.Buffer
		_, err := agentInitrd(dynamicExecutable(t), noGo, slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})), nil)
		require.ErrorIs(t, err, errDynamic)
		msg := err.Error()
		assert.NotContains(t, msg, "\n", "one line")
		assert.Contains(t, msg, "-initrd")
		assert.Contains(t, msg, "CGO_ENABLED=0")
		assert.Contains(t, log.String(), "go: not found", "-v shows why the build failed")
	})
	t.Run("unknown executable builds the agent", func(t *testing.T) {
		builds = 0
		image, err := agentInitrd("", fakeAgent, quietLog(), nil)
		require.NoError(t, err)
		assert.Equal(t, "built agent", string(initOf(t, image)))
		assert.Equal(t, 1, builds)
	})
}

// TestVMRunIsAgent runs a static vmrun under the agent's names, as the guest
// does through /bin/ptvmm-agent -> /init: it must act as the agent, not parse
// vmrun flags.
func TestVMRunIsAgent(t *testing.T) {
	static := staticVMRun(t)
	dir := t.TempDir()
	for _, name := range []string{"ptvmm-agent", "echo"} {
		require.NoError(t, os.Symlink(static, filepath.Join(dir, name)))
	}
	out, err := exec.Command(filepath.Join(dir, "ptvmm-agent"), "echo", "hello", "guest").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, "hello guest\n", string(out))
	// A built-in's name makes it the agent only as the guest's /init.
	out, err = exec.Command(filepath.Join(dir, "echo"), "-nosuchflag").CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 2, ee.ExitCode())
	assert.Contains(t, string(out), "vmrun: flag provided but not defined: -nosuchflag (see vmrun -h)", "a vmrun named echo on the host is vmrun:\n%s", out)

	// Under its own name it is vmrun.
	out, err = exec.Command(static, "-nosuchflag").CombinedOutput()
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 2, ee.ExitCode())
	// One line, no usage dump.
	assert.Equal(t, "vmrun: flag provided but not defined: -nosuchflag (see vmrun -h)\n", string(out))
	out, _ = exec.Command(static, "-h").CombinedOutput()
	assert.True(t, strings.Contains(string(out), "-initrd"), "vmrun -h shows the usage:\n%s", out)
}

func TestNICModules(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644))
	}
	write("VERSION", "6.1.0-test\n")
	write("vmlinuz", "x")
	write("virtio-net.order", "virtio_ring virtio virtio_net\n")
	for _, m := range []string{"virtio_ring", "virtio", "virtio_net"} {
		write("modules/"+m+".ko", "x")
	}
	mod := func(m string) string { return filepath.Join(dir, "modules", m+".ko") }

	got, err := nicModules(dir, nil)
	require.NoError(t, err)
	assert.Empty(t, got, "no NIC, no module")
	got, err = nicModules(dir, []vmm.NIC{{Tap: "t"}})
	require.NoError(t, err)
	assert.Equal(t, []string{mod("virtio_ring"), mod("virtio"), mod("virtio_net")}, got)

	// ptnet without the module built: one line naming make kernel and the headers.
	_, err = nicModules(dir, []vmm.NIC{{Model: vmm.NICPtnet, Port: "vale0:a"}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "run `make kernel`")
	assert.Contains(t, err.Error(), "linux-headers-6.1.0-test")
	write("modules/ptvmm_ptnet.ko", "x")
	got, err = nicModules(dir, []vmm.NIC{{Model: vmm.NICPtnet, Port: "vale0:a"}, {Port: "vale0:b"}})
	require.NoError(t, err)
	assert.Equal(t, []string{mod("virtio_ring"), mod("virtio"), mod("virtio_net"), mod("ptvmm_ptnet")}, got)
}
