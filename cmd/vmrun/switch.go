package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/vale"
)

const switchUsage = `usage: vmrun switch [-socket PATH]

Runs the switch service in the foreground: switches, pipes and TAP ports shared by
every vmrun started with -switch PATH and by host programs (backends/vale's
Client), as netmap's kernel module is for bhyve. It runs the host loops of the
ports it owns. SIGINT or SIGTERM stops it: clients see their connection end.
`

// runSwitch is `vmrun switch`.
func runSwitch(args []string) int {
	return switchMain(context.Background(), args, os.Stdout, os.Stderr)
}

func switchMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vmrun switch", flag.ContinueOnError)
	socket := fs.String("socket", vale.DefaultSocketPath(), "Unix socket to listen on")
	if status, ok := parseFlags(fs, args, switchUsage, stderr); !ok {
		return status
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vmrun switch: unexpected arguments %q\n", fs.Args())
		return 2
	}
	// Events go to stderr: clients gone, refused peers, ring reinitialisations
	// (bounded per client by the service).
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }
	s, err := vale.NewService(vale.ServiceConfig{Socket: *socket, Logf: logf})
	if err != nil {
		fmt.Fprintf(stderr, "vmrun switch: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, unix.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	fmt.Fprintf(stdout, "vmrun switch: listening on %s (pid %d)\n", s.Path(), os.Getpid())
	select {
	case <-ctx.Done():
		fmt.Fprintf(stderr, "vmrun switch: stopping: detaching %d ports\n", s.Stats().Ports)
		err = s.Close()
		<-done
	case err = <-done:
		s.Close()
	}
	if err != nil {
		fmt.Fprintf(stderr, "vmrun switch: %v\n", err)
		return 1
	}
	return 0
}
