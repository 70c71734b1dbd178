package pktgen

import (
	"encoding/binary"
	"flag"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTemplateParse(t *testing.T) {
	dst := [6]byte{1, 2, 3, 4, 5, 6}
	f := Template(60, 12, dst, DefaultSrc, KindPing)
	require.Len(t, f, 72)
	assert.Equal(t, make([]byte, 12), f[:12], "virtio-net header is zero")
	e := f[12:]
	Stamp(e, 0x1122334455667788, 99)
	h, err := Parse(e)
	require.NoError(t, err)
	assert.Equal(t, Header{Dst: dst, Src: DefaultSrc, Kind: KindPing, Seq: 0x1122334455667788, Stamp: 99}, h)
	assert.Equal(t, uint16(EtherType), binary.BigEndian.Uint16(e[12:]))
	assert.Equal(t, make([]byte, 60-hdrEnd), e[hdrEnd:], "padding is zero")
}

func TestParseRejects(t *testing.T) {
	good := Template(60, 0, Broadcast, DefaultSrc, KindData)
	_, err := Parse(good)
	require.NoError(t, err)
	cases := map[string][]byte{
		"empty":      nil,
		"short":      good[:hdrEnd-1],
		"ethertype":  append([]byte(nil), good...),
		"magic":      append([]byte(nil), good...),
		"ipv4 frame": append(append([]byte(nil), good[:12]...), 0x08, 0x00, 0x45),
	}
	cases["ethertype"][13] ^= 1
	cases["magic"][offMagic+2] = 'x'
	for name, b := range cases {
		_, err := Parse(b)
		assert.ErrorIs(t, err, ErrNotPktgen, name)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Template(60, 0, Broadcast, DefaultSrc, KindData))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Parse(b)
		if err != nil {
			return
		}
		// Whatever parses round-trips through Template and Stamp.
		e := Template(max(len(b), MinFrameSize), 0, h.Dst, h.Src, h.Kind)
		Stamp(e, h.Seq, h.Stamp)
		h2, err := Parse(e)
		require.NoError(t, err)
		assert.Equal(t, h, h2)
	})
}

func TestSeqTracker(t *testing.T) {
	var s seqTracker
	for _, q := range []uint64{0, 1, 2, 5, 6, 4, 7} {
		s.see(q)
	}
	// 3 never came; 4 came late (lost, then found).
	assert.Equal(t, uint64(1), s.lost)
	assert.Equal(t, uint64(1), s.ooo)

	var dup seqTracker
	for _, q := range []uint64{0, 1, 1, 2} {
		dup.see(q)
	}
	assert.Zero(t, dup.lost)
	assert.Equal(t, uint64(1), dup.ooo)

	var late seqTracker
	late.see(10) // started late: 0..9 lost
	assert.Equal(t, uint64(10), late.lost)
}

func TestPercentile(t *testing.T) {
	assert.Zero(t, Percentile(nil, 50))
	s := make([]time.Duration, 100)
	for i := range s {
		s[i] = time.Duration(i+1) * time.Microsecond
	}
	assert.Equal(t, 50*time.Microsecond, Percentile(s, 50))
	assert.Equal(t, 99*time.Microsecond, Percentile(s, 99))
	assert.Equal(t, 100*time.Microsecond, Percentile(s, 100))
	assert.Equal(t, 1*time.Microsecond, Percentile(s, 0.001))
	assert.Equal(t, 7*time.Second, Percentile([]time.Duration{7 * time.Second}, 99))
}

func TestLatencies(t *testing.T) {
	var l latencies
	for _, d := range []time.Duration{30, 10, 20, 40, 1000} {
		l.add(d * time.Microsecond)
	}
	s := l.summary()
	assert.Equal(t, Latency{N: 5, Min: 10 * time.Microsecond, P50: 30 * time.Microsecond,
		P90: 1000 * time.Microsecond, P99: 1000 * time.Microsecond, Max: 1000 * time.Microsecond}, s)
}

func TestSummaryRoundTrip(t *testing.T) {
	r := Result{Mode: ModePing, Frames: 1000, Bytes: 600_000_000, Elapsed: 2 * time.Second, Kicks: 3, Irqs: 4,
		Syncs: 5, Waits: 6, Lost: 7, OOO: 8, Bad: 9,
		Latency: Latency{N: 1000, Min: time.Microsecond, P50: 12500 * time.Nanosecond, P90: 20 * time.Microsecond, P99: 45 * time.Microsecond, Max: time.Millisecond}}
	out := "boot noise\n" + r.Human() + r.Summary() + "\nptvmm-agent: exit status 0\n"
	s, ok := ParseSummary(out)
	require.True(t, ok)
	for k, want := range map[string]uint64{"frames": 1000, "bytes": 600_000_000, "kicks": 3, "irqs": 4, "syncs": 5, "waits": 6, "lost": 7, "ooo": 8, "bad": 9, "rtts": 1000} {
		got, err := s.Uint(k)
		require.NoError(t, err, k)
		assert.Equal(t, want, got, k)
	}
	assert.Equal(t, "ping", s["mode"])
	for k, want := range map[string]float64{"secs": 2, "mpps": 0.0005, "gbps": 2.4, "p50us": 12.5, "p99us": 45, "minus": 1, "maxus": 1000} {
		got, err := s.Float(k)
		require.NoError(t, err, k)
		assert.InDelta(t, want, got, 1e-9, k)
	}
	_, err := s.Uint("nope")
	assert.Error(t, err)
	_, ok = ParseSummary("no summary here\n")
	assert.False(t, ok)
	assert.Contains(t, r.Human(), "p99 45.0 us")
}

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{ModeTx, ModeRx, ModePing, ModePong} {
		got, err := ParseMode(m.String())
		require.NoError(t, err)
		assert.Equal(t, m, got)
	}
	_, err := ParseMode("flood")
	assert.Error(t, err)
}

func TestFlags(t *testing.T) {
	var f Flags
	fs := flag.NewFlagSet("pktgen", flag.ContinueOnError)
	f.Register(fs)
	require.NoError(t, fs.Parse([]string{"-mode", "ping", "-size", "1514", "-count", "10", "-rate", "100",
		"-dst", "02:00:00:00:00:02", "-duration", "3s", "-batch", "32"}))
	c, err := f.Config()
	require.NoError(t, err)
	assert.Equal(t, Config{Mode: ModePing, FrameSize: 1514, Batch: 32, Count: 10, Duration: 3 * time.Second, Rate: 100,
		Src: DefaultSrc, Dst: [6]byte{2, 0, 0, 0, 0, 2}, RoundTimeout: time.Second, Drain: 2 * time.Second}, c)

	for _, args := range [][]string{{"-mode", "flood"}, {"-dst", "nope"}, {"-src", "01:02:03:04:05:06:07:08"}, {"-batch", "0"}} {
		var f Flags
		fs := flag.NewFlagSet("pktgen", flag.ContinueOnError)
		f.Register(fs)
		require.NoError(t, fs.Parse(args))
		_, err := f.Config()
		assert.Error(t, err, args)
	}
}
