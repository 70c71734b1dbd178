package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ptvmm/ptvmm/guest/agent/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestModuleList(t *testing.T) {
	file := "# load order\nirqbypass.ko\n\nkvm.ko  ignore_msrs=1 \tmmu_audit=0\n  kvm-amd.ko nested=1\n"
	got := moduleList(file, "kvm_amd, ccp,,virtio_net ,kvm")
	assert.Equal(t, []moduleRef{
		{Name: "irqbypass.ko"},
		{Name: "kvm.ko", Params: "ignore_msrs=1 mmu_audit=0"},
		{Name: "kvm-amd.ko", Params: "nested=1"},
		{Name: "ccp"},
		{Name: "virtio_net"},
	}, got, "file first, then the command line, each module once")

	assert.Empty(t, moduleList("", ""))
	assert.Equal(t, []moduleRef{{Name: "a"}, {Name: "b"}}, moduleList("", "a,b"))
	assert.Equal(t, []moduleRef{{Name: "b.ko"}, {Name: "a"}}, moduleList("b.ko\n", "a,b"))
}

func TestCanonicalModule(t *testing.T) {
	for in, want := range map[string]string{
		"kvm-amd.ko": "kvm_amd", "kvm_amd": "kvm_amd", "/lib/modules/ptvmm/kvm.ko.xz": "kvm",
		"virtio_pci.ko.zst": "virtio_pci", "x.ko.gz": "x", "": "", "/": "",
	} {
		assert.Equal(t, want, canonicalModule(in), in)
	}
}

func TestResolveModule(t *testing.T) {
	fsys := fstest.MapFS{
		"lib/modules/ptvmm/kvm.ko":             {Data: []byte("k")},
		"lib/modules/ptvmm/kvm-amd.ko":         {Data: []byte("a")},
		"lib/modules/ptvmm/virtio_net.ko.xz":   {Data: []byte("v")},
		"lib/modules/ptvmm/irqbypass.ko.zst":   {Data: []byte("i")},
		"lib/modules/ptvmm/sub/x.ko":           {Data: []byte("x")},
		"lib/modules/ptvmm/dir.ko/placeholder": {Data: []byte("d")},
		"opt/extra.ko":                         {Data: []byte("e")},
	}
	const dir = "/lib/modules/ptvmm"
	for name, want := range map[string]string{
		"kvm":              dir + "/kvm.ko",
		"kvm.ko":           dir + "/kvm.ko",
		"kvm_amd":          dir + "/kvm-amd.ko",
		"kvm-amd":          dir + "/kvm-amd.ko",
		"virtio-net":       dir + "/virtio_net.ko.xz",
		"virtio_net.ko.xz": dir + "/virtio_net.ko.xz",
		"irqbypass":        dir + "/irqbypass.ko.zst",
		"sub/x.ko":         dir + "/sub/x.ko",
		"/opt/extra.ko":    "/opt/extra.ko",
	} {
		got, err := resolveModule(fsys, dir, name)
		require.NoError(t, err, name)
		assert.Equal(t, want, got, name)
	}
	for _, name := range []string{"", "ccp", "kvm.ko.xz", "dir", "../../../opt/extra.ko/..", "/lib/modules/ptvmm"} {
		_, err := resolveModule(fsys, dir, name)
		assert.Error(t, err, "%q must not resolve", name)
	}
}

func TestCmdlineModuleParams(t *testing.T) {
	cl := protocol.ParseCmdline(`kvm_amd.nested=1 kvm-amd.avic ptvmm.cmd="x" kvm.halt_poll_ns=0 kvm_amd.x="a b" kvm_amd. kvm_amdx.y=1 kvm_amd`)
	assert.Equal(t, `nested=1 avic x="a b"`, cmdlineModuleParams(cl, "kvm_amd"))
	assert.Equal(t, "halt_poll_ns=0", cmdlineModuleParams(cl, "kvm"))
	assert.Equal(t, "", cmdlineModuleParams(cl, "virtio_net"))
	assert.Equal(t, "a b", joinParams("a", "b"))
	assert.Equal(t, "a", joinParams("a", ""))
	assert.Equal(t, "b", joinParams("", "b"))
}

func TestIsCompressedModule(t *testing.T) {
	assert.False(t, isCompressedModule("/a/kvm.ko"))
	assert.True(t, isCompressedModule("/a/kvm.ko.xz"))
	assert.True(t, isCompressedModule("/a/kvm.ko.zst"))
	assert.True(t, isCompressedModule("/a/kvm.ko.gz"))
}

func TestCommands(t *testing.T) {
	cl := protocol.ParseCmdline(`console=ttyS0 ptvmm.cmd="/bin/e2e.test -test.v -test.run 'A B'"`)
	got, err := commands(cl, []byte("ignored\n"))
	require.NoError(t, err)
	assert.Equal(t, [][]string{{"/bin/e2e.test", "-test.v", "-test.run", "A B"}}, got, "the command line wins over the file")

	got, err = commands(nil, []byte("# setup\nptvmm-agent echo one\n\n  ptvmm-agent exit 0 \n"))
	require.NoError(t, err)
	assert.Equal(t, [][]string{{"ptvmm-agent", "echo", "one"}, {"ptvmm-agent", "exit", "0"}}, got)

	got, err = commands(nil, []byte("#!/bin/sh\necho hi\n"))
	require.NoError(t, err)
	assert.Equal(t, [][]string{{protocol.CmdFile}}, got, "a script runs itself")

	_, err = commands(nil, nil)
	assert.ErrorIs(t, err, errNoCommand)
	_, err = commands(nil, []byte("# only a comment\n"))
	assert.Error(t, err)
	_, err = commands(protocol.ParseCmdline(`ptvmm.cmd=""`), nil)
	assert.ErrorIs(t, err, protocol.ErrEmptyCommand)
	_, err = commands(protocol.ParseCmdline(`ptvmm.cmd="echo 'x"`), nil)
	assert.ErrorContains(t, err, "unterminated")
	_, err = commands(nil, []byte("echo 'x\n"))
	assert.ErrorContains(t, err, protocol.CmdFile)
}

func TestWithoutShell(t *testing.T) {
	none := func(string) bool { return false }
	all := func(string) bool { return true }
	argv := []string{"/bin/sh", "-c", "ptvmm-agent echo 'a b'"}
	assert.Equal(t, []string{"ptvmm-agent", "echo", "a b"}, withoutShell(argv, none))
	assert.Equal(t, argv, withoutShell(argv, all), "a shell that exists runs")
	assert.Equal(t, []string{"x"}, withoutShell([]string{"sh", "-c", "x"}, none))
	for _, keep := range [][]string{{"/bin/sh"}, {"/bin/sh", "-e", "x"}, {"/bin/bash", "-c", "x"}, {"/bin/sh", "-c", "'bad"}, {"/bin/sh", "-c", ""}} {
		assert.Equal(t, keep, withoutShell(keep, none), "%q", keep)
	}
}

func TestStartStatus(t *testing.T) {
	_, err := exec.LookPath("surely-not-a-command-ptvmm")
	assert.Equal(t, 127, startStatus(err))
	assert.Equal(t, 127, startStatus(&fs.PathError{Op: "fork/exec", Path: "/x", Err: unix.ENOENT}))
	assert.Equal(t, 126, startStatus(&fs.PathError{Op: "fork/exec", Path: "/x", Err: unix.EACCES}))
	assert.Equal(t, 126, startStatus(errors.New("exec format error")))
}

// exitStatusOf runs a real process so the wait status is the kernel's.
func exitStatusOf(t *testing.T, script string) int {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on the host to produce real wait statuses")
	}
	cmd := exec.Command(sh, "-c", script)
	require.NoError(t, cmd.Start())
	var ws unix.WaitStatus
	for {
		// Reap it as the agent does, without os/exec.
		_, err := unix.Wait4(cmd.Process.Pid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		require.NoError(t, err)
		break
	}
	return waitStatus(ws)
}

func TestWaitStatus(t *testing.T) {
	assert.Equal(t, 0, exitStatusOf(t, "exit 0"))
	assert.Equal(t, 3, exitStatusOf(t, "exit 3"))
	assert.Equal(t, 255, exitStatusOf(t, "exit 255"))
	assert.Equal(t, 128+int(unix.SIGKILL), exitStatusOf(t, "kill -KILL $$"))
	assert.Equal(t, 128+int(unix.SIGTERM), exitStatusOf(t, "kill -TERM $$"))
}

func TestShutdownCmd(t *testing.T) {
	for v, want := range map[string]int{
		"":                        unix.LINUX_REBOOT_CMD_RESTART,
		"ptvmm.shutdown=reboot":   unix.LINUX_REBOOT_CMD_RESTART,
		"ptvmm.shutdown=poweroff": unix.LINUX_REBOOT_CMD_POWER_OFF,
		"ptvmm.shutdown=halt":     unix.LINUX_REBOOT_CMD_HALT,
	} {
		got, err := shutdownCmd(protocol.ParseCmdline(v))
		require.NoError(t, err, v)
		assert.Equal(t, want, got, v)
	}
	got, err := shutdownCmd(protocol.ParseCmdline("ptvmm.shutdown=explode"))
	assert.Error(t, err)
	assert.Equal(t, unix.LINUX_REBOOT_CMD_RESTART, got, "unknown falls back to reboot")
}

func TestEnv(t *testing.T) {
	got := parseEnv([]byte("A=1\n# c=1\nnoequals\n=x\nB=x=y\r\nC=\n"))
	assert.Equal(t, []string{"A=1", "B=x=y", "C="}, got)
	assert.Equal(t, []string{"PATH=/b", "HOME=/", "X=2"}, mergeEnv([]string{"PATH=/a", "HOME=/"}, "X=1", "PATH=/b", "X=2"))
}

func TestCommandTimeout(t *testing.T) {
	d, err := commandTimeout(protocol.ParseCmdline("ptvmm.timeout=90"))
	require.NoError(t, err)
	assert.Equal(t, 90*time.Second, d)
	d, err = commandTimeout(nil)
	require.NoError(t, err)
	assert.Zero(t, d)
	_, err = commandTimeout(protocol.ParseCmdline("ptvmm.timeout=1m"))
	assert.Error(t, err)
	_, err = commandTimeout(protocol.ParseCmdline("ptvmm.timeout=-1"))
	assert.Error(t, err)
}

// run runs a built-in command through dispatch and returns status and output.
func run(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	status := dispatch(args, stdio{strings.NewReader(stdin), &out, &errb})
	return status, out.String(), errb.String()
}

func TestApplets(t *testing.T) {
	st, out, _ := run(t, "", "/bin/ptvmm-agent", "echo", "a", "b c")
	assert.Equal(t, 0, st)
	assert.Equal(t, "a b c\n", out)
	_, out, _ = run(t, "", "ptvmm-agent", "echo", "-n", "x")
	assert.Equal(t, "x", out)
	_, out, _ = run(t, "", "/bin/echo", "by", "name")
	assert.Equal(t, "by name\n", out, "dispatch on the program name")

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte("content\n"), 0o644))
	require.NoError(t, os.Chmod(filepath.Join(dir, "f"), 0o644)) // whatever the umask
	require.NoError(t, os.Mkdir(filepath.Join(dir, "d"), 0o755))
	require.NoError(t, os.Symlink("f", filepath.Join(dir, "l")))

	st, out, _ = run(t, "in\n", "ptvmm-agent", "cat", filepath.Join(dir, "f"), "-")
	assert.Equal(t, 0, st)
	assert.Equal(t, "content\nin\n", out)
	st, _, errs := run(t, "", "ptvmm-agent", "cat", filepath.Join(dir, "missing"))
	assert.Equal(t, 1, st)
	assert.Contains(t, errs, "missing")

	st, out, _ = run(t, "", "ptvmm-agent", "ls", dir)
	assert.Equal(t, 0, st)
	assert.Equal(t, "d\nf\nl\n", out)
	_, out, _ = run(t, "", "ptvmm-agent", "ls", "-l", dir)
	assert.Contains(t, out, "l -> f")
	assert.Regexp(t, `(?m)^-rw-r--r-- +8 f$`, out)
	st, _, _ = run(t, "", "ptvmm-agent", "ls", filepath.Join(dir, "none"))
	assert.Equal(t, 1, st)

	for arg, want := range map[string]int{"0": 0, "3": 3, "255": 255, "256": 2, "x": 2, "-1": 2} {
		st, _, _ = run(t, "", "ptvmm-agent", "exit", arg)
		assert.Equal(t, want, st, "exit %s", arg)
	}
	st, _, _ = run(t, "", "ptvmm-agent", "false")
	assert.Equal(t, 1, st)

	var u unix.Utsname
	require.NoError(t, unix.Uname(&u))
	_, out, _ = run(t, "", "ptvmm-agent", "uname", "-a")
	assert.True(t, strings.HasPrefix(out, "Linux "), out)
	assert.Contains(t, out, unix.ByteSliceToString(u.Release[:]))
	_, out, _ = run(t, "", "ptvmm-agent", "uname", "-r")
	assert.Equal(t, unix.ByteSliceToString(u.Release[:])+"\n", out)
	st, _, _ = run(t, "", "ptvmm-agent", "uname", "-q")
	assert.Equal(t, 2, st)

	_, out, _ = run(t, "", "ptvmm-agent", "nproc")
	assert.Equal(t, fmt.Sprintln(runtime.NumCPU()), out)

	st, _, _ = run(t, "", "ptvmm-agent", "sleep", "0.01")
	assert.Equal(t, 0, st)
	st, _, _ = run(t, "", "ptvmm-agent", "sleep")
	assert.Equal(t, 2, st)

	st, _, errs = run(t, "", "ptvmm-agent", "frobnicate")
	assert.Equal(t, 127, st)
	assert.Contains(t, errs, "frobnicate")
	st, _, _ = run(t, "", "ptvmm-agent")
	assert.Equal(t, 2, st)
	st, out, _ = run(t, "", "ptvmm-agent", "help")
	assert.Equal(t, 0, st)
	assert.Contains(t, out, "sleep")
}

func TestKill(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary to kill")
	}
	cmd := exec.Command(sleep, "60")
	require.NoError(t, cmd.Start())
	st, _, errs := run(t, "", "ptvmm-agent", "kill", "-9", fmt.Sprint(cmd.Process.Pid))
	assert.Equal(t, 0, st, errs)
	var ws unix.WaitStatus
	_, err = unix.Wait4(cmd.Process.Pid, &ws, 0, nil)
	require.NoError(t, err)
	assert.Equal(t, 128+9, waitStatus(ws))

	for _, bad := range [][]string{{}, {"-x", "1"}, {"-99", "1"}, {"-9"}} {
		st, _, _ := run(t, "", append([]string{"ptvmm-agent", "kill"}, bad...)...)
		assert.Equal(t, 2, st, "%q", bad)
	}
	st, _, _ = run(t, "", "ptvmm-agent", "kill", "notapid")
	assert.Equal(t, 1, st)
}

func TestParseSleep(t *testing.T) {
	for in, want := range map[string]time.Duration{"1": time.Second, "0.5": 500 * time.Millisecond, "150ms": 150 * time.Millisecond, "0": 0} {
		d, err := parseSleep(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, d, in)
	}
	for _, bad := range []string{"-1", "x", "-5ms", "1e12"} {
		_, err := parseSleep(bad)
		assert.Error(t, err, bad)
	}
}

// FuzzModuleList checks that any module list file and ptvmm.modules value
// give non-empty names, each module once, and resolve without panicking.
func FuzzModuleList(f *testing.F) {
	f.Add("irqbypass.ko\nkvm.ko nested=1\n# c\n", "kvm_amd,ccp")
	f.Add("\t\n  \n", ",,")
	f.Add("../../etc/passwd", "/proc/self/exe,.,..")
	fsys := fstest.MapFS{"lib/modules/ptvmm/kvm.ko": {Data: []byte("k")}}
	f.Fuzz(func(t *testing.T, file, cmdline string) {
		seen := map[string]bool{}
		for _, m := range moduleList(file, cmdline) {
			c := canonicalModule(m.Name)
			if m.Name == "" || c == "" {
				t.Fatalf("empty module name in %+v", m)
			}
			if seen[c] {
				t.Fatalf("module %q listed twice", c)
			}
			seen[c] = true
			if p, err := resolveModule(fsys, "/lib/modules/ptvmm", m.Name); err == nil && p != "/lib/modules/ptvmm/kvm.ko" {
				t.Fatalf("%q resolved to %q", m.Name, p)
			}
		}
	})
}

func TestInvoked(t *testing.T) {
	for arg0, want := range map[string]bool{
		"/init": true, "init": true, "/bin/ptvmm-agent": true, "ptvmm-agent": true,
		"/bin/echo": true, "uname": true,
		"vmrun": false, "/usr/local/bin/vmrun": false, "./bin/vmrun": false, "": false, "/": false,
	} {
		assert.Equal(t, want, invoked(arg0, "/init"), "%s as the guest's /init", arg0)
	}
	// On the host only the agent's own names count: a vmrun renamed ls stays vmrun.
	for arg0, want := range map[string]bool{"ptvmm-agent": true, "init": true, "ls": false, "/usr/bin/echo": false} {
		assert.Equal(t, want, invoked(arg0, "/usr/local/bin/vmrun"), "%s on the host", arg0)
	}
}
