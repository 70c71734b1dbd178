package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/bench"
)

const benchUsage = `usage: vmrun bench [-tier process|micro|linux] [-paths P,...] [-sizes 60,1514]
                   [-workloads tx,rx,pingpong] [-duration D | -count N] [-repeat N] [-tap NAME]
                   [-wait auto|adaptive|block] [-spin D] [-json FILE] [-plot FILE.png] [-console]

Runs the same workloads over each network path and prints one table (progress on
stderr), the passthrough / virtio-net+TAP ratios last. Paths: ` + "ptnet-switch, ptnet-pipe, virtio-tap, virtio-switch" + `.
Ctrl-C stops the run in progress and prints what was measured.

Tiers (default: the most faithful this machine allows): linux boots Linux guests
running the guest pktgen (needs VT-x/AMD-V and ` + "`make kernel`" + `; tx, rx and pingpong);
micro runs long-mode micro guests on any /dev/kvm (tx, rx and pingpong); process drives the
devices from host threads, no KVM needed. Without VT-x/AMD-V, ` + "`make bench-linux`" + `
runs the linux tier inside the QEMU test host (only the ratios mean anything there).
`

// runBench is `vmrun bench`: flags, then the bench package.
func runBench(args []string) int {
	return benchMain(context.Background(), args, os.Stdout, os.Stderr)
}

func benchMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vmrun bench", flag.ContinueOnError)
	tier := fs.String("tier", "", "process, micro or linux (default: what this machine allows)")
	paths := fs.String("paths", "", "comma-separated paths (default: all)")
	sizes := fs.String("sizes", "60,1514", "comma-separated frame sizes in bytes (60..1514)")
	workloads := fs.String("workloads", "tx,rx,pingpong", "comma-separated workloads")
	duration := fs.Duration("duration", bench.DefaultDuration, "length of each run")
	count := fs.Uint64("count", 0, "frames per run instead of a duration (ping-pong: round trips, at most 100000)")
	repeat := fs.Int("repeat", 2, "runs of each path, workload and size; the fastest is kept")
	tapName := fs.String("tap", "", "existing TAP for virtio-tap (default: create a temporary one; needs root)")
	jsonOut := fs.String("json", "", "also write the results as JSON to FILE")
	plotOut := fs.String("plot", "", "also draw Mpps per path and size as a PNG to FILE")
	console := fs.Bool("console", false, "copy the linux tier's guest consoles to stderr")
	wait := fs.String("wait", string(bench.WaitAuto), "how the host side (and the process tier's driver) waits: adaptive (poll for -spin after the last work, then sleep), block (sleep at once), or auto (adaptive where every busy thread of a run has a core)")
	spin := fs.Duration("spin", bench.DefaultSpin, "adaptive's polling window")
	if status, ok := parseFlags(fs, args, benchUsage, stderr); !ok {
		return status
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vmrun bench: unexpected arguments %q (see vmrun bench -h)\n", fs.Args())
		return 2
	}
	cfg := bench.Config{Tier: bench.Tier(*tier), Duration: *duration, Count: *count, Repeat: *repeat, Tap: *tapName, Progress: stderr,
		Wait: bench.Wait(*wait), Spin: *spin,
		Agent: benchAgent()}
	if *console {
		cfg.Log = stderr
	}
	for _, p := range splitList(*paths) {
		cfg.Paths = append(cfg.Paths, bench.Path(p))
	}
	for _, w := range splitList(*workloads) {
		cfg.Workloads = append(cfg.Workloads, bench.Workload(w))
	}
	for _, s := range splitList(*sizes) {
		n, err := strconv.Atoi(s)
		if err != nil {
			fmt.Fprintf(stderr, "vmrun bench: -sizes: %q is not a number\n", s)
			return 2
		}
		cfg.Sizes = append(cfg.Sizes, n)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, unix.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "vmrun bench: %v\n", err)
		return 2
	}
	stop() // a second Ctrl-C while writing the results kills as usual
	status := 0
	if err := rep.WriteTable(stdout); err != nil {
		fmt.Fprintf(stderr, "vmrun bench: %v\n", err)
		status = 1
	}
	if *jsonOut != "" {
		if err := rep.WriteJSONFile(*jsonOut); err != nil {
			fmt.Fprintf(stderr, "vmrun bench: %v\n", err)
			status = 1
		}
	}
	if *plotOut != "" {
		if err := rep.Plot(*plotOut); err != nil {
			fmt.Fprintf(stderr, "vmrun bench: %v\n", err)
			status = 1
		}
	}
	if len(rep.Records) == 0 {
		status = 1 // nothing could run here: the notes say why
	}
	if rep.Interrupted && status == 0 {
		status = 130
	}
	return status
}

// benchAgent is this vmrun when it is static: it carries the guest agent, so the
// linux tier's guests need no toolchain (else the bench package builds the agent).
func benchAgent() string {
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	if ok, err := staticExecutable(self); err != nil || !ok {
		return ""
	}
	return self
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
