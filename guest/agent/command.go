package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path"
	"strings"

	"github.com/ptvmm/ptvmm/guest/agent/protocol"
	"golang.org/x/sys/unix"
)

// errNoCommand says neither the kernel command line nor the initramfs named
// a command.
var errNoCommand = errors.New("no command: put " + protocol.KeyCmd + `="..." on the kernel command line or ` + protocol.CmdFile + " in the initramfs")

// commands returns the commands to run in order: ptvmm.cmd if the kernel
// command line has it, else the command file (cmdFile nil: there is none).
// A command file starting with "#!" is itself the one command; otherwise
// each line that is not empty or a # comment is a command.
func commands(cl protocol.Cmdline, cmdFile []byte) ([][]string, error) {
	if v, ok := cl.Get(protocol.KeyCmd); ok {
		argv, err := protocol.SplitCommand(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", protocol.KeyCmd, err)
		}
		return [][]string{argv}, nil
	}
	if cmdFile == nil {
		return nil, errNoCommand
	}
	if strings.HasPrefix(string(cmdFile), "#!") {
		return [][]string{{protocol.CmdFile}}, nil
	}
	var out [][]string
	for line := range strings.Lines(string(cmdFile)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		argv, err := protocol.SplitCommand(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", protocol.CmdFile, err)
		}
		out = append(out, argv)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s has no command", protocol.CmdFile)
	}
	return out, nil
}

// withoutShell rewrites "/bin/sh -c 'cmd args'" to "cmd args" when the
// shell named does not exist, so commands written for a shell still run in
// a guest without one. Other commands are returned unchanged.
func withoutShell(argv []string, exists func(string) bool) []string {
	if len(argv) != 3 || argv[1] != "-c" {
		return argv
	}
	if sh := argv[0]; (sh != "/bin/sh" && sh != "sh") || exists("/bin/sh") {
		return argv
	}
	inner, err := protocol.SplitCommand(argv[2])
	if err != nil {
		return argv
	}
	return inner
}

// startStatus is the exit status reported when a command cannot be started:
// 127 when it is not found, 126 when it cannot be executed, as shells do.
func startStatus(err error) int {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		return 127
	}
	return 126
}

// waitStatus maps a wait status to an exit status: the exit code, or
// 128+signal for a process killed by a signal.
func waitStatus(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return 128 + int(unix.SIGKILL)
}

// shutdownCmd maps ptvmm.shutdown to a reboot(2) command. An unknown value
// falls back to restart and is reported.
func shutdownCmd(cl protocol.Cmdline) (int, error) {
	v, ok := cl.Get(protocol.KeyShutdown)
	switch {
	case !ok || v == protocol.ShutdownReboot:
		return unix.LINUX_REBOOT_CMD_RESTART, nil
	case v == protocol.ShutdownPowerOff:
		return unix.LINUX_REBOOT_CMD_POWER_OFF, nil
	case v == protocol.ShutdownHalt:
		return unix.LINUX_REBOOT_CMD_HALT, nil
	}
	return unix.LINUX_REBOOT_CMD_RESTART, fmt.Errorf("%s=%q: want %s, %s or %s; rebooting", protocol.KeyShutdown, v,
		protocol.ShutdownReboot, protocol.ShutdownPowerOff, protocol.ShutdownHalt)
}

// parseEnv reads KEY=VALUE lines; other lines are ignored.
func parseEnv(data []byte) []string {
	var out []string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimRight(line, "\r\n")
		if k, _, ok := strings.Cut(line, "="); ok && k != "" && !strings.HasPrefix(k, "#") {
			out = append(out, line)
		}
	}
	return out
}

// mergeEnv returns base with each KEY=VALUE of add replacing any earlier
// entry for KEY, in order.
func mergeEnv(base []string, add ...string) []string {
	out := make([]string, 0, len(base)+len(add))
	idx := map[string]int{}
	for _, kv := range append(append([]string(nil), base...), add...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// baseName is the command name a binary was invoked as.
func baseName(arg0 string) string { return path.Base(arg0) }
