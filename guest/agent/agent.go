package agent

import (
	"fmt"
	"os"
)

// Name is the program name the agent answers to as a command; the initramfs
// links /bin/ptvmm-agent to /init.
const Name = "ptvmm-agent"

// Main runs the agent and never returns: as PID 1 it is the guest's init;
// otherwise it runs the built-in command that os.Args names and exits with
// its status.
func Main() {
	if os.Getpid() == 1 {
		runInit() // never returns
	}
	os.Exit(dispatch(os.Args, stdio{os.Stdin, os.Stdout, os.Stderr}))
}

// Invoked reports whether a binary that carries the agent was started as the
// agent, judged by its program name arg0: /init (how the kernel starts the
// initramfs's init), ptvmm-agent, or, for the guest's /init only, a built-in
// command's name (its links, e.g. /bin/echo). Such a binary calls Main instead
// of its own main. The name, not the PID, decides so that a tool run as PID 1
// of a container stays itself; a host binary renamed ls stays itself too.
func Invoked(arg0 string) bool {
	exe, err := os.Executable()
	if err != nil {
		exe = ""
	}
	return invoked(arg0, exe)
}

func invoked(arg0, exe string) bool {
	name := baseName(arg0)
	if name == "init" || name == Name {
		return true
	}
	_, ok := applets[name]
	return ok && exe == "/init"
}

// dispatch runs a built-in command named by the program name (a link named
// echo) or by the first argument (ptvmm-agent echo hi).
func dispatch(args []string, s stdio) int {
	if len(args) > 0 {
		if a, ok := applets[baseName(args[0])]; ok {
			return a.run(args[1:], s)
		}
	}
	if len(args) < 2 {
		fmt.Fprintln(s.err, "ptvmm-agent: the guest agent runs as /init (PID 1); as a command: ptvmm-agent help")
		return 2
	}
	a, ok := applets[args[1]]
	if !ok {
		fmt.Fprintf(s.err, "ptvmm-agent: unknown command %q; try ptvmm-agent help\n", args[1])
		return 127
	}
	return a.run(args[2:], s)
}
