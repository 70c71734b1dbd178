package notify

import (
	"errors"
	"fmt"
)

// Intx is a PCI function's INTx wire into KVM: a level-triggered irqfd on the pin's
// GSI (pci.IntxGSI) and a Worker that runs the device's EOI handler when KVM
// de-asserts the line at the guest's EOI and signals the resample eventfd; the
// device then re-asserts it if its level is still up. It implements pci.IntxLine.
//
// Concurrency: Trigger from any goroutine; OnEOI once, after the function exists;
// Close once, after the vCPUs stopped.
type Intx struct {
	*Interrupt
	name string
	w    *Worker
}

// NewIntx binds a level-triggered irqfd to gsi. name labels the EOI worker.
func NewIntx(vm IRQFDs, gsi uint32, name string) (*Intx, error) {
	irq, err := NewInterrupt(vm, gsi, true)
	if err != nil {
		return nil, fmt.Errorf("notify: %s: %w", name, err)
	}
	return &Intx{Interrupt: irq, name: name}, nil
}

// OnEOI starts the worker that calls eoi (with the number of EOIs since its last
// call) after the guest acknowledges the interrupt.
func (x *Intx) OnEOI(eoi func(count uint64)) error {
	if x.w != nil {
		return fmt.Errorf("notify: %s: OnEOI called twice", x.name)
	}
	w, err := NewWorker(Config{Name: x.name, Handler: func(_ int, n uint64) { eoi(n) }})
	if err != nil {
		return err
	}
	if _, err := w.Add(x.Resample()); err != nil {
		_ = w.Stop()
		return err
	}
	w.Start()
	x.w = w
	return nil
}

// Close stops the EOI worker and unbinds the irqfd.
func (x *Intx) Close() error {
	var err error
	if x.w != nil {
		err = x.w.Stop()
		x.w = nil
	}
	return errors.Join(err, x.Interrupt.Close())
}
