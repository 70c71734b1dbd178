package netmap_test

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/vale"
	"github.com/ptvmm/ptvmm/notify"
)

// benchSink is the receiving side of a benchmark, drained by the sending goroutine
// itself so that at most two threads are busy: the driver goroutine and the host
// loop's worker.
type benchSink struct {
	k    *netmap.Kring
	r    *netmap.Ring
	got  int
	sink byte
}

// drain rxsyncs, reads the first byte of every frame and releases them (released
// slots go back at the next drain's sync).
func (s *benchSink) drain() {
	_ = s.k.Sync(0)
	h, t := s.r.Head(), s.r.Tail()
	for ; h != t; h = s.r.Next(h) {
		if b := s.r.SlotBuf(h); b != nil {
			s.sink ^= b[0]
		}
		s.got++
	}
	s.r.SetHeadCur(h, h)
}

// benchPath is one path under test: the sender's host loop + driver, and the sink.
type benchPath struct {
	port  *netmap.Port // the sender's port
	local *netmap.Local
	sink  *benchSink
	drops func() uint64
	close func()
}

func benchSwitch(b *testing.B, slots int, cfg netmap.LocalConfig) *benchPath {
	s, err := vale.New("valeb")
	if err != nil {
		b.Fatal(err)
	}
	pa, err := s.NewPort("a", netmap.PortConfig{TxSlots: slots, RxSlots: slots})
	if err != nil {
		b.Fatal(err)
	}
	pb, err := s.NewPort("b", netmap.PortConfig{TxSlots: slots, RxSlots: slots})
	if err != nil {
		b.Fatal(err)
	}
	// B announces its MAC so that A's frames go to B alone (unicast).
	u := pb.Netmap().UserRing(pb.Netmap().TxRing(0))
	sl := u.Slot(u.Head())
	putFrame(u.Buf(sl.BufIdx), bcast, macAddr(0xb), 60, 0)
	sl.Len = 60
	u.SetSlot(u.Head(), sl)
	u.Advance(1)
	if err := pb.TxSync(0); err != nil {
		b.Fatal(err)
	}
	l, err := netmap.StartLocalConfig(pa.Netmap(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	rk := pb.Netmap().RxRing(0)
	return &benchPath{port: pa.Netmap(), local: l, sink: &benchSink{k: rk, r: pb.Netmap().UserRing(rk)},
		drops: func() uint64 { return pb.Counters().Drops() },
		close: func() { l.Close(); pb.Detach(); pa.Detach() }}
}

func benchPipe(b *testing.B, slots int, cfg netmap.LocalConfig) *benchPath {
	m, s, err := netmap.NewPipe("bench", "1", netmap.PortConfig{TxSlots: slots})
	if err != nil {
		b.Fatal(err)
	}
	l, err := netmap.StartLocalConfig(m, cfg)
	if err != nil {
		b.Fatal(err)
	}
	rk := s.RxRing(0)
	return &benchPath{port: m, local: l, sink: &benchSink{k: rk, r: s.UserRing(rk)},
		drops: func() uint64 { return m.TxRing(0).Stats().Dropped },
		close: func() { l.Close(); s.Close(); m.Close() }}
}

// BenchmarkKloop: a driver sends frames through its host loop (Block mode) into a
// switch port with a receiver, or into a pipe whose other end is read; one op = one
// frame. The driver writes the Ethernet header and sequence number (the switch copies
// the whole frame; a pipe swaps buffers). Reported: Mpps sent, kicks and interrupts
// per frame, receiver share.
func BenchmarkKloop(b *testing.B) {
	// block: the defaults (both sides sleep as soon as they run out of work).
	// spin: the loop polls 50 us before arming kicks (Adaptive) and the driver
	// polls 20 us before arming interrupts: two busy threads at saturation, and
	// almost no kicks or interrupts.
	modes := []struct {
		name string
		cfg  netmap.LocalConfig
	}{
		{"block", netmap.LocalConfig{Mode: notify.Block}},
		{"spin", netmap.LocalConfig{Mode: notify.Adaptive, DriverSpin: 20 * time.Microsecond}},
	}
	for _, mode := range modes {
		for _, path := range []string{"switch", "pipe"} {
			for _, size := range []int{60, 1514} {
				for _, batch := range []int{1, 64, 256} {
					b.Run(fmt.Sprintf("%s/%s/size=%d/batch=%d", mode.name, path, size, batch), func(b *testing.B) {
						var p *benchPath
						if path == "switch" {
							p = benchSwitch(b, 1024, mode.cfg)
						} else {
							p = benchPipe(b, 1024, mode.cfg)
						}
						defer p.close()
						runKloopBench(b, p, size, batch)
					})
				}
			}
		}
	}
}

func runKloopBench(b *testing.B, p *benchPath, size, batch int) {
	tx := p.local.Driver.TxRing(0)
	ring := tx.Ring()
	dst, src := macAddr(0xb), macAddr(0xa)
	st0, ls0 := tx.Stats(), p.local.Loop.Stats()[0]
	drops0 := p.drops()
	cpu0, lcpu0 := procCPU(), p.local.Loop.Totals().CPU
	var seq uint32
	b.ResetTimer()
	start := time.Now()
	for done := 0; done < b.N; {
		// As pkt-gen: send what fits of the batch, wait only when nothing does.
		for ring.Space() == 0 {
			ok, err := tx.Wait(10 * time.Second)
			if err != nil || !ok {
				b.Fatalf("no TX room: %v", err)
			}
			p.sink.drain()
		}
		n := min(batch, b.N-done, int(ring.Space()))
		h := ring.Head()
		for i := 0; i < n; i++ {
			sl := ring.Slot(h)
			putFrame(ring.Buf(sl.BufIdx), dst, src, 18, seq)
			seq++
			sl.Len, sl.Flags = uint16(size), 0
			ring.SetSlot(h, sl)
			h = ring.Next(h)
		}
		ring.SetHeadCur(h, h)
		if err := tx.Sync(0); err != nil {
			b.Fatal(err)
		}
		p.sink.drain()
		done += n
	}
	el := time.Since(start)
	b.StopTimer()
	st, ls := tx.Stats(), p.local.Loop.Stats()[0]
	cpu, lcpu := procCPU()-cpu0, p.local.Loop.Totals().CPU-lcpu0
	// Let the loop finish what is queued, for the receive figures.
	for deadline := time.Now().Add(5 * time.Second); p.sink.got+int(p.drops()-drops0) < b.N && time.Now().Before(deadline); {
		_, _ = tx.Wait(time.Millisecond)
		_ = tx.Sync(netmap.ForceReclaim)
		p.sink.drain()
	}
	f := float64(b.N)
	b.ReportMetric(f/el.Seconds()/1e6, "Mpps")
	b.ReportMetric(float64(st.Kicks-st0.Kicks)/f, "kicks/frame")
	b.ReportMetric(float64(ls.Interrupts-ls0.Interrupts)/f, "irqs/frame")
	b.ReportMetric(float64(p.sink.got)/f, "rx/frame")
	// CPU per frame: the host loop's thread, and everything else (the driver and
	// sink goroutine, mostly). Less sensitive than Mpps to other load on the machine.
	b.ReportMetric(float64(lcpu.Nanoseconds())/f, "loop-cpu-ns/frame")
	b.ReportMetric(float64((cpu-lcpu).Nanoseconds())/f, "drv-cpu-ns/frame")
}

// procCPU is the process's user+system CPU time.
func procCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
