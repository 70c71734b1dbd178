package netmap_test

import (
	"fmt"
	"testing"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// stepPath is a passthrough path with no host-loop thread: the benchmark goroutine
// is the driver, the host loop (one SyncCSB per batch, as a ring run does) and the
// receiver in turn, so the figure is the datapath's CPU cost per frame on one core,
// free of scheduling and wake-ups.
type stepPath struct {
	drv  *netmap.Driver
	csb  *netmap.CSB
	tk   *netmap.Kring // the sender's TX kring
	sink *benchSink
	done func()
}

func newStepPath(b *testing.B, path string) *stepPath {
	var p *benchPath
	if path == "switch" {
		p = benchSwitch(b, 1024, netmap.LocalConfig{})
	} else {
		p = benchPipe(b, 1024, netmap.LocalConfig{})
	}
	// Keep the port, the driver and the sink; run the port's TX ring ourselves.
	_ = p.local.Loop.Stop()
	csb := p.local.CSB
	csb.SetKernNeedKick(0, 0) // no kicks: nobody listens
	return &stepPath{drv: p.local.Driver, csb: csb, tk: p.port.TxRing(0), sink: p.sink, done: p.close}
}

// BenchmarkDatapath: one op = one frame sent by the driver, moved by SyncCSB and
// read by the receiver, all on the benchmark goroutine.
func BenchmarkDatapath(b *testing.B) {
	for _, path := range []string{"switch", "pipe"} {
		for _, size := range []int{60, 1514} {
			b.Run(fmt.Sprintf("%s/size=%d", path, size), func(b *testing.B) {
				sp := newStepPath(b, path)
				defer sp.done()
				tx := sp.drv.TxRing(0)
				ring := tx.Ring()
				dst, src := macAddr(0xb), macAddr(0xa)
				var seq uint32
				const batch = 256
				b.ResetTimer()
				cpu0 := procCPU()
				for done := 0; done < b.N; {
					n := min(batch, b.N-done)
					if ring.Space() == 0 {
						if err := tx.Sync(0); err != nil {
							b.Fatal(err)
						}
						if ring.Space() == 0 {
							b.Fatal("no TX room")
						}
					}
					n = min(n, int(ring.Space()))
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
					// The host loop's part.
					head, cur, flags := sp.csb.ReadAtok(0)
					hwcur, hwtail, err := sp.tk.SyncCSB(head, cur, flags)
					if err != nil {
						b.Fatal(err)
					}
					sp.csb.SetHwCurTail(0, hwcur, hwtail)
					sp.sink.drain()
					done += n
				}
				b.StopTimer()
				// CPU time is what load on a shared machine does not inflate.
				b.ReportMetric(float64((procCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/frame")
				if sp.sink.got < b.N*9/10 {
					b.Fatalf("received %d of %d", sp.sink.got, b.N)
				}
			})
		}
	}
}
