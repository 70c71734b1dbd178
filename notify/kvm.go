package notify

import (
	"errors"
	"fmt"
	"sync"

	"github.com/ptvmm/ptvmm/vmm/kvm"
	"golang.org/x/sys/unix"
)

// Doorbell is an eventfd that KVM signals when the guest writes a PIO or MMIO address
// (an ioeventfd). The write never reaches the VMM: a Worker waiting on Event() sees it.
//
// Concurrency: Move and Close must not race with each other; Event may be read any time.
type Doorbell struct {
	vm    *kvm.VM
	ev    *EventFD
	io    kvm.IOEvent
	bound bool
}

// DoorbellSpec is where a doorbell sits.
type DoorbellSpec struct {
	Addr uint64
	Len  uint32 // 1, 2, 4, 8 (0: any width, MMIO only)
	PIO  bool
	// DataMatch restricts the doorbell to writes of Data (several doorbells may then
	// share one address, e.g. one per queue index).
	DataMatch bool
	Data      uint64
}

// NewDoorbell creates the eventfd and registers it with KVM.
func NewDoorbell(vm *kvm.VM, s DoorbellSpec) (*Doorbell, error) {
	ev, err := NewEventFD()
	if err != nil {
		return nil, err
	}
	d := &Doorbell{vm: vm, ev: ev, io: kvm.IOEvent{Addr: s.Addr, Len: s.Len, PIO: s.PIO, DataMatch: s.DataMatch, Data: s.Data, FD: ev.FD()}}
	if err := vm.AssignIOEventFD(d.io); err != nil {
		ev.Close()
		return nil, fmt.Errorf("notify: doorbell: %w", err)
	}
	d.bound = true
	return d, nil
}

// Event is the eventfd to wait on (add it to a Worker).
func (d *Doorbell) Event() *EventFD { return d.ev }

// Addr is the address the doorbell currently listens on.
func (d *Doorbell) Addr() uint64 { return d.io.Addr }

// Move re-registers the doorbell at addr (its BAR moved), or unregisters it when
// enabled is false (decoding turned off). The eventfd stays the same, so a Worker
// keeps waiting on it undisturbed.
func (d *Doorbell) Move(addr uint64, enabled bool) error {
	if d.bound {
		if err := d.vm.DeassignIOEventFD(d.io); err != nil {
			return fmt.Errorf("notify: doorbell move: %w", err)
		}
		d.bound = false
	}
	d.io.Addr = addr
	if !enabled {
		return nil
	}
	if err := d.vm.AssignIOEventFD(d.io); err != nil {
		return fmt.Errorf("notify: doorbell move: %w", err)
	}
	d.bound = true
	return nil
}

// Close unregisters the doorbell and closes its eventfd.
func (d *Doorbell) Close() error {
	var err error
	if d.bound {
		err = d.vm.DeassignIOEventFD(d.io)
		d.bound = false
	}
	return errors.Join(err, d.ev.Close())
}

// IRQFDs binds eventfds to GSIs (KVM_IRQFD); *kvm.VM is one.
type IRQFDs interface {
	AssignIRQFD(fd int, gsi uint32, resampleFD int) error
	DeassignIRQFD(fd int, gsi uint32) error
}

// MSIRoutes hands out GSIs and routes them to MSI messages; *kvm.GSIRouting is one.
type MSIRoutes interface {
	Alloc() (uint32, error)
	SetMSI(gsi uint32, m kvm.MSI) error
	Free(gsi uint32) error
}

// Interrupt is an eventfd that KVM turns into a guest interrupt on a GSI (an irqfd):
// an IOAPIC pin, or an MSI route (see MSIXVectors). It can be detached from KVM and
// attached again with the same eventfd, which is how a masked MSI-X vector holds
// what its raisers write (see DirectMSIXVectors).
//
// Concurrency: Fire, Event and Waiting may be called from any goroutine; Attach,
// Detach and Attached too (they serialise); Close must not race with any of them.
type Interrupt struct {
	vm       IRQFDs
	gsi      uint32
	ev       *EventFD
	resample *EventFD

	mu       sync.Mutex
	attached bool
}

// NewInterrupt binds a new eventfd to gsi. level makes it level-triggered with a
// resample eventfd (INTx): the line stays asserted until the guest's EOI, then
// Resample() becomes readable and the device decides whether to fire again.
func NewInterrupt(vm IRQFDs, gsi uint32, level bool) (*Interrupt, error) {
	return newInterrupt(vm, gsi, level, true)
}

func newInterrupt(vm IRQFDs, gsi uint32, level, attach bool) (*Interrupt, error) {
	ev, err := NewEventFD()
	if err != nil {
		return nil, err
	}
	i := &Interrupt{vm: vm, gsi: gsi, ev: ev}
	if level {
		if i.resample, err = NewEventFD(); err != nil {
			ev.Close()
			return nil, err
		}
	}
	if attach {
		if err := i.Attach(); err != nil {
			ev.Close()
			if i.resample != nil {
				i.resample.Close()
			}
			return nil, fmt.Errorf("notify: interrupt: %w", err)
		}
	}
	return i, nil
}

// GSI is the interrupt's GSI.
func (i *Interrupt) GSI() uint32 { return i.gsi }

// Fire injects the interrupt (asserts the line, for level-triggered ones); while the
// interrupt is detached it is held in the eventfd's counter instead.
func (i *Interrupt) Fire() error { return i.ev.Signal() }

// Trigger is Fire; it makes an Interrupt usable as a pci.IntxLine.
func (i *Interrupt) Trigger() error { return i.ev.Signal() }

// Event is the irqfd's eventfd: a write to it raises the interrupt inside KVM, so a
// host loop (the ptnet kloop) may be handed it directly. The Interrupt owns it.
func (i *Interrupt) Event() *EventFD { return i.ev }

// Resample is the eventfd KVM signals at the guest's EOI of a level-triggered
// interrupt; nil for edge-triggered ones.
func (i *Interrupt) Resample() *EventFD { return i.resample }

// Attach binds the eventfd to the GSI (KVM_IRQFD); a no-op when attached. If the
// eventfd was written while detached, KVM injects the interrupt once at once:
// kvm_irqfd_assign (virt/kvm/eventfd.c) polls the eventfd after hooking its wait
// queue and, on EPOLLIN, schedules irqfd->inject ("Check if there was an event
// already pending on the eventfd before we registered"). That is what makes detaching
// a mask: nothing written meanwhile is lost.
func (i *Interrupt) Attach() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.attached {
		return nil
	}
	rfd := -1
	if i.resample != nil {
		rfd = i.resample.FD()
	}
	if err := i.vm.AssignIRQFD(i.ev.FD(), i.gsi, rfd); err != nil {
		return fmt.Errorf("notify: attach irqfd on GSI %d: %w", i.gsi, err)
	}
	i.attached = true
	return nil
}

// Detach unbinds the eventfd from the GSI (KVM_IRQFD_FLAG_DEASSIGN); a no-op when
// detached. When it returns, KVM injects nothing more for it and writes to the eventfd
// accumulate in its counter until Attach. KVM never reads an attached irqfd's counter
// (irqfd_wakeup only schedules the injection), but its shutdown, which the deassign
// ioctl waits for, resets it (irqfd_shutdown: eventfd_ctx_remove_wait_queue reads it),
// so a detached counter holds only interrupts raised since the detach.
func (i *Interrupt) Detach() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.attached {
		return nil
	}
	if err := i.vm.DeassignIRQFD(i.ev.FD(), i.gsi); err != nil {
		return fmt.Errorf("notify: detach irqfd on GSI %d: %w", i.gsi, err)
	}
	i.attached = false
	return nil
}

// Attached reports whether the eventfd is bound to the GSI.
func (i *Interrupt) Attached() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.attached
}

// Waiting reports whether the eventfd's counter is non-zero, without consuming it.
// Only meaningful while detached: it is then an interrupt raised and not delivered.
func (i *Interrupt) Waiting() (bool, error) {
	fds := []unix.PollFd{{Fd: int32(i.ev.FD()), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("notify: poll interrupt eventfd: %w", err)
		}
		return n > 0 && fds[0].Revents&unix.POLLIN != 0, nil
	}
}

// Close unbinds the irqfd (if attached) and closes the eventfds.
func (i *Interrupt) Close() error {
	err := i.Detach()
	err = errors.Join(err, i.ev.Close())
	if i.resample != nil {
		err = errors.Join(err, i.resample.Close())
	}
	return err
}

// MSIXVectors backs a device's MSI-X vectors with one GSI route and one irqfd each. It
// implements pci.MSIRouter for devices that raise their vectors through pci.MSIX.Fire,
// which holds masked vectors in the PBA itself; the irqfds stay attached.
//
// Concurrency: RouteMSI, FireMSI and Vector may be called from any goroutine; Close
// must not race with them (stop the device's workers first).
type MSIXVectors struct {
	routes MSIRoutes
	mu     sync.Mutex
	irqs   []*Interrupt
}

// NewMSIXVectors allocates n GSIs from routes and binds an irqfd to each. The vectors
// deliver nothing until RouteMSI gives them a message.
func NewMSIXVectors(vm IRQFDs, routes MSIRoutes, n int) (*MSIXVectors, error) {
	return newMSIXVectors(vm, routes, n, true)
}

func newMSIXVectors(vm IRQFDs, routes MSIRoutes, n int, attach bool) (*MSIXVectors, error) {
	m := &MSIXVectors{routes: routes}
	for v := 0; v < n; v++ {
		gsi, err := routes.Alloc()
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("notify: MSI-X vector %d: %w", v, err)
		}
		irq, err := newInterrupt(vm, gsi, false, attach)
		if err != nil {
			_ = routes.Free(gsi)
			m.Close()
			return nil, fmt.Errorf("notify: MSI-X vector %d: %w", v, err)
		}
		m.irqs = append(m.irqs, irq)
	}
	return m, nil
}

// Vector returns vector v's Interrupt (for a Worker to Raise), or nil.
func (m *MSIXVectors) Vector(v int) *Interrupt {
	if v < 0 || v >= len(m.irqs) {
		return nil
	}
	return m.irqs[v]
}

// RouteMSI points vector v's GSI at the message.
func (m *MSIXVectors) RouteMSI(v int, addr uint64, data uint32) error {
	irq := m.Vector(v)
	if irq == nil {
		return fmt.Errorf("notify: MSI-X vector %d out of range", v)
	}
	return m.routes.SetMSI(irq.gsi, kvm.MSI{Addr: addr, Data: data})
}

// FireMSI signals vector v's irqfd.
func (m *MSIXVectors) FireMSI(v int) error {
	irq := m.Vector(v)
	if irq == nil {
		return fmt.Errorf("notify: MSI-X vector %d out of range", v)
	}
	return irq.Fire()
}

// Close unbinds every vector and frees its GSI.
func (m *MSIXVectors) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var err error
	for _, irq := range m.irqs {
		err = errors.Join(err, irq.Close(), m.routes.Free(irq.gsi))
	}
	m.irqs = nil
	return err
}

// DirectMSIXVectors are MSI-X vectors whose irqfds are written directly, not through
// pci.MSIX.Fire: a host loop holds Vector(v).Event(). MSIX cannot hold such an
// interrupt in its PBA, so the mask is applied at the irqfd, as QEMU does with its
// MSI-X mask notifiers: the irqfd is attached only while the guest has the vector
// unmasked and routed, and detached otherwise, so what is raised meanwhile waits in
// the eventfd and is injected once when the vector is unmasked (see
// Interrupt.Attach). It implements pci.MaskNotifier (MaskChanged, PendingMSI) on top
// of MSIXVectors' pci.MSIRouter.
//
// Concurrency: as MSIXVectors; MaskChanged and PendingMSI may be called from any
// goroutine.
type DirectMSIXVectors struct {
	*MSIXVectors
}

// NewDirectMSIXVectors allocates n GSIs and eventfds, none bound yet: every vector
// starts masked, so an interrupt raised before the guest first programs and unmasks
// its vector is held rather than lost on a GSI without a route.
func NewDirectMSIXVectors(vm IRQFDs, routes MSIRoutes, n int) (*DirectMSIXVectors, error) {
	m, err := newMSIXVectors(vm, routes, n, false)
	if err != nil {
		return nil, err
	}
	return &DirectMSIXVectors{m}, nil
}

// MaskChanged detaches vector v's irqfd when masked, attaches it (delivering what is
// held, once) when unmasked. pci.MSIX calls it after routing v, so the injection at
// attach goes to the current message.
func (d *DirectMSIXVectors) MaskChanged(v int, masked bool) error {
	irq := d.Vector(v)
	if irq == nil {
		return fmt.Errorf("notify: MSI-X vector %d out of range", v)
	}
	if masked {
		return irq.Detach()
	}
	return irq.Attach()
}

// PendingMSI reports whether masked vector v holds an interrupt (its detached
// eventfd's counter is non-zero); false for an attached or unknown vector, or when
// the eventfd cannot be polled.
func (d *DirectMSIXVectors) PendingMSI(v int) bool {
	irq := d.Vector(v)
	if irq == nil || irq.Attached() {
		return false
	}
	w, err := irq.Waiting()
	return err == nil && w
}
