package testdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ptvmm/ptvmm/vmm/pci"
)

// Identity and layout.
const (
	VendorID = 0x1af4
	DeviceID = 0x10f0
	Class    = 0xff0000

	Magic = 0x7e57_de01 // RegID value

	BAR0Size = 4096
	BAR2Size = 4096 // MSI-X table at 0, PBA at MSIXPBAOffset
	// MSIXPBAOffset is where the PBA starts in BAR2; the table before it holds at most
	// MaxVectors entries.
	MSIXPBAOffset = 0x800
	MaxVectors    = MSIXPBAOffset / pci.MSIXEntrySize
)

// BAR0 register offsets.
const (
	RegID      = 0x00
	RegScratch = 0x04
	RegRaise   = 0x08
	RegAck     = 0x0c
	RegCount   = 0x10
	RegVectors = 0x14
)

// Config chooses the device's interrupt mode.
type Config struct {
	// Vectors > 0 gives an MSI-X capability with that many vectors (1..MaxVectors) and
	// no INTx pin; 0 gives INTx.
	Vectors int
}

// Stats are the device's counters.
type Stats struct {
	Raised    uint64 // interrupts raised (INTx rising edges requested, MSI-X vectors fired)
	Acked     uint64 // ACK register writes and LowerINTx calls
	Resamples uint64 // INTx resample events (the guest's EOI of the line)
	Errors    uint64 // failed deliveries and RAISE writes naming a vector out of range
}

// Device is the device model. It serves BAR0 as a bus.Device.
//
// Concurrency: all methods may be called from any goroutine (vCPUs call Read and
// Write; the host calls Fire, RaiseINTx and LowerINTx).
type Device struct {
	cfg Config

	mu      sync.Mutex
	fn      *pci.Function
	scratch uint32
	level   bool

	raised, acked, resamples, errs atomic.Uint64
}

// New makes a device; attach it with Spec, pci.Root.Add and Attach (or use Add).
func New(cfg Config) (*Device, error) {
	if cfg.Vectors < 0 || cfg.Vectors > MaxVectors {
		return nil, fmt.Errorf("testdev: %d MSI-X vectors (0 for INTx, 1..%d)", cfg.Vectors, MaxVectors)
	}
	return &Device{cfg: cfg}, nil
}

// Vectors is the number of MSI-X vectors (0 in INTx mode).
func (d *Device) Vectors() int { return d.cfg.Vectors }

// Spec is the PCI function to add for this device. In INTx mode intx is the line
// (router is ignored); in MSI-X mode router backs the vectors (intx is ignored).
func (d *Device) Spec(intx pci.IntxLine, router pci.MSIRouter) pci.Spec {
	s := pci.Spec{VendorID: VendorID, DeviceID: DeviceID, SubVendorID: VendorID, SubsystemID: DeviceID, Class: Class}
	s.BARs[0] = &pci.BAR{Kind: pci.BARMem32, Size: BAR0Size, Device: d}
	if d.cfg.Vectors > 0 {
		s.BARs[2] = &pci.BAR{Kind: pci.BARMem32, Size: BAR2Size}
		s.MSIX = &pci.MSIXSpec{Vectors: d.cfg.Vectors, BAR: 2, TableOffset: 0, PBAOffset: MSIXPBAOffset, Router: router}
	} else {
		s.Intx = intx
	}
	return s
}

// Attach gives the device the function pci.Root.Add returned for its Spec.
func (d *Device) Attach(f *pci.Function) {
	d.mu.Lock()
	d.fn = f
	d.mu.Unlock()
}

func (d *Device) function() *pci.Function {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fn
}

// errNotAttached is returned by the host-side triggers before Attach.
var errNotAttached = errors.New("testdev: not attached to a PCI function")

// Fire delivers MSI-X vector v (or sets its pending bit while it is masked).
func (d *Device) Fire(v int) error {
	if d.cfg.Vectors == 0 {
		return errors.New("testdev: Fire on an INTx device (use RaiseINTx)")
	}
	f := d.function()
	if f == nil {
		return errNotAttached
	}
	d.raised.Add(1)
	if err := f.MSIX().Fire(v); err != nil {
		d.errs.Add(1)
		return fmt.Errorf("testdev: %w", err)
	}
	return nil
}

// RaiseINTx raises the INTx level; it stays up until the guest writes ACK or the host
// calls LowerINTx.
func (d *Device) RaiseINTx() error {
	if d.cfg.Vectors > 0 {
		return errors.New("testdev: RaiseINTx on an MSI-X device (use Fire)")
	}
	f := d.function()
	if f == nil {
		return errNotAttached
	}
	d.mu.Lock()
	d.level = true
	d.mu.Unlock()
	d.raised.Add(1)
	if err := f.SetIntx(true); err != nil {
		d.errs.Add(1)
		return fmt.Errorf("testdev: %w", err)
	}
	return nil
}

// LowerINTx drops the INTx level.
func (d *Device) LowerINTx() error {
	f := d.function()
	if f == nil {
		return errNotAttached
	}
	d.mu.Lock()
	d.level = false
	d.mu.Unlock()
	d.acked.Add(1)
	if d.cfg.Vectors > 0 {
		return nil
	}
	if err := f.SetIntx(false); err != nil {
		d.errs.Add(1)
		return fmt.Errorf("testdev: %w", err)
	}
	return nil
}

// Resampled is called when the interrupt controller signalled the INTx resample
// eventfd (the guest's EOI): it counts the event and lets the function re-assert the
// line if the level is still up and INTx is not disabled.
func (d *Device) Resampled() { d.resampled(1) }

// resampled counts n coalesced resample events (one eventfd read).
func (d *Device) resampled(n uint64) {
	d.resamples.Add(n)
	if f := d.function(); f != nil {
		if err := f.Resample(); err != nil {
			d.errs.Add(1)
		}
	}
}

// Stats returns the counters.
func (d *Device) Stats() Stats {
	return Stats{Raised: d.raised.Load(), Acked: d.acked.Load(), Resamples: d.resamples.Load(), Errors: d.errs.Load()}
}

// Read serves a BAR0 read (bus.Device).
func (d *Device) Read(off uint64, data []byte) {
	clear(data)
	if len(data) != 4 || off%4 != 0 {
		return
	}
	var v uint32
	switch off {
	case RegID:
		v = Magic
	case RegScratch:
		d.mu.Lock()
		v = d.scratch
		d.mu.Unlock()
	case RegAck:
		d.mu.Lock()
		if d.level {
			v = 1
		}
		d.mu.Unlock()
	case RegCount:
		v = uint32(d.raised.Load())
	case RegVectors:
		v = uint32(d.cfg.Vectors)
	}
	binary.LittleEndian.PutUint32(data, v)
}

// Write serves a BAR0 write (bus.Device). Guest values are checked: a RAISE naming a
// vector the device does not have is counted as an error and dropped.
func (d *Device) Write(off uint64, data []byte) {
	if len(data) != 4 || off%4 != 0 {
		return
	}
	v := binary.LittleEndian.Uint32(data)
	switch off {
	case RegScratch:
		d.mu.Lock()
		d.scratch = v
		d.mu.Unlock()
	case RegRaise:
		if d.cfg.Vectors > 0 {
			if v >= uint32(d.cfg.Vectors) {
				d.errs.Add(1)
				return
			}
			_ = d.Fire(int(v)) // counted in errs on failure
			return
		}
		_ = d.RaiseINTx()
	case RegAck:
		_ = d.LowerINTx()
	}
}
