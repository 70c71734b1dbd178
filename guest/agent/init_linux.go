package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/ptvmm/ptvmm/guest/agent/protocol"
	"golang.org/x/sys/unix"
)

// mountPoint is one file system the agent mounts.
type mountPoint struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// mounts are in order: /dev/pts and /dev/shm live on the devtmpfs.
var mounts = []mountPoint{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

// say prints one console line in a single write so that it is not split.
func say(format string, args ...any) {
	os.Stdout.WriteString(fmt.Sprintf(format, args...) + "\n")
}

func sayError(err error) {
	say("%s%v", protocol.ErrorPrefix, err)
}

// runInit is PID 1. It never returns.
func runInit() {
	setupConsole()
	ignoreSignals()
	reboot := unix.LINUX_REBOOT_CMD_RESTART
	defer func() {
		// A panic must not end PID 1: that panics the kernel instead of
		// shutting the VM down.
		if r := recover(); r != nil {
			sayError(fmt.Errorf("panic: %v", r))
		}
		shutdown(reboot)
	}()

	for _, m := range mounts {
		if err := mount(m); err != nil {
			sayError(err)
		}
	}
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		sayError(fmt.Errorf("read kernel command line: %w", err))
	}
	cl := protocol.ParseCmdline(string(raw))
	var serr error
	if reboot, serr = shutdownCmd(cl); serr != nil {
		sayError(serr)
	}
	os.Setenv("PATH", protocol.DefaultPath)
	os.Setenv("HOME", "/root")

	loadModules(cl)

	cmdFile, err := os.ReadFile(protocol.CmdFile)
	if err != nil {
		cmdFile = nil
		if !errors.Is(err, os.ErrNotExist) {
			sayError(err)
		}
	}
	cmds, err := commands(cl, cmdFile)
	if err != nil {
		say("%s", protocol.ReadyLine)
		sayError(err)
		return
	}
	timeout, err := commandTimeout(cl)
	if err != nil {
		sayError(err)
	}
	env := os.Environ()
	if data, err := os.ReadFile(protocol.EnvFile); err == nil {
		env = mergeEnv(env, parseEnv(data)...)
	}
	env = mergeEnv(env, "PATH="+protocol.DefaultPath)

	say("%s", protocol.ReadyLine)
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	status := 0
	for _, argv := range cmds {
		status = runCommand(argv, env, deadline)
		if status != 0 {
			break
		}
	}
	say("%s", protocol.ExitStatusLine(status))
}

// ignoreSignals catches the signals whose Go default would end the process:
// PID 1 must not exit. They are caught rather than set to SIG_IGN so that
// commands start with default dispositions.
func ignoreSignals() {
	c := make(chan os.Signal, 16)
	signal.Notify(c, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT,
		unix.SIGUSR1, unix.SIGUSR2, unix.SIGPWR, unix.SIGPIPE, unix.SIGALRM)
	go func() {
		for range c {
		}
	}()
}

// setupConsole makes sure fds 0-2 are the console. The kernel opens
// /dev/console for init when the initramfs has the node; without it, open
// it once devtmpfs provides one.
func setupConsole() {
	var st unix.Stat_t
	if unix.Fstat(1, &st) == nil {
		return
	}
	_ = os.MkdirAll("/dev", 0o755)
	_ = unix.Mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755")
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return // nowhere to report; carry on silently
	}
	for i := 0; i < 3; i++ {
		if fd != i {
			_ = unix.Dup3(fd, i, 0)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
}

func mount(m mountPoint) error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m.target, err)
	}
	err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
	if err == nil || err == unix.EBUSY {
		return nil
	}
	return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
}

func loadModules(cl protocol.Cmdline) {
	file, err := os.ReadFile(protocol.ModulesFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		sayError(err)
	}
	v, _ := cl.Get(protocol.KeyModules)
	root := os.DirFS("/")
	for _, m := range moduleList(string(file), v) {
		p, err := resolveModule(root, protocol.ModuleDir, m.Name)
		if errors.Is(err, errPresent) {
			continue // built in: nothing to load
		}
		if err == nil {
			err = loadModule(p, joinParams(m.Params, cmdlineModuleParams(cl, canonicalModule(p))))
		}
		// A failed module is reported but the command still runs, so that a
		// test can say what it misses (no /dev/kvm) instead of just stopping.
		if err != nil {
			sayError(err)
		}
	}
}

func loadModule(p, params string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	flags := 0
	if isCompressedModule(p) {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), params, flags)
	if err == nil || err == unix.EEXIST {
		return nil
	}
	return fmt.Errorf("load module %s: %w", p, err)
}

func commandTimeout(cl protocol.Cmdline) (time.Duration, error) {
	v, ok := cl.Get(protocol.KeyTimeout)
	if !ok || v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want whole seconds; running without a timeout", protocol.KeyTimeout, v)
	}
	return time.Duration(n) * time.Second, nil
}

// runCommand runs argv with the console as stdio and returns its status.
// It reaps every child while it waits, as PID 1 must, and kills the
// command's process group at the deadline (zero: none).
func runCommand(argv []string, env []string, deadline time.Time) int {
	argv = withoutShell(argv, func(p string) bool {
		_, err := os.Stat(p)
		return err == nil
	})
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		sayError(fmt.Errorf("run %s: %w", strings.Join(argv, " "), err))
		return startStatus(err)
	}
	pid := cmd.Process.Pid
	if !deadline.IsZero() {
		t := time.AfterFunc(time.Until(deadline), func() {
			say("%scommand timed out; killing it", protocol.ErrorPrefix)
			_ = unix.Kill(-pid, unix.SIGKILL)
		})
		defer t.Stop()
	}
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			sayError(fmt.Errorf("wait for %s: %w", argv[0], err))
			return 128 + int(unix.SIGKILL)
		}
		if got == pid {
			return waitStatus(ws)
		}
	}
}

// shutdown ends the VM and never returns.
func shutdown(cmd int) {
	// Stop what the command left running so nothing writes after the sync.
	_ = unix.Kill(-1, unix.SIGKILL)
	unix.Sync()
	err := unix.Reboot(cmd)
	sayError(fmt.Errorf("reboot(%#x): %v; halting here", cmd, err))
	for {
		// Not select{}: with no other goroutine that is a fatal deadlock,
		// and PID 1 exiting panics the kernel.
		time.Sleep(time.Hour)
	}
}
