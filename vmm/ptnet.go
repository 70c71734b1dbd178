package vmm

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/vale"
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
	// Remote, instead of Port, is a port attached in a switch service: its region
	// memfd becomes the memdev's BAR, and PTCTL CREATE/DELETE start and stop its
	// host loop in the service (START with the CSB's guest-RAM memfd and offsets,
	// STOP). Guest RAM must be memfd-backed. The device does not detach it.
	Remote *vale.RemotePort
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

// acquire returns the memdev of region id, plugging it into slot (with plug) when
// it is the first.
func (t *memdevTable) acquire(v *VM, slot int, id uint16, plug func(slot int) (*ptmemdev.PluggedMemdev, error)) (*ptmemdev.PluggedMemdev, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.devs[id]; m != nil {
		if slot != 0 && m.dev.Function.Slot() != slot {
			return nil, fmt.Errorf("memory region %d already has its memdev in slot %d, not %d", id, m.dev.Function.Slot(), slot)
		}
		m.refs++
		return m.dev, nil
	}
	if slot != 0 && (slot < 1 || slot > 31 || v.pci.Function(slot) != nil) {
		return nil, fmt.Errorf("memdev: PCI slot %d is taken or invalid (1..31)", slot)
	}
	md, err := plug(slot)
	if err != nil {
		return nil, err
	}
	t.devs[id] = &memdevRef{dev: md, refs: 1}
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
	if (n.Port == nil) == (n.Remote == nil) {
		return nil, fmt.Errorf("vmm: ptnet %d: give a netmap port or a switch service port (one of Port, Remote)", index)
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
	name := fmt.Sprintf("ptnet%d", index)
	logf := func(format string, args ...any) { v.log.Warn(fmt.Sprintf(format, args...), "nic", name) }
	cfg := ptmemdev.Config{Name: name, Port: n.Port, MAC: n.MAC, VnetHdr: n.VnetHdr, Mode: n.Mode, Spin: n.Spin, Logf: logf}
	portName := ""
	if n.Port != nil {
		r := n.Port.Region()
		pd.Memdev, err = pd.memdevs.acquire(v, n.MemdevSlot, r.ID(), func(slot int) (*ptmemdev.PluggedMemdev, error) {
			return ptmemdev.PlugMemdev(v, slot, r)
		})
		portName = n.Port.Name()
	} else {
		if err := v.memfdBacked(); err != nil {
			return nil, fmt.Errorf("vmm: ptnet %d on switch service port %s: %w", index, n.Remote.Name(), err)
		}
		info := n.Remote.Info()
		pd.Memdev, err = pd.memdevs.acquire(v, n.MemdevSlot, info.Pools.MemID, func(slot int) (*ptmemdev.PluggedMemdev, error) {
			return ptmemdev.PlugMemdevFD(v, slot, n.Remote.FD(), info.Pools, info.MapSize)
		})
		cfg.Geometry = &ptmemdev.Geometry{Name: n.Remote.Name(), TxRings: int(info.TxRings), RxRings: int(info.RxRings),
			TxSlots: info.TxSlots, RxSlots: info.RxSlots, Nifp: info.Nifp, MemID: info.Pools.MemID}
		cfg.Loops = &serviceLoops{v: v, port: n.Remote, mode: n.Mode, spin: n.Spin}
		portName = n.Remote.Name()
	}
	if err != nil {
		return nil, fmt.Errorf("vmm: ptnet %d: %w", index, err)
	}
	if pd.Ptnet, err = ptmemdev.PlugPtnet(v, slot, cfg); err != nil {
		return nil, fmt.Errorf("vmm: ptnet %d: %w", index, err)
	}
	// Closed with the VM at the latest, while its fd can still deassign the doorbells
	// and irqfds and before guest RAM (the CSB) goes away.
	pd.release = n.Release
	v.OnClose(pd.Close)
	v.log.Debug("ptnet added", "index", index, "port", portName, "slot", pd.Ptnet.Function.Slot(),
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

// memfdBacked checks guest RAM can be shared with a switch service: every region
// a memfd (Config.Memory.MemFD).
func (v *VM) memfdBacked() error {
	for _, r := range v.mem.Regions() {
		if r.FD < 0 {
			return errors.New("guest RAM is not memfd-backed (set Config.Memory.MemFD): the switch service maps the CSB from it")
		}
	}
	return nil
}

// csbRef places guest-physical range [gpa, gpa+n) in its RAM memfd.
func (v *VM) csbRef(gpa uint64, n int) (vale.CSBRef, error) {
	for _, r := range v.mem.Regions() {
		if gpa >= r.GPA && gpa-r.GPA < r.Size && r.Size-(gpa-r.GPA) >= uint64(n) {
			if r.FD < 0 {
				return vale.CSBRef{}, errors.New("guest RAM is not memfd-backed")
			}
			return vale.CSBRef{FD: r.FD, Off: gpa - r.GPA}, nil
		}
	}
	return vale.CSBRef{}, fmt.Errorf("CSB at %#x+%#x is not in guest RAM", gpa, n)
}

// serviceLoops is a ptnet's LoopStarter for a port in a switch service: the
// service maps the CSB pages from guest RAM's memfd and runs the loop on the
// doorbells' and vectors' eventfds.
type serviceLoops struct {
	v    *VM
	port *vale.RemotePort
	mode notify.Mode
	spin time.Duration
}

func (s *serviceLoops) StartLoop(c ptmemdev.CSBPlace, kicks, irqs []*notify.EventFD) (ptmemdev.Loop, error) {
	atok, err := s.v.csbRef(c.AtokGPA, len(c.Atok))
	if err != nil {
		return nil, err
	}
	ktoa, err := s.v.csbRef(c.KtoaGPA, len(c.Ktoa))
	if err != nil {
		return nil, err
	}
	if err := s.port.Start(atok, ktoa, kicks, irqs, s.mode, s.spin); err != nil {
		return nil, err
	}
	return serviceLoop{s.port}, nil
}

type serviceLoop struct{ port *vale.RemotePort }

// Stop stops the loop in the service; a service that is gone has stopped it.
func (l serviceLoop) Stop() error {
	if err := l.port.Stop(); err != nil && !errors.Is(err, vale.ErrServiceGone) {
		return err
	}
	return nil
}

// Stats: the counters are the service's (vmrun vale list).
func (serviceLoop) Stats() []netmap.KloopStats { return nil }

// addServicePtnetNIC attaches the NIC's port in the switch service and adds the
// ptnet for it; the device detaches the port when it closes.
func (v *VM) addServicePtnetNIC(index int, n NIC, nd *NICDevice, c *vale.Client) error {
	rp, err := c.Attach(n.Port, netmap.PortConfig{})
	if err != nil {
		return fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	if nd.Ptnet, err = v.AddPtnet(index, PtnetNIC{Remote: rp, MAC: n.MAC, Slot: n.Slot, Mode: n.Mode, Spin: n.Spin, Release: rp.Detach}); err != nil {
		nd.Ptnet = nil
		return errors.Join(err, rp.Detach())
	}
	return nil
}
