package vale

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// Benchmarks: one op is one frame. Mpps = frames per second / 1e6 for the source
// port (a broadcast frame is copied to every destination but counted once).
// Everything (sender, switch, receivers) runs in the benchmark goroutine, so
// "Mpps/cpu" divides by the CPU time of that thread instead of wall time: the
// per-core rate, which stays meaningful on a machine shared with other work.

// cpuMeter measures the CPU time of the benchmark's OS thread.
type cpuMeter struct{ start time.Duration }

func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// startCPU locks the goroutine to its thread (undone by report) and starts the clock.
func startCPU() cpuMeter {
	runtime.LockOSThread()
	return cpuMeter{threadCPU()}
}

// report adds Mpps (wall) and Mpps/cpu (thread CPU time) for frames frames.
func (m cpuMeter) report(b *testing.B, frames int) {
	cpu := threadCPU() - m.start
	runtime.UnlockOSThread()
	b.ReportMetric(float64(frames)/b.Elapsed().Seconds()/1e6, "Mpps")
	if cpu > 0 {
		b.ReportMetric(float64(frames)/cpu.Seconds()/1e6, "Mpps/cpu")
	}
}

const benchSlots = 2048

type benchPort struct {
	p  *Port
	tx *netmap.Ring
	rx *netmap.Ring
}

func benchSwitch(b *testing.B, nports int) (*Switch, []benchPort) {
	s, err := New("vale0")
	if err != nil {
		b.Fatal(err)
	}
	var out []benchPort
	for i := 0; i < nports; i++ {
		p, err := s.NewPort(fmt.Sprint("p", i), netmap.PortConfig{TxSlots: benchSlots, RxSlots: benchSlots})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Detach() })
		np := p.Netmap()
		out = append(out, benchPort{p, np.UserRing(np.TxRing(0)), np.UserRing(np.RxRing(0))})
	}
	return s, out
}

// fillTx writes frame into every TX slot once; rounds then only move head.
func fillTx(bp benchPort, frame []byte) {
	r := bp.tx
	for i := uint32(0); i < r.NumSlots(); i++ {
		s := r.Slot(i)
		copy(r.Buf(s.BufIdx), frame)
		s.Len, s.Flags = uint16(len(frame)), 0
		r.SetSlot(i, s)
	}
}

// drain imports what arrived and releases it (two rxsyncs, as a receiver that
// consumes everything at once).
func drain(b *testing.B, bp benchPort) {
	if err := bp.p.RxSync(0); err != nil {
		b.Fatal(err)
	}
	t := bp.rx.Tail()
	bp.rx.SetHeadCur(t, t)
	if err := bp.p.RxSync(0); err != nil {
		b.Fatal(err)
	}
}

func runForward(b *testing.B, src benchPort, sinks []benchPort, batch int) {
	b.ReportAllocs()
	b.ResetTimer()
	m := startCPU()
	for done := 0; done < b.N; {
		k := min(batch, b.N-done)
		h := src.tx.Head()
		h = (h + uint32(k)) % benchSlots
		src.tx.SetHeadCur(h, h)
		if err := src.p.TxSync(0); err != nil {
			b.Fatal(err)
		}
		for _, s := range sinks {
			drain(b, s)
		}
		done += k
	}
	b.StopTimer()
	m.report(b, b.N)
	for _, s := range sinks {
		c := s.p.Counters()
		if c.Drops() != 0 || c.RxFrames != uint64(b.N) {
			b.Fatalf("sink %s: %d frames received of %d, counters %+v", s.p.Name(), c.RxFrames, b.N, c)
		}
	}
}

func BenchmarkForward(b *testing.B) {
	for _, size := range []int{60, 1514} {
		for _, batch := range []int{1, 64, 1024} {
			b.Run(fmt.Sprintf("unicast/%dB/batch%d", size, batch), func(b *testing.B) {
				_, ps := benchSwitch(b, 2)
				// Teach the switch where p1 is, then drain that flood.
				fillTx(ps[1], eth(mac(0xa), mac(0xb), 60, 0))
				ps[1].tx.Advance(1)
				if err := ps[1].p.TxSync(0); err != nil {
					b.Fatal(err)
				}
				drain(b, ps[0])
				drain(b, ps[0])
				fillTx(ps[0], eth(mac(0xb), mac(0xa), size, 1))
				b.SetBytes(int64(size))
				runForward(b, ps[0], ps[1:], batch)
			})
		}
	}
	for _, batch := range []int{64, 1024} {
		b.Run(fmt.Sprintf("broadcast4/60B/batch%d", batch), func(b *testing.B) {
			_, ps := benchSwitch(b, 5)
			fillTx(ps[0], eth(bcastMAC, mac(0xa), 60, 1))
			b.SetBytes(60)
			runForward(b, ps[0], ps[1:], batch)
		})
	}
}

// BenchmarkMemcpyBound copies the same bytes the switch copies and nothing else:
// "region" from the TX buffers of one port to the RX buffers of another in ring order
// (the very memory the switch uses: memfd pages, so TLB misses included), "heap"
// between two Go slices (anonymous memory, possibly huge pages).
func BenchmarkMemcpyBound(b *testing.B) {
	for _, size := range []int{60, 1514} {
		b.Run(fmt.Sprintf("region/%dB", size), func(b *testing.B) {
			_, ps := benchSwitch(b, 2)
			var src, dst [benchSlots][]byte
			for i := range src {
				src[i] = ps[0].tx.SlotBuf(uint32(i))
				dst[i] = ps[1].rx.SlotBuf(uint32(i))
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			m := startCPU()
			i := 0
			for n := 0; n < b.N; n++ {
				copy(dst[i], src[i][:size])
				if i++; i == benchSlots {
					i = 0
				}
			}
			b.StopTimer()
			m.report(b, b.N)
		})
		b.Run(fmt.Sprintf("heap/%dB", size), func(b *testing.B) {
			src := make([]byte, benchSlots*2048)
			dst := make([]byte, benchSlots*2048)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			m := startCPU()
			i := 0
			for n := 0; n < b.N; n++ {
				o := i * 2048
				copy(dst[o:o+2048], src[o:o+size])
				if i++; i == benchSlots {
					i = 0
				}
			}
			b.StopTimer()
			m.report(b, b.N)
		})
	}
}

// copyChunks64 copies in whole 64-byte blocks (netmap's unrolled copy); it writes up
// to 63 bytes past len(src), which is why copyFrame does not use it.
func copyChunks64(dst, src []byte) {
	n := (len(src) + 63) &^ 63
	src = src[:n:n]
	for i := 0; i < n; i += 64 {
		*(*[64]byte)(dst[i : i+64]) = *(*[64]byte)(src[i : i+64])
	}
}

// BenchmarkCopy compares copy() (memmove) with 64-byte block copies.
func BenchmarkCopy(b *testing.B) {
	for _, size := range []int{60, 1514} {
		for _, v := range []struct {
			name string
			fn   func(dst, src []byte)
		}{{"copy", copyFrame}, {"chunk64", copyChunks64}} {
			b.Run(fmt.Sprintf("%s/%dB", v.name, size), func(b *testing.B) {
				src := make([]byte, benchSlots*2048)
				dst := make([]byte, benchSlots*2048)
				b.SetBytes(int64(size))
				i := 0
				for b.Loop() {
					o := i * 2048
					v.fn(dst[o:o+2048], src[o:o+size:o+2048])
					if i++; i == benchSlots {
						i = 0
					}
				}
			})
		}
	}
}

// BenchmarkLearningLookup is the default lookup alone (learned unicast).
func BenchmarkLearningLookup(b *testing.B) {
	l := NewLearning()
	l.Learn(mac(0xb), 1)
	f := eth(mac(0xb), mac(0xa), 60, 0)
	for b.Loop() {
		if l.Lookup(f, 0) != 1 {
			b.Fatal("lookup failed")
		}
	}
}

// benchBackend hands out copies of one frame and takes everything sent to it,
// without allocating.
type benchBackend struct {
	frame []byte
	quiet bool // Recv returns nothing
	sent  int
}

func (f *benchBackend) Name() string { return "bench" }
func (f *benchBackend) Recv(bufs [][]byte, lens []int) (int, error) {
	if f.quiet {
		return 0, nil
	}
	for i := range bufs {
		lens[i] = copy(bufs[i], f.frame)
	}
	return len(bufs), nil
}
func (f *benchBackend) Send(frames [][]byte) (int, error) {
	f.sent += len(frames)
	return len(frames), nil
}
func (f *benchBackend) ReadyFD() int { return -1 }
func (f *benchBackend) Close() error { return nil }

// BenchmarkBackendPort: frames from a backends.Port (as a TAP would give them, minus
// the system calls) through a BackendPort into the switch, out of a second
// BackendPort into its backend. One op is one frame.
func BenchmarkBackendPort(b *testing.B) {
	s, err := New("vale0")
	if err != nil {
		b.Fatal(err)
	}
	src := &benchBackend{frame: eth(mac(0xb), mac(0xa), 60, 1)}
	dst := &benchBackend{frame: eth(mac(0xa), mac(0xb), 60, 2)}
	bx, err := s.AttachBackend("x", src, BackendOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer bx.Close()
	by, err := s.AttachBackend("y", dst, BackendOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer by.Close()
	by.Poll() // y's frames teach the switch where mac b is
	bx.Poll()
	dst.quiet = true
	by.Poll()
	src.sent, dst.sent = 0, 0
	b.ReportAllocs()
	b.SetBytes(60)
	b.ResetTimer()
	m := startCPU()
	for done := 0; done < b.N; {
		in, _, err := bx.Poll() // 256 frames in
		if err != nil {
			b.Fatal(err)
		}
		for out := 0; out < in; {
			_, n, err := by.Poll()
			if err != nil {
				b.Fatal(err)
			}
			out += n
		}
		done += in
	}
	b.StopTimer()
	m.report(b, b.N)
	if dst.sent < b.N {
		b.Fatalf("backend y got %d of %d frames", dst.sent, b.N)
	}
}
