package notify_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/internal/kvmtest"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/kvm"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// fakeKVM records irqfd bindings and MSI routes instead of making ioctls.
type fakeKVM struct {
	mu       sync.Mutex
	bound    map[int]uint32 // eventfd -> GSI
	resample map[int]int    // eventfd -> resample eventfd
	routes   map[uint32]*kvm.MSI
	next     uint32
	calls    int // KVM_IRQFD ioctls
	failBind bool
}

func newFakeKVM() *fakeKVM {
	return &fakeKVM{bound: map[int]uint32{}, resample: map[int]int{}, routes: map[uint32]*kvm.MSI{}, next: 24}
}

func (f *fakeKVM) AssignIRQFD(fd int, gsi uint32, resampleFD int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.failBind {
		return errors.New("injected")
	}
	if _, ok := f.bound[fd]; ok {
		return errors.New("EBUSY: eventfd already bound") // as kvm_irqfd_assign
	}
	f.bound[fd], f.resample[fd] = gsi, resampleFD
	return nil
}

func (f *fakeKVM) DeassignIRQFD(fd int, gsi uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.failBind {
		return errors.New("injected")
	}
	if g, ok := f.bound[fd]; !ok || g != gsi {
		return errors.New("not bound") // KVM answers 0 here; the test wants to know
	}
	delete(f.bound, fd)
	delete(f.resample, fd)
	return nil
}

func (f *fakeKVM) Alloc() (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.next
	f.next++
	f.routes[g] = nil
	return g, nil
}

func (f *fakeKVM) SetMSI(gsi uint32, m kvm.MSI) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.routes[gsi]; !ok {
		return errors.New("not allocated")
	}
	f.routes[gsi] = &m
	return nil
}

func (f *fakeKVM) Free(gsi uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.routes, gsi)
	return nil
}

func (f *fakeKVM) isBound(irq *notify.Interrupt) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok := f.bound[irq.Event().FD()]
	return ok && g == irq.GSI()
}

var _ pci.MaskNotifier = (*notify.DirectMSIXVectors)(nil)

// TestInterruptDetachAttach: the same eventfd is unbound and bound again; repeated
// calls make no ioctl; writes while detached are visible to Waiting without being
// consumed; a failed bind leaves it detached; Close unbinds only what is bound.
func TestInterruptDetachAttach(t *testing.T) {
	f := newFakeKVM()
	irq, err := notify.NewInterrupt(f, 20, true)
	require.NoError(t, err)
	require.True(t, irq.Attached())
	require.True(t, f.isBound(irq))
	assert.Equal(t, irq.Resample().FD(), f.resample[irq.Event().FD()])

	fd := irq.Event().FD()
	require.NoError(t, irq.Detach())
	require.NoError(t, irq.Detach())
	assert.False(t, irq.Attached())
	assert.False(t, f.isBound(irq))
	assert.Equal(t, 2, f.calls, "assign, deassign; the second Detach is a no-op")

	w, err := irq.Waiting()
	require.NoError(t, err)
	assert.False(t, w)
	require.NoError(t, irq.Fire())
	require.NoError(t, irq.Fire())
	for range 2 { // polling does not consume
		w, err = irq.Waiting()
		require.NoError(t, err)
		assert.True(t, w)
	}

	f.failBind = true
	assert.Error(t, irq.Attach())
	assert.False(t, irq.Attached())
	f.failBind = false
	require.NoError(t, irq.Attach())
	require.NoError(t, irq.Attach())
	assert.True(t, f.isBound(irq))
	assert.Equal(t, fd, irq.Event().FD(), "same eventfd")
	assert.Equal(t, irq.Resample().FD(), f.resample[fd], "level-triggered again")
	n, err := irq.Event().Read()
	require.NoError(t, err)
	assert.Equal(t, uint64(2), n, "Attach leaves the counter to KVM")

	require.NoError(t, irq.Close())
	assert.Empty(t, f.bound)
}

// TestDirectMSIXVectors: direct vectors start unbound (an interrupt raised before the
// guest unmasks is held, not fired at a GSI without a route); MaskChanged binds and
// unbinds; PendingMSI is the held count while unbound and never asks KVM's counter
// while bound; plain MSIXVectors stay bound and are no MaskNotifier.
func TestDirectMSIXVectors(t *testing.T) {
	f := newFakeKVM()
	d, err := notify.NewDirectMSIXVectors(f, f, 2)
	require.NoError(t, err)
	assert.Empty(t, f.bound, "every vector starts masked")
	assert.Zero(t, f.calls)

	v0 := d.Vector(0)
	require.NoError(t, v0.Event().Signal()) // a host loop raises before the guest is ready
	assert.True(t, d.PendingMSI(0))
	assert.False(t, d.PendingMSI(1))
	assert.False(t, d.PendingMSI(2), "out of range")
	assert.Error(t, d.MaskChanged(2, false))

	require.NoError(t, d.RouteMSI(0, 0xfee0_0000, 0x41))
	require.NoError(t, d.MaskChanged(0, false))
	assert.True(t, f.isBound(v0))
	assert.Equal(t, uint32(0x41), f.routes[v0.GSI()].Data)
	assert.False(t, d.PendingMSI(0), "a bound vector is not pending (KVM owns its counter)")
	require.NoError(t, d.MaskChanged(0, true))
	assert.False(t, f.isBound(v0))
	assert.False(t, d.Vector(1).Attached())

	gsis := []uint32{v0.GSI(), d.Vector(1).GSI()}
	require.NoError(t, d.MaskChanged(1, false))
	require.NoError(t, d.Close())
	assert.Empty(t, f.bound)
	for _, g := range gsis {
		assert.NotContains(t, f.routes, g, "GSI freed")
	}

	plain, err := notify.NewMSIXVectors(f, f, 1)
	require.NoError(t, err)
	assert.True(t, plain.Vector(0).Attached())
	_, isNotifier := any(plain).(pci.MaskNotifier)
	assert.False(t, isNotifier, "virtio's vectors keep MSIX.Fire's masking")
	require.NoError(t, plain.Close())
	assert.Empty(t, f.bound)
}

// TestKVMDirectVectorMask: on KVM, a direct vector routed but masked holds what is
// raised (the guest takes nothing, PendingMSI says so); unmasking injects exactly one
// interrupt; masking and unmasking again with nothing raised injects none.
func TestKVMDirectVectorMask(t *testing.T) {
	const vector = 0x42
	const goAddr, seenAddr uint64 = counterAddr + 0x40, counterAddr + 0x48
	a := micro.New(boot.MicroCodeAddr)
	main := a.NewLabel()
	a.Jmp(main)
	h := a.CountingHandler(counterAddr)
	a.Bind(main)
	a.EnableLAPIC()
	a.Report(micro.ReadyAddr)
	a.SpinUntil(goAddr, 1)
	a.MovImm(micro.RBX, counterAddr) // what the guest has taken while the vector was masked
	a.Load64(micro.RAX, micro.RBX, 0)
	a.MovImm(micro.RBX, seenAddr)
	a.Store64(micro.RBX, 0, micro.RAX)
	a.Report(micro.ReadyAddr)
	a.SpinUntil(counterAddr, 1)
	a.Report(micro.ReadyAddr)
	a.SpinUntil(goAddr, 2)
	a.Report(micro.ReadyAddr) // an exit: anything KVM queued is injected on re-entry
	a.MovImm(micro.RBX, counterAddr)
	a.Load64(micro.RAX, micro.RBX, 0)
	a.Report(micro.DoneAddr)
	a.Halt()
	code, err := a.Assemble()
	require.NoError(t, err)
	g := kvmtest.New(t, kvmtest.Config{Code: code, IRQChip: true,
		Micro: boot.MicroOptions{IF: true, IDT: map[uint8]uint64{vector: a.Addr(h)}}})
	d, err := notify.NewDirectMSIXVectors(g.VM, g.Routing, 1)
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.RouteMSI(0, micro.LAPICBase, vector))
	require.NoError(t, d.Vector(0).Fire(), "raised while masked (a bound irqfd would inject now)")
	require.True(t, d.PendingMSI(0))

	res := g.Start(60 * time.Second)
	ready := func() {
		t.Helper()
		select {
		case <-g.Ready:
		case r := <-res:
			t.Fatalf("guest ended early: %+v", r)
		}
	}
	ready()
	require.NoError(t, g.Mem.Write64(goAddr, 1))
	ready() // the guest noted what it took while the vector was masked
	require.NoError(t, d.MaskChanged(0, false))
	ready() // the guest took the held interrupt
	assert.False(t, d.PendingMSI(0))
	require.NoError(t, d.MaskChanged(0, true)) // waits for KVM's injections in flight
	require.NoError(t, d.MaskChanged(0, false))
	require.NoError(t, d.MaskChanged(0, true))
	assert.False(t, d.PendingMSI(0), "the delivered interrupt is not held again")
	require.NoError(t, g.Mem.Write64(goAddr, 2))
	r := <-res
	require.NoError(t, r.Err)
	assert.Zero(t, g.Uint64(seenAddr), "no interrupt while masked")
	assert.Equal(t, uint32(1), r.Value, "exactly one interrupt for the held one")
}
