package notify

import (
	"errors"
	"fmt"
	"sync"

	"github.com/ptvmm/ptvmm/vmm/kvm"
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

// Interrupt is an eventfd that KVM turns into a guest interrupt on a GSI (an irqfd):
// an IOAPIC pin, or an MSI route (see MSIXVectors).
//
// Concurrency: Fire may be called from any goroutine.
type Interrupt struct {
	vm       *kvm.VM
	gsi      uint32
	ev       *EventFD
	resample *EventFD
}

// NewInterrupt binds a new eventfd to gsi. level makes it level-triggered with a
// resample eventfd (INTx): the line stays asserted until the guest's EOI, then
// Resample() becomes readable and the device decides whether to fire again.
func NewInterrupt(vm *kvm.VM, gsi uint32, level bool) (*Interrupt, error) {
	ev, err := NewEventFD()
	if err != nil {
		return nil, err
	}
	i := &Interrupt{vm: vm, gsi: gsi, ev: ev}
	rfd := -1
	if level {
		if i.resample, err = NewEventFD(); err != nil {
			ev.Close()
			return nil, err
		}
		rfd = i.resample.FD()
	}
	if err := vm.AssignIRQFD(ev.FD(), gsi, rfd); err != nil {
		ev.Close()
		if i.resample != nil {
			i.resample.Close()
		}
		return nil, fmt.Errorf("notify: interrupt: %w", err)
	}
	return i, nil
}

// GSI is the interrupt's GSI.
func (i *Interrupt) GSI() uint32 { return i.gsi }

// Fire injects the interrupt (asserts the line, for level-triggered ones).
func (i *Interrupt) Fire() error { return i.ev.Signal() }

// Trigger is Fire; it makes an Interrupt usable as a pci.IntxLine.
func (i *Interrupt) Trigger() error { return i.ev.Signal() }

// Event is the irqfd's eventfd: a write to it raises the interrupt inside KVM, so a
// host loop (the ptnet kloop) may be handed it directly. The Interrupt owns it.
func (i *Interrupt) Event() *EventFD { return i.ev }

// Resample is the eventfd KVM signals at the guest's EOI of a level-triggered
// interrupt; nil for edge-triggered ones.
func (i *Interrupt) Resample() *EventFD { return i.resample }

// Close unbinds the irqfd and closes the eventfds.
func (i *Interrupt) Close() error {
	err := i.vm.DeassignIRQFD(i.ev.FD(), i.gsi)
	err = errors.Join(err, i.ev.Close())
	if i.resample != nil {
		err = errors.Join(err, i.resample.Close())
	}
	return err
}

// MSIXVectors backs a device's MSI-X vectors with one GSI route and one irqfd each. It
// implements pci.MSIRouter.
//
// Concurrency: RouteMSI, FireMSI and Vector may be called from any goroutine; Close
// must not race with them (stop the device's workers first).
type MSIXVectors struct {
	routes *kvm.GSIRouting
	mu     sync.Mutex
	irqs   []*Interrupt
}

// NewMSIXVectors allocates n GSIs from routes and binds an irqfd to each. The vectors
// deliver nothing until RouteMSI gives them a message.
func NewMSIXVectors(vm *kvm.VM, routes *kvm.GSIRouting, n int) (*MSIXVectors, error) {
	m := &MSIXVectors{routes: routes}
	for v := 0; v < n; v++ {
		gsi, err := routes.Alloc()
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("notify: MSI-X vector %d: %w", v, err)
		}
		irq, err := NewInterrupt(vm, gsi, false)
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
