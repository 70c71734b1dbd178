package protocol

import (
	"fmt"
	"strconv"
	"strings"
)

// Console lines printed by the agent.
const (
	ReadyLine        = "ptvmm-agent: ready"
	ExitStatusPrefix = "ptvmm-agent: exit status "
	ErrorPrefix      = "ptvmm-agent: error: "
)

// Kernel command line keys read by the agent.
const (
	// KeyCmd is the command to run: ptvmm.cmd="/bin/prog -v arg".
	KeyCmd = "ptvmm.cmd"
	// KeyModules lists modules to load, in order: ptvmm.modules=irqbypass,kvm,kvm-amd.
	KeyModules = "ptvmm.modules"
	// KeyShutdown is what to do at the end: reboot (default), poweroff or halt.
	KeyShutdown = "ptvmm.shutdown"
	// KeyTimeout kills the command after this many seconds (0 or absent: never).
	KeyTimeout = "ptvmm.timeout"
)

// Shutdown actions accepted by KeyShutdown.
const (
	ShutdownReboot   = "reboot"
	ShutdownPowerOff = "poweroff"
	ShutdownHalt     = "halt"
)

// Paths inside the guest.
const (
	// ModuleDir holds the kernel modules the initramfs carries.
	ModuleDir = "/lib/modules/ptvmm"
	// ModulesFile lists module file names under ModuleDir, one per line, in
	// load order; text after the name on a line is passed as module parameters.
	ModulesFile = "/etc/ptvmm/modules"
	// CmdFile is the command used when the kernel command line has no KeyCmd:
	// a program if it starts with "#!", otherwise one command per line, run in
	// order until one fails.
	CmdFile = "/etc/ptvmm/cmd"
	// EnvFile holds KEY=VALUE lines added to the command's environment.
	EnvFile = "/etc/ptvmm/env"
	// AgentPath is where the agent binary is installed besides /init, so that
	// commands can run its built-in subcommands: ptvmm-agent echo hi.
	AgentPath = "/bin/ptvmm-agent"
	// InitPath is the agent as PID 1.
	InitPath = "/init"
)

// DefaultPath is the PATH commands run with.
const DefaultPath = "/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/bin"

// ExitStatusLine is the line the agent prints when the command ends.
func ExitStatusLine(status int) string {
	return ExitStatusPrefix + strconv.Itoa(status)
}

// ParseExitStatus recognises an exit status line in console output.
// Leading and trailing white space (such as the \r of a serial console) and
// text before the prefix (such as an unterminated line of the command) are
// ignored.
func ParseExitStatus(line string) (int, bool) {
	i := strings.LastIndex(line, ExitStatusPrefix)
	if i < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[i+len(ExitStatusPrefix):]))
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// CmdlineArg formats key=value for the kernel command line, quoting the
// value when it has white space. The kernel cannot carry a double quote or a
// line break inside a value, so those are an error.
func CmdlineArg(key, value string) (string, error) {
	if key == "" || strings.ContainsAny(key, " \t\n\r\f\v\"=\x00") {
		return "", fmt.Errorf("kernel command line key %q: must be non-empty without white space, quotes or '='", key)
	}
	if strings.ContainsAny(value, "\"\n\r\x00") {
		return "", fmt.Errorf("kernel command line value for %s: must not contain a double quote, line break or NUL; use single quotes or %s", key, CmdFile)
	}
	if value == "" || strings.ContainsAny(value, " \t\f\v") {
		return key + "=\"" + value + "\"", nil
	}
	return key + "=" + value, nil
}
