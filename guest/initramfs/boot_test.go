package initramfs

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptvmm/ptvmm/guest/agent/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kernelDir finds the `make kernel` cache: $PTVMM_KERNEL_DIR or
// .cache/kernel at the module root.
func kernelDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PTVMM_KERNEL_DIR")
	if dir == "" {
		root, err := ModuleRoot()
		if err != nil {
			t.Skipf("no kernel: %v", err)
		}
		dir = filepath.Join(root, ".cache", "kernel")
	}
	if _, err := os.Stat(filepath.Join(dir, "vmlinuz")); err != nil {
		t.Skipf("no kernel in %s (run `make kernel`): %v", dir, err)
	}
	return dir
}

// bootQEMU boots kernel with initrd in QEMU (TCG, so it works anywhere) and
// returns the console output once the guest ends the VM.
func bootQEMU(t *testing.T, kernel, initrd, cmdline string) string {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "2",
		"-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		// no_timer_check: under load TCG is too slow for the IO-APIC timer check
		// and the kernel panics ("IO-APIC + timer doesn't work!").
		"-append", cmdline+" no_timer_check")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err = cmd.Run()
	t.Logf("qemu ran %v", time.Since(start).Round(time.Millisecond))
	require.NoError(t, ctx.Err(), "guest did not shut down; console:\n%s", out.String())
	require.NoError(t, err, "qemu failed; console:\n%s", out.String())
	return strings.ReplaceAll(out.String(), "\r\n", "\n")
}

// TestAgentBootsLinux boots the kernel cache's Debian kernel with the agent
// as /init: modules load in order, the ready line comes, commands run with
// output on the console, the status is reported and the VM ends by itself.
func TestAgentBootsLinux(t *testing.T) {
	if testing.Short() {
		t.Skip("boots Linux in QEMU; skipped with -short")
	}
	kdir := kernelDir(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	tmp := t.TempDir()
	agent := filepath.Join(tmp, "agent")
	require.NoError(t, BuildAgent(agent))

	var mods []string
	for _, m := range []string{"irqbypass", "kvm"} {
		mods = append(mods, filepath.Join(kdir, "modules", m+".ko"))
	}
	spec := Spec{
		Init:    agent,
		Modules: mods, // kvm-amd comes from the command line
		Files: []File{
			{Data: []byte("payload\n"), Guest: "/ptvmm/data/payload"},
			{Host: filepath.Join(kdir, "modules", "kvm-amd.ko"), Guest: protocol.ModuleDir + "/kvm-amd.ko"},
		},
		Cmd: strings.Join([]string{
			"ptvmm-agent kill -15 1", // PID 1 survives signals
			"ptvmm-agent kill -3 1",
			"ptvmm-agent kill -2 1",
			`ptvmm-agent echo "hello from" the\ guest`,
			"ptvmm-agent cat /ptvmm/data/payload",
			"/bin/sh -c 'ptvmm-agent echo no shell needed'",
			"ptvmm-agent kvm",
			"ptvmm-agent cat /sys/module/kvm_amd/parameters/nested",
			"ptvmm-agent echo $PTVMM_X",
			"ptvmm-agent exit 7",
			"ptvmm-agent echo not reached",
		}, "\n"),
		Env:  []string{"PTVMM_X=ignored"},
		Gzip: true,
	}
	initrd := filepath.Join(tmp, "initrd")
	require.NoError(t, BuildFile(initrd, spec))

	mod, err := protocol.CmdlineArg(protocol.KeyModules, "kvm_amd")
	require.NoError(t, err)
	out := bootQEMU(t, filepath.Join(kdir, "vmlinuz"), initrd,
		"console=ttyS0 reboot=k panic=-1 quiet kvm-amd.nested=0 "+mod)
	t.Logf("console:\n%s", out)

	var lines []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		lines = append(lines, strings.TrimSpace(sc.Text()))
	}
	idx := func(s string) int {
		for i, l := range lines {
			if l == s {
				return i
			}
		}
		return -1
	}
	ready := idx(protocol.ReadyLine)
	require.GreaterOrEqual(t, ready, 0, "no ready line")
	assert.NotContains(t, out, protocol.ErrorPrefix)
	prev := ready
	for _, want := range []string{"hello from the guest", "payload", "no shell needed", "kvm: API version 12", "0", "$PTVMM_X", protocol.ExitStatusLine(7)} {
		i := idx(want)
		if assert.GreaterOrEqual(t, i, 0, "missing %q", want) {
			assert.Greater(t, i, prev, "%q out of order", want)
			prev = i
		}
	}
	assert.Equal(t, -1, idx("not reached"), "commands after a failure must not run")
}

// TestAgentCmdlineBoots boots with the command on the kernel command line
// and checks statuses and shutdown modes.
func TestAgentCmdlineBoots(t *testing.T) {
	if testing.Short() {
		t.Skip("boots Linux in QEMU; skipped with -short")
	}
	kdir := kernelDir(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	tmp := t.TempDir()
	agent := filepath.Join(tmp, "agent")
	require.NoError(t, BuildAgent(agent))
	initrd := filepath.Join(tmp, "initrd")
	require.NoError(t, BuildFile(initrd, Spec{Init: agent}))

	cases := []struct {
		name   string
		args   string
		want   []string
		status int
	}{
		{"quoted command, poweroff", `ptvmm.shutdown=poweroff ptvmm.cmd="ptvmm-agent echo 'a  b' c"`, []string{"a  b c", "reboot: Power down"}, 0},
		{"not found", `ptvmm.cmd=/bin/nonexistent`, []string{protocol.ErrorPrefix + "run /bin/nonexistent", "reboot: Restarting system"}, 127},
		{"timeout kills", `ptvmm.timeout=1 ptvmm.cmd="ptvmm-agent sleep 600"`, []string{protocol.ErrorPrefix + "command timed out"}, 128 + 9},
		{"no command", ``, []string{protocol.ErrorPrefix + "no command"}, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := bootQEMU(t, filepath.Join(kdir, "vmlinuz"), initrd, "console=ttyS0 reboot=k panic=-1 quiet "+c.args)
			assert.Contains(t, out, protocol.ReadyLine+"\n")
			for _, w := range c.want {
				assert.Contains(t, out, w)
			}
			if c.status >= 0 {
				assert.Contains(t, out, protocol.ExitStatusLine(c.status)+"\n", out)
			} else {
				assert.NotContains(t, out, protocol.ExitStatusPrefix, out)
			}
		})
	}
}
