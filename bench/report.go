package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// machine reads the CPU model from /proc/cpuinfo.
func machine() Machine {
	m := Machine{CPU: "unknown", Cores: runtime.NumCPU()}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			m.CPU = strings.Join(strings.Fields(v), " ")
			break
		}
	}
	return m
}

// kernel is the running kernel's release.
func kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:])
}

// ratios pairs each workload and size measured on virtio-tap with the passthrough
// paths measured in the same run: ptnet-switch first (the headline), then ptnet-pipe.
func ratios(recs []Record) []Ratio {
	var out []Ratio
	find := func(p Path, w Workload, s int) *Record {
		for i := range recs {
			if r := &recs[i]; r.Path == p && r.Workload == w && r.Size == s {
				return r
			}
		}
		return nil
	}
	for _, w := range Workloads {
		for _, s := range sizesOf(recs) {
			tap := find(PathVirtioTap, w, s)
			if tap == nil {
				continue
			}
			for _, p := range []Path{PathPtnetSwitch, PathPtnetPipe} {
				pt := find(p, w, s)
				if pt == nil {
					continue
				}
				r := Ratio{Workload: w, Size: s, Passthrough: p, Mpps: pt.Mpps, TapMpps: tap.Mpps}
				if tap.Mpps > 0 {
					r.Ratio = pt.Mpps / tap.Mpps
				}
				out = append(out, r)
			}
		}
	}
	return out
}

// sizesOf lists the sizes in recs, in first-seen order.
func sizesOf(recs []Record) []int {
	var out []int
	seen := map[int]bool{}
	for _, r := range recs {
		if !seen[r.Size] {
			seen[r.Size] = true
			out = append(out, r.Size)
		}
	}
	return out
}

// WriteTable writes the report for people: a header (tier, machine, kernel, date),
// one line per record, the notes, and last the ratios.
func (rep *Report) WriteTable(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "vmrun bench: tier %s; %s, %d cores; %s; %s\n", rep.Tier, rep.Machine.CPU, rep.Machine.Cores, rep.Kernel, rep.Date)
	if len(rep.Records) > 0 {
		tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "path\tworkload\tsize\tMpps\tGbit/s\tguest s/Mf\thost s/Mf\tpeer s/Mf\tkicks/f\tirqs/f\tp50 us\tp99 us\tdrops\t")
		for _, r := range rep.Records {
			p50, p99 := "-", "-"
			if r.LatencyP50 != nil && r.LatencyP99 != nil {
				p50, p99 = fmt.Sprintf("%.1f", *r.LatencyP50), fmt.Sprintf("%.1f", *r.LatencyP99)
			}
			mark := ""
			if r.Partial {
				mark = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s%s\t%s\t%.3f\t%.3f\t%.3f\t%.5f\t%.5f\t%s\t%s\t%d\t\n",
				r.Path, r.Workload, r.Size, rate(r.Mpps), mark, rate(r.Gbps), r.CPUGuest, r.CPUHost, r.CPUPeer,
				r.KicksPerFrame, r.IrqsPerFrame, p50, p99, r.Drops)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		runs := 1
		for _, r := range rep.Records {
			runs = max(runs, r.Runs)
		}
		best := ""
		if runs > 1 {
			best = fmt.Sprintf("; each row the fastest of %d runs", runs)
		}
		fmt.Fprintf(bw, "(s/Mf: CPU seconds per million frames; ping-pong rows count round trips; * partial%s)\n", best)
		fmt.Fprintf(bw, "(host side and driver wait: %s)\n", rep.waits())
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(bw, "note: %s\n", n)
	}
	if rep.Interrupted {
		fmt.Fprintln(bw, "note: interrupted: the table shows what was measured before Ctrl-C")
	}
	if len(rep.Ratios) == 0 && len(rep.Records) > 0 {
		fmt.Fprintln(bw, "ratio: none (needs virtio-tap and a ptnet path measured in this run)")
	}
	for _, r := range rep.Ratios {
		fmt.Fprintf(bw, "ratio %s %d B: %s / virtio-tap = %s / %s Mpps = %.1fx\n",
			r.Workload, r.Size, r.Passthrough, rate(r.Mpps), rate(r.TapMpps), r.Ratio)
	}
	return bw.Flush()
}

// waits says how the records' runs waited, by workload: "adaptive, polling 50µs
// before sleeping, for tx, rx; block for pingpong (-wait auto, 2 cores)".
func (rep *Report) waits() string {
	var order []Wait
	by := map[Wait][]string{}
	for _, r := range rep.Records {
		w := string(r.Workload)
		if !slices.Contains(by[r.Wait], w) {
			if by[r.Wait] == nil {
				order = append(order, r.Wait)
			}
			by[r.Wait] = append(by[r.Wait], w)
		}
	}
	var parts []string
	for _, wt := range order {
		s := string(wt)
		if wt == WaitAdaptive {
			s += fmt.Sprintf(", polling %v before sleeping,", time.Duration(rep.SpinUS*float64(time.Microsecond)))
		}
		parts = append(parts, s+" for "+strings.Join(by[wt], ", "))
	}
	s := strings.Join(parts, "; ")
	if rep.Wait == WaitAuto {
		s += fmt.Sprintf(" (-wait auto, %d cores: adaptive only where every busy thread has a core)", rep.Machine.Cores)
	}
	return s
}

// rate formats a rate with three decimals, or three significant digits below 0.1
// (the linux tier in the QEMU test host measures thousandths of a Mpps).
func rate(v float64) string {
	d := 3
	if v > 0 && v < 0.1 {
		d = min(2-int(math.Floor(math.Log10(v))), 9)
	}
	return strconv.FormatFloat(v, 'f', d, 64)
}

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteJSONFile writes the report to path.
func (rep *Report) WriteJSONFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := rep.WriteJSON(f); err != nil {
		f.Close()
		return fmt.Errorf("bench: write %s: %w", path, err)
	}
	return f.Close()
}
