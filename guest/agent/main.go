package main

import (
	"fmt"
	"os"
)

func main() {
	if os.Getpid() == 1 {
		runInit() // never returns
	}
	os.Exit(dispatch(os.Args, stdio{os.Stdin, os.Stdout, os.Stderr}))
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
