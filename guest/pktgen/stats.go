package pktgen

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// maxSamples bounds the latency samples kept (8 MiB); beyond it a uniform
// reservoir sample stands for all round trips.
const maxSamples = 1 << 20

// latencies collects round-trip times.
type latencies struct {
	n       uint64
	samples []time.Duration
	min     time.Duration
	max     time.Duration
	rng     *rand.Rand
}

func (l *latencies) add(d time.Duration) {
	l.n++
	if l.n == 1 || d < l.min {
		l.min = d
	}
	if d > l.max {
		l.max = d
	}
	if len(l.samples) < maxSamples {
		l.samples = append(l.samples, d)
		return
	}
	if l.rng == nil {
		l.rng = rand.New(rand.NewPCG(1, 2))
	}
	if j := l.rng.Uint64N(l.n); j < maxSamples {
		l.samples[j] = d
	}
}

// Latency summarises round-trip times.
type Latency struct {
	N                       uint64
	Min, P50, P90, P99, Max time.Duration
}

func (l *latencies) summary() Latency {
	s := slices.Clone(l.samples)
	slices.Sort(s)
	return Latency{N: l.n, Min: l.min, Max: l.max,
		P50: Percentile(s, 50), P90: Percentile(s, 90), P99: Percentile(s, 99)}
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted
// samples, 0 when there are none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	k := int(math.Ceil(p / 100 * float64(len(sorted))))
	k = min(max(k, 1), len(sorted))
	return sorted[k-1]
}

// Result is what one run measured.
type Result struct {
	Mode    Mode
	Frames  uint64        // frames sent (tx, pong), received (rx) or round trips (ping)
	Bytes   uint64        // Ethernet bytes of those frames (no virtio-net header)
	Elapsed time.Duration // first frame to the last (tx: until the ring drained)
	Kicks   uint64        // doorbell writes during the run
	Irqs    uint64        // interrupts taken during the run
	Syncs   uint64
	Waits   uint64
	Lost    uint64 // rx: sequence gaps; ping: round trips that timed out
	Bad     uint64 // rx/pong: frames that are not pktgen's (or of another kind)
	OOO     uint64 // rx: late or duplicated frames
	Acks    uint64 // rx: acks sent (Config.Ack)
	Latency Latency
}

// Mpps is millions of frames per second.
func (r Result) Mpps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Frames) / r.Elapsed.Seconds() / 1e6
}

// Gbps is the Ethernet payload rate (frames without FCS, preamble or gap).
func (r Result) Gbps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) * 8 / r.Elapsed.Seconds() / 1e9
}

func perFrame(n, frames uint64) float64 {
	if frames == 0 {
		return 0
	}
	return float64(n) / float64(frames)
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Human is the result for people, several lines.
func (r Result) Human() string {
	var b strings.Builder
	size := uint64(0)
	if r.Frames > 0 {
		size = r.Bytes / r.Frames
	}
	fmt.Fprintf(&b, "pktgen: %s: %d frames of %d B in %v: %.3f Mpps, %.3f Gbit/s\n",
		r.Mode, r.Frames, size, r.Elapsed.Round(time.Microsecond), r.Mpps(), r.Gbps())
	fmt.Fprintf(&b, "pktgen: kicks %d (%.6f/frame), interrupts %d (%.6f/frame), syncs %d, waits %d\n",
		r.Kicks, perFrame(r.Kicks, r.Frames), r.Irqs, perFrame(r.Irqs, r.Frames), r.Syncs, r.Waits)
	if r.Lost > 0 || r.Bad > 0 || r.OOO > 0 {
		fmt.Fprintf(&b, "pktgen: lost %d, out of order %d, not ours %d\n", r.Lost, r.OOO, r.Bad)
	}
	if r.Mode == ModePing {
		l := r.Latency
		fmt.Fprintf(&b, "pktgen: round trip over %d: min %.1f us, p50 %.1f us, p90 %.1f us, p99 %.1f us, max %.1f us\n",
			l.N, us(l.Min), us(l.P50), us(l.P90), us(l.P99), us(l.Max))
	}
	return b.String()
}

// Summary is the one machine-readable line: "pktgen: key=value ...".
// ParseSummary reads it back.
func (r Result) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pktgen: mode=%s frames=%d bytes=%d secs=%.6f mpps=%.4f gbps=%.4f kicks=%d irqs=%d syncs=%d waits=%d lost=%d ooo=%d bad=%d",
		r.Mode, r.Frames, r.Bytes, r.Elapsed.Seconds(), r.Mpps(), r.Gbps(), r.Kicks, r.Irqs, r.Syncs, r.Waits, r.Lost, r.OOO, r.Bad)
	if r.Acks > 0 {
		fmt.Fprintf(&b, " acks=%d", r.Acks)
	}
	if r.Mode == ModePing {
		l := r.Latency
		fmt.Fprintf(&b, " rtts=%d minus=%.2f p50us=%.2f p90us=%.2f p99us=%.2f maxus=%.2f",
			l.N, us(l.Min), us(l.P50), us(l.P90), us(l.P99), us(l.Max))
	}
	return b.String()
}

// Summary is a parsed summary line.
type Summary map[string]string

// ParseSummary finds a summary line in out (e.g. a guest's console) and
// returns its fields; ok is false when there is none. The last one wins.
func ParseSummary(out string) (s Summary, ok bool) {
	for line := range strings.Lines(out) {
		i := strings.Index(line, "pktgen: mode=")
		if i < 0 {
			continue
		}
		s = Summary{}
		for _, f := range strings.Fields(line[i+len("pktgen: "):]) {
			if k, v, found := strings.Cut(f, "="); found {
				s[k] = v
			}
		}
		ok = true
	}
	return s, ok
}

// Uint is field k as an integer.
func (s Summary) Uint(k string) (uint64, error) {
	v, ok := s[k]
	if !ok {
		return 0, fmt.Errorf("pktgen: summary has no %s", k)
	}
	return strconv.ParseUint(v, 10, 64)
}

// Float is field k as a number.
func (s Summary) Float(k string) (float64, error) {
	v, ok := s[k]
	if !ok {
		return 0, fmt.Errorf("pktgen: summary has no %s", k)
	}
	return strconv.ParseFloat(v, 64)
}
