package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/vale"
)

const valeUsage = `usage: vmrun vale [-switch PATH] COMMAND

Manages the switch service (vmrun switch), as netmap's vale-ctl:
  list                               switches, ports, owner pid, counters
  attach SWITCH TAP                  join host interface TAP to SWITCH (created if missing)
  detach SWITCH TAP                  remove it
  capture [-dir in|out|both] [-snaplen N] [-duration D] SWITCH:PORT FILE.pcap
                                     record a port's frames until Ctrl-C (or D);
                                     out = what the port sends, in = what it receives
`

// runVale is `vmrun vale`.
func runVale(args []string) int {
	return valeMain(context.Background(), args, os.Stdout, os.Stderr)
}

func valeMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vmrun vale", flag.ContinueOnError)
	sock := fs.String("switch", vale.DefaultSocketPath(), "the switch service's socket")
	if status, ok := parseFlags(fs, args, valeUsage, stderr); !ok {
		return status
	}
	if fs.NArg() == 0 {
		printUsage(fs, valeUsage, stderr)
		return 2
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	fail := func(err error) int {
		fmt.Fprintf(stderr, "vmrun vale %s: %v\n", cmd, err)
		return 1
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "vmrun vale %s: "+format+"\n", append([]any{cmd}, a...)...)
		return 2
	}
	switch cmd {
	case "list", "attach", "detach", "capture":
	default:
		return usage("unknown command; use list, attach, detach or capture")
	}
	// Check the arguments before connecting.
	var capt captureArgs
	switch cmd {
	case "list":
		if len(rest) > 0 {
			return usage("takes no arguments")
		}
	case "attach", "detach":
		if len(rest) != 2 {
			return usage("use vmrun vale %s SWITCH TAP (e.g. vale0 tap0)", cmd)
		}
		if err := vale.CheckSwitchName(rest[0]); err != nil {
			return usage("%v", err)
		}
		if err := vale.CheckTapName(rest[1]); err != nil {
			return usage("%v", err)
		}
	case "capture":
		var err error
		if capt, err = parseCapture(rest, stderr); err != nil {
			return usage("%v", err)
		}
	}
	c, err := vale.Dial(*sock)
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	switch cmd {
	case "list":
		es, err := c.List()
		if err != nil {
			return fail(err)
		}
		if err := writeValeList(stdout, es); err != nil {
			return fail(err)
		}
	case "attach":
		if err := c.AttachTap(rest[0], rest[1]); err != nil {
			return fail(err)
		}
	case "detach":
		if err := c.DetachTap(rest[0], rest[1]); err != nil {
			return fail(err)
		}
	case "capture":
		return capt.run(ctx, c, stdout, stderr)
	}
	return 0
}

// writeValeList prints the listing: one line per port.
func writeValeList(w io.Writer, es []vale.ListEntry) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SWITCH\tPORT\tNAME\tKIND\tOWNER\tLOOP\tRX_FRAMES\tRX_BYTES\tTX_FRAMES\tTX_BYTES\tDROPS\tNOSPACE\tBAD\tREINITS\tKICKS\tIRQS")
	for _, e := range es {
		sw, idx := e.Switch, fmt.Sprint(e.Index)
		if sw == "" {
			sw, idx = "-", "-"
		}
		kind := map[uint8]string{vale.KindSwitchPort: "port", vale.KindPipeEnd: "pipe", vale.KindTap: "tap"}[e.Kind]
		if kind == "" {
			kind = fmt.Sprint(e.Kind)
		}
		owner := "service"
		if e.OwnerPID != 0 {
			owner = fmt.Sprint(e.OwnerPID)
		}
		loop := "-"
		if e.Loop {
			loop = "run"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", sw, idx, e.Name, kind, owner, loop,
			e.RxFrames, e.RxBytes, e.TxFrames, e.TxBytes, e.Drops, e.NoSpace, e.BadSlots,
			e.RingReinits+e.LoopReinits, e.LoopKicks, e.LoopIrqs)
	}
	return tw.Flush()
}

type captureArgs struct {
	port, file string
	dir        vale.Direction
	snaplen    int
	duration   time.Duration
}

// parseCapture reads capture's flags, which may come before or after the port
// and file (vale-ctl style: capture vale0:vm1 FILE.pcap -dir both).
func parseCapture(args []string, stderr io.Writer) (captureArgs, error) {
	fs := flag.NewFlagSet("vmrun vale capture", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", "both", "in, out or both (tx = out, rx = in)")
	snap := fs.Int("snaplen", 0, "bytes kept per frame (0: whole frames)")
	dur := fs.Duration("duration", 0, "stop after this long (0: at Ctrl-C)")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return captureArgs{}, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 2 {
		return captureArgs{}, fmt.Errorf("use vmrun vale capture [-dir in|out|both] SWITCH:PORT FILE.pcap")
	}
	a := captureArgs{port: pos[0], file: pos[1], snaplen: *snap, duration: *dur}
	sw, port, ok := strings.Cut(a.port, ":")
	if !ok || port == "" || vale.CheckSwitchName(sw) != nil {
		return a, fmt.Errorf("%q: name a switch port as valeX:Y", a.port)
	}
	switch strings.ToLower(*dir) {
	case "in", "rx":
		a.dir = vale.MonitorRX
	case "out", "tx":
		a.dir = vale.MonitorTX
	case "both":
		a.dir = vale.MonitorBoth
	default:
		return a, fmt.Errorf("-dir %q: use in, out or both", *dir)
	}
	if a.snaplen < 0 || a.snaplen > 1<<18 {
		return a, fmt.Errorf("-snaplen %d: 0 (whole frames) to %d", a.snaplen, 1<<18)
	}
	return a, nil
}

func (a captureArgs) run(ctx context.Context, c *vale.Client, stdout, stderr io.Writer) int {
	f, err := os.Create(a.file)
	if err != nil {
		fmt.Fprintf(stderr, "vmrun vale capture: %v\n", err)
		return 1
	}
	defer f.Close()
	stop, err := c.Capture(a.port, a.dir, f, a.snaplen)
	if err != nil {
		fmt.Fprintf(stderr, "vmrun vale capture: %v\n", err)
		os.Remove(a.file)
		return 1
	}
	ctx, cancel := signal.NotifyContext(ctx, os.Interrupt, unix.SIGTERM)
	defer cancel()
	if a.duration > 0 {
		var c2 context.CancelFunc
		ctx, c2 = context.WithTimeout(ctx, a.duration)
		defer c2()
	}
	fmt.Fprintf(stderr, "vmrun vale capture: recording %s into %s (Ctrl-C stops)\n", a.port, a.file)
	select {
	case <-ctx.Done():
	case <-c.Done():
		fmt.Fprintf(stderr, "vmrun vale capture: %v\n", c.Err())
		return 1
	}
	pk, dr, err := stop()
	if err != nil {
		fmt.Fprintf(stderr, "vmrun vale capture: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%d frames captured, %d dropped\n", pk, dr)
	return 0
}
