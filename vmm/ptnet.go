package vmm

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/devices/ptmemdev"
	"github.com/ptvmm/ptvmm/notify"
)

// PtnetNIC describes a netmap passthrough NIC: a ptnet device on Port and the memdev
// that puts Port's memory region in the guest (one memdev per region, shared by every
// ptnet whose port lives in it).
type PtnetNIC struct {
	// Port is the netmap port passed through (a switch port, a pipe end); its HW TX
	// and RX rings (1..32 in all) are the guest's. The device does not close it: see
	// Release.
	Port *netmap.Port
	// MAC is the guest's address; zero picks DefaultMAC(index).
	MAC [6]byte
	// Slot and MemdevSlot are PCI slots (1..31), or 0 for the first free one.
	// MemdevSlot applies only when this NIC creates its region's memdev.
	MemdevSlot, Slot int
	// VnetHdr says the port's peers expect a 12-byte virtio-net header on every frame:
	// the guest may then set VNET_HDR_LEN 12.
	VnetHdr bool
	// Mode and Spin choose how the port's host loop waits (notify.Block by default).
	Mode notify.Mode
	Spin time.Duration
	// Release, if set, runs once after the device closed (its host loop stopped), e.g.
	// to detach the switch port. It does not run when AddPtnet fails.
	Release func() error
}

// PtnetDevice is a ptnet NIC added to a VM, with its region's memdev.
type PtnetDevice struct {
	Ptnet  *ptmemdev.PluggedPtnet
	Memdev *ptmemdev.PluggedMemdev

	memdevs *memdevTable
	release func() error
	once    sync.Once
}

// ptnetMemdevs is the per-VM map region ID -> memdev (a VM struct field would do, but
// vm.go stays free of device bookkeeping, as with routingTables).
var ptnetMemdevs sync.Map // *VM -> *memdevTable

type memdevTable struct {
	mu   sync.Mutex
	devs map[uint16]*memdevRef
}

type memdevRef struct {
	dev  *ptmemdev.PluggedMemdev
	refs int
}

func (v *VM) memdevs() *memdevTable {
	if t, ok := ptnetMemdevs.Load(v); ok {
		return t.(*memdevTable)
	}
	t, loaded := ptnetMemdevs.LoadOrStore(v, &memdevTable{devs: map[uint16]*memdevRef{}})
	if !loaded {
		v.OnClose(func() error { ptnetMemdevs.Delete(v); return nil })
	}
	return t.(*memdevTable)
}

// acquire returns the memdev of r, plugging it into slot when it is the first.
func (t *memdevTable) acquire(v *VM, slot int, r *netmap.Region) (*ptmemdev.PluggedMemdev, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.devs[r.ID()]; m != nil {
		if slot != 0 && m.dev.Function.Slot() != slot {
			return nil, fmt.Errorf("memory region %d already has its memdev in slot %d, not %d", r.ID(), m.dev.Function.Slot(), slot)
		}
		m.refs++
		return m.dev, nil
	}
	if slot != 0 && (slot < 1 || slot > 31 || v.pci.Function(slot) != nil) {
		return nil, fmt.Errorf("memdev: PCI slot %d is taken or invalid (1..31)", slot)
	}
	md, err := ptmemdev.PlugMemdev(v, slot, r)
	if err != nil {
		return nil, err
	}
	t.devs[r.ID()] = &memdevRef{dev: md, refs: 1}
	return md, nil
}

// release drops a reference; the last one unplugs the memdev.
func (t *memdevTable) release(md *ptmemdev.PluggedMemdev) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	id := md.MemID()
	m := t.devs[id]
	if m == nil || m.dev != md {
		return nil
	}
	if m.refs--; m.refs > 0 {
		return nil
	}
	delete(t.devs, id)
	return md.Close()
}

// AddPtnet adds a ptnet NIC for n.Port and, unless the port's region already has one
// in this VM, the region's memdev. index numbers the VM's NICs (for the default MAC
// and names). Call it after New, before Run, from the goroutine that calls New and
// Close; VM.Close closes the device if the caller has not.
func (v *VM) AddPtnet(index int, n PtnetNIC) (_ *PtnetDevice, err error) {
	if n.Port == nil {
		return nil, fmt.Errorf("vmm: ptnet %d: no netmap port", index)
	}
	if n.MAC == [6]byte{} {
		n.MAC = DefaultMAC(index)
	}
	pd := &PtnetDevice{memdevs: v.memdevs()}
	defer func() {
		if err != nil {
			pd.Close()
		}
	}()
	slot := n.Slot
	if slot != 0 && (slot < 1 || slot > 31 || v.pci.Function(slot) != nil) {
		return nil, fmt.Errorf("vmm: ptnet %d: PCI slot %d is taken or invalid (1..31)", index, slot)
	}
	if slot != 0 && slot == n.MemdevSlot {
		return nil, fmt.Errorf("vmm: ptnet %d: ptnet and memdev both asked for slot %d", index, slot)
	}
	if pd.Memdev, err = pd.memdevs.acquire(v, n.MemdevSlot, n.Port.Region()); err != nil {
		return nil, fmt.Errorf("vmm: ptnet %d: %w", index, err)
	}
	name := fmt.Sprintf("ptnet%d", index)
	logf := func(format string, args ...any) { v.log.Warn(fmt.Sprintf(format, args...), "nic", name) }
	if pd.Ptnet, err = ptmemdev.PlugPtnet(v, slot, ptmemdev.Config{
		Name: name, Port: n.Port, MAC: n.MAC, VnetHdr: n.VnetHdr, Mode: n.Mode, Spin: n.Spin, Logf: logf,
	}); err != nil {
		return nil, fmt.Errorf("vmm: ptnet %d: %w", index, err)
	}
	// Closed with the VM at the latest, while its fd can still deassign the doorbells
	// and irqfds and before guest RAM (the CSB) goes away.
	pd.release = n.Release
	v.OnClose(pd.Close)
	v.log.Debug("ptnet added", "index", index, "port", n.Port.Name(), "slot", pd.Ptnet.Function.Slot(),
		"memdev_slot", pd.Memdev.Function.Slot(), "mem_id", pd.Memdev.MemID(), "rings", pd.Ptnet.NumRings(),
		"mac", fmt.Sprintf("%x", n.MAC))
	return pd, nil
}

// Close unplugs the ptnet (stopping its host loop), drops its memdev reference (the
// last unplugs the memdev) and then runs PtnetNIC.Release. Safe to call more than
// once.
func (pd *PtnetDevice) Close() error {
	var err error
	pd.once.Do(func() {
		if pd.Ptnet != nil {
			err = pd.Ptnet.Close()
		}
		if pd.Memdev != nil {
			err = errors.Join(err, pd.memdevs.release(pd.Memdev))
		}
		if pd.release != nil {
			err = errors.Join(err, pd.release())
		}
	})
	return err
}
