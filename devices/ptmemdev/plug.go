package ptmemdev

import (
	"errors"
	"fmt"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/kvm"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// Machine is what the Plug functions need from a VM; *vmm.VM has these methods.
type Machine interface {
	KVM() *kvm.VM
	GSIRouting() *kvm.GSIRouting
	PCI() *pci.Root
	Memory() *memory.Memory
}

// PluggedMemdev is a memdev on a machine's PCI bus.
//
// Concurrency: Close once, after the vCPUs stopped using the device.
type PluggedMemdev struct {
	*Memdev
	Function *pci.Function
	root     *pci.Root
}

// PlugMemdev maps r and adds its memdev in slot (0: the first free one). The root
// must have a MemoryMapper (BAR1 is a memslot).
func PlugMemdev(m Machine, slot int, r *netmap.Region) (*PluggedMemdev, error) {
	md, err := NewMemdev(r)
	if err != nil {
		return nil, err
	}
	return plugMemdev(m, slot, md)
}

// PlugMemdevFD is PlugMemdev for a region in another process (NewMemdevFD).
func PlugMemdevFD(m Machine, slot int, fd int, info netmap.PoolsInfo, mapSize uint64) (*PluggedMemdev, error) {
	md, err := NewMemdevFD(fd, info, mapSize)
	if err != nil {
		return nil, err
	}
	return plugMemdev(m, slot, md)
}

func plugMemdev(m Machine, slot int, md *Memdev) (_ *PluggedMemdev, err error) {
	p := &PluggedMemdev{Memdev: md, root: m.PCI()}
	defer func() {
		if err != nil {
			_ = p.Close()
		}
	}()
	if slot == 0 {
		if slot, err = p.root.FreeSlot(); err != nil {
			return nil, fmt.Errorf("ptmemdev: memdev: %w", err)
		}
	}
	if p.Function, err = p.root.Add(slot, md.Spec()); err != nil {
		return nil, fmt.Errorf("ptmemdev: memdev for region %d: %w", md.MemID(), err)
	}
	return p, nil
}

// Close removes the function (deleting BAR1's memslot) and unmaps the region.
func (p *PluggedMemdev) Close() error {
	if p.Function != nil {
		p.root.Remove(p.Function.Slot())
		p.Function = nil
	}
	return p.Memdev.Close()
}

// msixVectors gives notify.DirectMSIXVectors the Vectors interface. The host loop
// writes the irqfds itself, so the vectors are direct ones: vmm/pci finds their
// pci.MaskNotifier through the Router and an irqfd is bound to KVM only while the
// guest has its vector unmasked; what the loop raises meanwhile waits in the eventfd,
// shows in the PBA and is injected once on unmask.
type msixVectors struct{ *notify.DirectMSIXVectors }

var _ pci.MaskNotifier = msixVectors{}

func (v msixVectors) Event(i int) *notify.EventFD {
	if irq := v.Vector(i); irq != nil {
		return irq.Event()
	}
	return nil
}

// PluggedPtnet is a ptnet on a machine's PCI bus with its KVM plumbing: one ioeventfd
// per KICK register, one MSI route and irqfd per ring (bound while its vector is
// unmasked).
//
// Concurrency: as Ptnet; Close once, after the vCPUs stopped using the device.
type PluggedPtnet struct {
	*Ptnet
	Function *pci.Function
	root     *pci.Root
	vectors  *notify.DirectMSIXVectors
}

// PlugPtnet makes a ptnet from cfg and adds it in slot (0: the first free one).
// cfg.Mem, cfg.Bells and cfg.Vectors are taken from m. The memdev for the port's
// region is plugged separately (PlugMemdev), once per region.
func PlugPtnet(m Machine, slot int, cfg Config) (_ *PluggedPtnet, err error) {
	g, err := cfg.geometry()
	if err != nil {
		return nil, err
	}
	p := &PluggedPtnet{root: m.PCI()}
	defer func() {
		if err != nil {
			_ = p.Close()
		}
	}()
	n := g.TxRings + g.RxRings
	if n < 2 || n > MaxRings {
		return nil, fmt.Errorf("ptmemdev: ptnet: port %q has %d rings (2..%d)", g.Name, n, MaxRings)
	}
	if p.vectors, err = notify.NewDirectMSIXVectors(m.KVM(), m.GSIRouting(), n); err != nil {
		return nil, fmt.Errorf("ptmemdev: ptnet: %w", err)
	}
	vm := m.KVM()
	cfg.Mem, cfg.Vectors = m.Memory(), msixVectors{p.vectors}
	cfg.Bells = func(s notify.DoorbellSpec) (Bell, error) { return notify.NewDoorbell(vm, s) }
	if p.Ptnet, err = NewPtnet(cfg); err != nil {
		return nil, err
	}
	if slot == 0 {
		if slot, err = p.root.FreeSlot(); err != nil {
			return nil, fmt.Errorf("ptmemdev: ptnet: %w", err)
		}
	}
	if p.Function, err = p.root.Add(slot, p.Ptnet.Spec()); err != nil {
		return nil, fmt.Errorf("ptmemdev: ptnet: %w", err)
	}
	if err = p.Ptnet.Attach(p.Function); err != nil {
		return nil, err
	}
	return p, nil
}

// Close removes the function, stops the host loop, and releases doorbells and vectors
// (in that order: the loop writes the vectors' eventfds until it stops).
func (p *PluggedPtnet) Close() error {
	var err error
	if p.Function != nil {
		p.root.Remove(p.Function.Slot())
		p.Function = nil
	}
	if p.Ptnet != nil {
		err = p.Ptnet.Close()
	}
	if p.vectors != nil {
		err = errors.Join(err, p.vectors.Close())
		p.vectors = nil
	}
	return err
}
