package pktgen

import (
	"flag"
	"fmt"
	"net"
	"time"
)

// Flags are a run's command-line options (rings and the header length come
// from the caller). Register adds them to a FlagSet; Config turns them into
// a Config. Not safe for concurrent use.
type Flags struct {
	Mode         string
	Size         int
	Batch        int
	Count        uint64
	Duration     time.Duration
	Rate         float64
	Src, Dst     string
	RoundTimeout time.Duration
	Idle         time.Duration
	Drain        time.Duration
	Ack          int
	Prefill      bool
}

// Register adds the flags to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Mode, "mode", "tx", "tx, rx, ping (send, wait for the echo, measure) or pong (echo pings)")
	fs.IntVar(&f.Size, "size", MinFrameSize, "Ethernet frame size in bytes, without FCS")
	fs.IntVar(&f.Batch, "batch", defaultBatch, "most frames per sync")
	fs.Uint64Var(&f.Count, "count", 0, "frames (ping: round trips) to run for; 0: no limit")
	fs.DurationVar(&f.Duration, "duration", 0, "how long to run; 0: no limit")
	fs.Float64Var(&f.Rate, "rate", 0, "frames (ping: round trips) per second; 0: as fast as possible")
	fs.StringVar(&f.Src, "src", net.HardwareAddr(DefaultSrc[:]).String(), "source MAC address")
	fs.StringVar(&f.Dst, "dst", net.HardwareAddr(Broadcast[:]).String(), "destination MAC address")
	fs.DurationVar(&f.RoundTimeout, "round-timeout", time.Second, "ping: how long to wait for one echo")
	fs.DurationVar(&f.Idle, "idle", 0, "rx, pong: stop after this long without a frame, once one came; 0: never")
	fs.DurationVar(&f.Drain, "drain", 2*time.Second, "tx: how long to wait at the end for the ring to drain")
	fs.IntVar(&f.Ack, "ack", 0, "rx: tell the sender (-dst) how far rx got every N frames and before waiting, on the TX ring, for a sender that keeps a window in flight; 0: never")
	fs.BoolVar(&f.Prefill, "prefill", false, "tx: write each buffer once, then only slot lengths (netmap pkt-gen's default; no sequence numbers)")
}

// Config builds the Config the flags describe (without rings).
func (f *Flags) Config() (Config, error) {
	m, err := ParseMode(f.Mode)
	if err != nil {
		return Config{}, err
	}
	c := Config{Mode: m, FrameSize: f.Size, Batch: f.Batch, Count: f.Count, Duration: f.Duration,
		Rate: f.Rate, RoundTimeout: f.RoundTimeout, Idle: f.Idle, Drain: f.Drain, Prefill: f.Prefill}
	if f.Batch < 1 {
		return Config{}, fmt.Errorf("pktgen: batch %d: want at least 1", f.Batch)
	}
	if f.Ack < 0 || (f.Ack > 0 && m != ModeRx) {
		return Config{}, fmt.Errorf("pktgen: -ack %d: want 0, or a count of frames with -mode rx", f.Ack)
	}
	c.AckEvery = f.Ack
	if c.Src, err = parseMAC("src", f.Src); err != nil {
		return Config{}, err
	}
	if c.Dst, err = parseMAC("dst", f.Dst); err != nil {
		return Config{}, err
	}
	return c, nil
}

func parseMAC(what, s string) ([6]byte, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return [6]byte{}, fmt.Errorf("pktgen: -%s %q: want a MAC address like 02:00:00:00:00:01", what, s)
	}
	return [6]byte(hw), nil
}
