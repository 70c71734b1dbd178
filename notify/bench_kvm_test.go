package notify_test

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/internal/kvmtest"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/stretchr/testify/require"
)

// countDev is a trapped MMIO register: every write exits to Go and is counted here.
type countDev struct{ n atomic.Uint64 }

func (d *countDev) Read(_ uint64, data []byte) { clear(data) }
func (d *countDev) Write(uint64, []byte)       { d.n.Add(1) }

// ringTime runs a CPL3 guest ringing n MMIO doorbells and returns the wall time.
func ringTime(b *testing.B, n uint64, ioeventfd bool) time.Duration {
	code, err := micro.Doorbells(boot.MicroCodeAddr, n, doorbellAddr, false, 1)
	require.NoError(b, err)
	g := kvmtest.New(b, kvmtest.Config{Code: code})
	var dev countDev
	require.NoError(b, g.MMIO.Register(doorbellAddr, 4, &dev))
	var counted func() uint64
	if ioeventfd {
		db, err := notify.NewDoorbell(g.VM, notify.DoorbellSpec{Addr: doorbellAddr, Len: 4})
		require.NoError(b, err)
		defer db.Close()
		var kicks atomic.Uint64
		w, err := notify.NewWorker(notify.Config{Name: "bench", Handler: func(_ int, k uint64) { kicks.Add(k) }})
		require.NoError(b, err)
		_, _ = w.Add(db.Event())
		w.Start()
		defer w.Stop()
		counted = func() uint64 { return kicks.Load() }
	} else {
		counted = dev.n.Load
	}
	start := time.Now()
	v, err := g.Run(10 * time.Minute)
	d := time.Since(start)
	require.NoError(b, err)
	require.Equal(b, uint32(n), v)
	deadline := time.Now().Add(time.Minute)
	for counted() != n {
		require.True(b, time.Now().Before(deadline), "%d of %d doorbells counted", counted(), n)
	}
	if ioeventfd {
		require.Equal(b, uint64(1), g.MMIOExits.Load(), "ioeventfd doorbells must not exit")
	} else {
		require.Equal(b, n+1, g.MMIOExits.Load())
	}
	return d
}

// BenchmarkDoorbell compares, in one run, a CPL3 guest's MMIO doorbell caught by an
// ioeventfd (signalled inside KVM, consumed by a Worker) with the same store exiting
// to Go (KVM_EXIT_MMIO, dispatched on the bus and counted). ns/op is the ioeventfd
// path; ns/exit, ns/ioeventfd and exit/ioeventfd (the ratio) are reported.
func BenchmarkDoorbell(b *testing.B) {
	kvmtest.Available(b)
	n := uint64(b.N)
	b.ResetTimer()
	fast := ringTime(b, n, true)
	b.StopTimer()
	slow := ringTime(b, n, false)
	fns := float64(fast.Nanoseconds()) / float64(n)
	sns := float64(slow.Nanoseconds()) / float64(n)
	b.ReportMetric(fns, "ns/ioeventfd")
	b.ReportMetric(sns, "ns/exit")
	b.ReportMetric(sns/fns, "exit/ioeventfd")
}

// BenchmarkIRQFDInterrupt is one MSI through an irqfd (GSI route to vector 0x41) until
// the guest's handler has counted it: eventfd write, injection, delivery through the
// IDT to a CPL0 handler (emulated on software KVM), EOI.
func BenchmarkIRQFDInterrupt(b *testing.B) {
	const vector = 0x41
	a := micro.New(boot.MicroCodeAddr)
	main := a.NewLabel()
	a.Jmp(main)
	h := a.CountingHandler(counterAddr)
	a.Bind(main)
	a.EnableLAPIC()
	a.Report(micro.ReadyAddr)
	a.WaitCounter(counterAddr, ^uint64(0))
	code, err := a.Assemble()
	require.NoError(b, err)
	g := kvmtest.New(b, kvmtest.Config{Code: code, IRQChip: true,
		Micro: boot.MicroOptions{IF: true, IDT: map[uint8]uint64{vector: a.Addr(h)}}})
	vecs, err := notify.NewMSIXVectors(g.VM, g.Routing, 1)
	require.NoError(b, err)
	defer vecs.Close()
	require.NoError(b, vecs.RouteMSI(0, micro.LAPICBase, vector))
	res := g.Start(time.Hour)
	<-g.Ready
	irq := vecs.Vector(0)
	lat := make([]time.Duration, 0, b.N)
	var i uint64
	for b.Loop() {
		i++
		t0 := time.Now()
		if err := irq.Fire(); err != nil {
			b.Fatal(err)
		}
		for g.Uint64(counterAddr) != i {
		}
		lat = append(lat, time.Since(t0))
	}
	g.Stop()
	r := <-res
	require.ErrorIs(b, r.Err, kvmtest.ErrStopped)
	require.Equal(b, i, g.Uint64(counterAddr))
	// On a loaded two-core machine the mean is dominated by a tail of scheduling
	// delays; the median is the interrupt path itself.
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "ns-p50/irq")
	b.ReportMetric(float64(lat[len(lat)*9/10].Nanoseconds()), "ns-p90/irq")
}

// BenchmarkKickInterruptRoundTrip: guest kick (ioeventfd) -> Worker -> MSI (irqfd) ->
// guest handler, per waiting mode of the worker.
func BenchmarkKickInterruptRoundTrip(b *testing.B) {
	for _, mode := range []notify.Mode{notify.Block, notify.Adaptive, notify.Poll} {
		b.Run(mode.String(), func(b *testing.B) {
			g := pingPongGuest(b, uint64(b.N))
			startEcho(b, g, mode)
			b.ResetTimer()
			v, err := g.Run(time.Hour)
			require.NoError(b, err)
			require.Equal(b, uint32(b.N), v)
		})
	}
}
