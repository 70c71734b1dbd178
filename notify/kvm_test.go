package notify_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/internal/kvmtest"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/stretchr/testify/require"
)

const counterAddr = boot.MicroDataAddr

// interruptGuest: enable the LAPIC, optionally route an IOAPIC pin, report ready, then
// wait until the handler for vector has run n times and report the count.
func interruptGuest(t testing.TB, vector uint8, pin int, level bool, n uint64) ([]byte, map[uint8]uint64) {
	a := micro.New(boot.MicroCodeAddr)
	main := a.NewLabel()
	a.Jmp(main)
	h := a.CountingHandler(counterAddr)
	a.Bind(main)
	a.EnableLAPIC()
	if pin >= 0 {
		a.IOAPICRoute(pin, vector, level)
	}
	a.Report(micro.ReadyAddr)
	a.WaitCounter(counterAddr, n)
	code, err := a.Assemble()
	require.NoError(t, err)
	return code, map[uint8]uint64{vector: a.Addr(h)}
}

func TestIRQFDLevelWithResample(t *testing.T) {
	const n, gsi, vector = 20, 20, 0x30
	code, idt := interruptGuest(t, vector, gsi, true, n)
	g := kvmtest.New(t, kvmtest.Config{Code: code, IRQChip: true, Micro: boot.MicroOptions{IF: true, IDT: idt}})
	irq, err := notify.NewInterrupt(g.VM, gsi, true)
	require.NoError(t, err)
	defer irq.Close()
	var sent atomic.Int32
	// The INTx pattern: the guest's EOI de-asserts the line and signals resample; the
	// device (here: "n interrupts pending") asserts it again.
	w, err := notify.NewWorker(notify.Config{Name: "resample", Handler: func(int, uint64) {
		if sent.Load() < n {
			sent.Add(1)
			_ = irq.Fire()
		}
	}})
	require.NoError(t, err)
	_, err = w.Add(irq.Resample())
	require.NoError(t, err)
	w.Start()
	defer w.Stop()
	res := g.Start(60 * time.Second)
	select {
	case <-g.Ready:
	case r := <-res:
		t.Fatalf("guest ended before ready: %v", r.Err)
	}
	sent.Add(1)
	require.NoError(t, irq.Fire())
	r := <-res
	require.NoError(t, r.Err)
	require.Equal(t, uint32(n), r.Value, "guest handler count")
	require.Equal(t, uint64(n), g.Uint64(counterAddr))
	t.Logf("%d level-triggered irqfd interrupts counted by the guest; %d resamples; exits to Go: %d",
		n, w.Stats().Kicks, g.Exits())
}

// doorbellAddr is an MMIO address in the PCI hole with nothing mapped: a store there
// either signals an ioeventfd inside KVM or exits to Go.
const doorbellAddr = 0xd000_0000

// TestDoorbellMillionRings: a CPL3 guest rings an MMIO doorbell 1,000,000 times; the
// Worker accounts for every ring and none of them exits to Go.
func TestDoorbellMillionRings(t *testing.T) {
	n := uint64(1_000_000)
	if testing.Short() {
		n = 10_000
	}
	code, err := micro.Doorbells(boot.MicroCodeAddr, n, doorbellAddr, false, 1)
	require.NoError(t, err)
	g := kvmtest.New(t, kvmtest.Config{Code: code})
	db, err := notify.NewDoorbell(g.VM, notify.DoorbellSpec{Addr: doorbellAddr, Len: 4, DataMatch: true, Data: 1})
	require.NoError(t, err)
	defer db.Close()
	var seen atomic.Uint64
	all := make(chan struct{})
	w, err := notify.NewWorker(notify.Config{Name: "doorbell", Mode: notify.Adaptive, Handler: func(_ int, k uint64) {
		if seen.Add(k) == n {
			close(all)
		}
	}})
	require.NoError(t, err)
	_, err = w.Add(db.Event())
	require.NoError(t, err)
	w.Start()
	defer w.Stop()

	start := time.Now()
	v, err := g.Run(5 * time.Minute)
	elapsed := time.Since(start)
	require.NoError(t, err)
	require.Equal(t, uint32(n), v)
	select {
	case <-all:
	case <-time.After(time.Minute):
		t.Fatalf("worker accounted for %d of %d rings", seen.Load(), n)
	}
	st := w.Stats()
	require.Equal(t, n, st.Kicks, "eventfd counts summed")
	// The only exit to Go is the final report (a store to DoneAddr).
	require.Equal(t, uint64(1), g.MMIOExits.Load(), "MMIO exits")
	require.Zero(t, g.PIOExits.Load(), "PIO exits")
	t.Logf("%d doorbells in %v (%.0f ns each); worker: %d kicks in %d wakeups (%d blocks); exits to Go: %d MMIO (the report), %d PIO, %d other",
		n, elapsed, float64(elapsed.Nanoseconds())/float64(n), st.Kicks, st.Wakeups, st.Blocks,
		g.MMIOExits.Load(), g.PIOExits.Load(), g.OtherExits.Load())
}

// TestMSIVectorIRQFD: an MSI-X style vector (GSI route + irqfd) reaches the guest's
// handler for the vector in the message data; re-routing moves it to another vector.
func TestMSIVectorIRQFD(t *testing.T) {
	const v1, v2 = 0x41, 0x42
	a := micro.New(boot.MicroCodeAddr)
	main := a.NewLabel()
	a.Jmp(main)
	h1 := a.CountingHandler(counterAddr)
	h2 := a.CountingHandler(counterAddr + 8)
	a.Bind(main)
	a.EnableLAPIC()
	a.Report(micro.ReadyAddr)
	a.WaitCounter(counterAddr, 3)
	code, err := a.Assemble()
	require.NoError(t, err)
	idt := map[uint8]uint64{v1: a.Addr(h1), v2: a.Addr(h2)}
	g := kvmtest.New(t, kvmtest.Config{Code: code, IRQChip: true, Micro: boot.MicroOptions{IF: true, IDT: idt}})
	vecs, err := notify.NewMSIXVectors(g.VM, g.Routing, 2)
	require.NoError(t, err)
	defer vecs.Close()
	res := g.Start(60 * time.Second)
	<-g.Ready
	require.NoError(t, vecs.RouteMSI(1, micro.LAPICBase, v2))
	require.NoError(t, vecs.FireMSI(1))
	waitFor(t, func() bool { return g.Uint64(counterAddr+8) == 1 })
	require.NoError(t, vecs.RouteMSI(1, micro.LAPICBase, v1)) // guest rewrote the entry
	for i := 0; i < 3; i++ {
		require.NoError(t, vecs.FireMSI(1))
		want := uint64(i + 1)
		waitFor(t, func() bool { return g.Uint64(counterAddr) == want })
	}
	r := <-res
	require.NoError(t, r.Err)
	require.Equal(t, uint32(3), r.Value)
	require.Equal(t, uint64(1), g.Uint64(counterAddr+8), "re-routed vector no longer hits the old handler")
	require.Error(t, vecs.FireMSI(2))
}

// waitFor polls a guest-memory condition the guest changes on its own schedule.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 30s")
		}
	}
}

// pingPongGuest: the guest kicks a doorbell and waits for the MSI (vector 0x41) that
// the host worker raises in answer, n times.
func pingPongGuest(t testing.TB, n uint64) *kvmtest.Guest {
	const vector = 0x41
	a := micro.New(boot.MicroCodeAddr)
	main := a.NewLabel()
	a.Jmp(main)
	h := a.CountingHandler(counterAddr)
	a.Bind(main)
	a.EnableLAPIC()
	a.PingPong(doorbellAddr, counterAddr, n)
	code, err := a.Assemble()
	require.NoError(t, err)
	return kvmtest.New(t, kvmtest.Config{Code: code, IRQChip: true,
		Micro: boot.MicroOptions{IF: true, IDT: map[uint8]uint64{vector: a.Addr(h)}}})
}

// startEcho wires doorbell -> Worker -> MSI vector 0 (routed to 0x41): one interrupt
// raised per kick seen, the ptnet host-loop shape.
func startEcho(t testing.TB, g *kvmtest.Guest, mode notify.Mode) *notify.Worker {
	db, err := notify.NewDoorbell(g.VM, notify.DoorbellSpec{Addr: doorbellAddr, Len: 4})
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	vecs, err := notify.NewMSIXVectors(g.VM, g.Routing, 1)
	require.NoError(t, err)
	t.Cleanup(func() { vecs.Close() })
	require.NoError(t, vecs.RouteMSI(0, micro.LAPICBase, 0x41))
	var w *notify.Worker
	w, err = notify.NewWorker(notify.Config{Name: "echo", Mode: mode, Handler: func(_ int, k uint64) {
		for ; k > 0; k-- {
			_ = w.Raise(vecs.Vector(0))
		}
	}})
	require.NoError(t, err)
	_, err = w.Add(db.Event())
	require.NoError(t, err)
	w.Start()
	t.Cleanup(func() { w.Stop() })
	return w
}

// TestKickInterruptRoundTrip: every guest kick reaches the worker through the
// ioeventfd and every answer reaches the guest's handler through the irqfd; the only
// exit to Go is the final report.
func TestKickInterruptRoundTrip(t *testing.T) {
	const n = 200
	g := pingPongGuest(t, n)
	w := startEcho(t, g, notify.Block)
	start := time.Now()
	v, err := g.Run(time.Minute)
	d := time.Since(start)
	require.NoError(t, err)
	require.Equal(t, uint32(n), v)
	require.NoError(t, w.Stop())
	st := w.Stats()
	require.Equal(t, uint64(n), st.Kicks)
	require.Equal(t, uint64(n), st.Interrupts)
	require.Equal(t, uint64(n), g.Uint64(counterAddr))
	// Only the report exits (signal-interrupted runs, if any, are not MMIO/PIO exits).
	require.Equal(t, uint64(1), g.MMIOExits.Load()+g.PIOExits.Load(), "only the report exits")
	t.Logf("%d kick->interrupt round trips in %v (%v each), %d wakeups", n, d, d/n, st.Wakeups)
}
