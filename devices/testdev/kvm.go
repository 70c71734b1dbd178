package testdev

import (
	"errors"
	"fmt"

	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/kvm"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// Machine is what Add needs from a VM; *vmm.VM has these methods.
type Machine interface {
	KVM() *kvm.VM
	GSIRouting() *kvm.GSIRouting
	PCI() *pci.Root
}

// Plugged is a device added to a KVM machine with its interrupt plumbing: a
// level-triggered irqfd with a resample worker (INTx) or one irqfd per MSI-X vector.
type Plugged struct {
	*Device
	Function *pci.Function

	root *pci.Root
	intx *notify.Intx
	msix *notify.MSIXVectors
}

// Add creates a device and plugs it into slot (0: the first free one) of m's PCI
// bus. Call it after vmm.New and before Run; Close it before the VM (its irqfds live
// on the VM fd), e.g. from vm.OnClose.
func Add(m Machine, slot int, cfg Config) (_ *Plugged, err error) {
	d, err := New(cfg)
	if err != nil {
		return nil, err
	}
	root := m.PCI()
	if slot == 0 {
		if slot, err = root.FreeSlot(); err != nil {
			return nil, fmt.Errorf("testdev: %w", err)
		}
	}
	p := &Plugged{Device: d, root: root}
	defer func() {
		if err != nil {
			_ = p.Close()
		}
	}()
	if cfg.Vectors > 0 {
		if p.msix, err = notify.NewMSIXVectors(m.KVM(), m.GSIRouting(), cfg.Vectors); err != nil {
			return nil, fmt.Errorf("testdev: %w", err)
		}
	} else if p.intx, err = notify.NewIntx(m.KVM(), pci.IntxGSI(slot), fmt.Sprintf("testdev%02x-intx", slot)); err != nil {
		return nil, fmt.Errorf("testdev: %w", err)
	}
	var line pci.IntxLine
	if p.intx != nil {
		line = p.intx
	}
	var router pci.MSIRouter
	if p.msix != nil {
		router = p.msix
	}
	if p.Function, err = root.Add(slot, d.Spec(line, router)); err != nil {
		return nil, fmt.Errorf("testdev: %w", err)
	}
	d.Attach(p.Function)
	if p.intx != nil {
		if err = p.intx.OnEOI(d.resampled); err != nil {
			return nil, fmt.Errorf("testdev: %w", err)
		}
	}
	return p, nil
}

// Close unplugs the device and releases its interrupts. Safe to call more than
// once; call it after Run returned (no vCPU may be using the device).
func (p *Plugged) Close() error {
	var err error
	if p.Function != nil {
		p.root.Remove(p.Function.Slot())
		p.Function = nil
	}
	if p.intx != nil {
		err = errors.Join(err, p.intx.Close())
		p.intx = nil
	}
	if p.msix != nil {
		err = errors.Join(err, p.msix.Close())
		p.msix = nil
	}
	return err
}
