package vmm

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/devices/virtionet"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/kvm"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// NICModel is a NIC's device model.
type NICModel int

const (
	// NICVirtio is a virtio-net device (the default).
	NICVirtio NICModel = iota
	// NICPtnet is netmap passthrough: a ptnet device and a ptnetmap memdev whose BAR is
	// the port's netmap memory, so the guest works on the port's rings directly.
	NICPtnet
)

func (m NICModel) String() string {
	switch m {
	case NICVirtio:
		return "virtio-net"
	case NICPtnet:
		return "ptnet"
	}
	return fmt.Sprintf("nicmodel(%d)", int(m))
}

// NIC describes one network device: virtio-net on a TAP interface or on a netmap
// port, or ptnet on a netmap port.
type NIC struct {
	// Model is the device (default NICVirtio).
	Model NICModel
	// Tap is the host interface name of a virtio-net NIC. It is created (and removed
	// when the VM is closed) when it does not exist and the process may create it.
	Tap string
	// Port, instead of Tap, is a netmap port of the VM's Network: "valeX:Y" (port Y
	// on switch valeX, created on first use) or "name{N" / "name}N" (an end of pipe
	// N). Required for NICPtnet. Frames on a port are plain Ethernet, so a
	// virtio-net NIC on a port offers no offloads.
	Port string
	// MAC is the guest's address; zero picks 52:54:00:12:34:56 plus the NIC index.
	MAC [6]byte
	// Queues is the number of queue pairs (default 1); > 1 opens a multi-queue TAP.
	Queues int
	// MTU, if non-zero, is offered to the guest and set on a TAP vmrun creates.
	MTU int
	// HostIP, if set, is given to the TAP (the host's end of the link, e.g.
	// 10.0.2.2/24) so the guest reaches the host stack; Tap only.
	HostIP netip.Prefix
	// Slot is the PCI slot (1..31), or 0 for the first free one.
	Slot int
	// NoOffloads withholds checksum and TSO offloads from the guest.
	NoOffloads bool
	// Mode is how the NIC's host side (virtio-net's queue workers, ptnet's host loop)
	// waits for work: notify.Block (default) sleeps until the guest kicks;
	// notify.Adaptive keeps polling for Spin (notify.DefaultSpin if zero) after the
	// last work it found, then sleeps: fewer kicks and wake-ups under load, a busy
	// host thread for the window.
	Mode notify.Mode
	Spin time.Duration
	// Ports, if set, are the backend (one port per queue pair) instead of a TAP;
	// PortsVnetHdr says they carry virtio-net headers (offloads are then offered).
	// The NIC closes them.
	Ports        []backends.Port
	PortsVnetHdr bool
}

// DefaultMAC is the MAC of NIC i when none is given.
func DefaultMAC(i int) [6]byte { return [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, byte(0x56 + i)} }

// NICDevice is a NIC added to a VM: the virtio-net model, its transport, TAP and
// interrupt plumbing.
type NICDevice struct {
	// Ptnet is set for a NICPtnet NIC; the virtio fields are then nil.
	Ptnet *PtnetDevice

	Net       *virtionet.Device
	Transport *virtio.Transport
	Tap       *tap.Tap
	Function  *pci.Function

	root    *pci.Root
	msix    *notify.MSIXVectors
	intx    *notify.Intx
	release func() error // gives back a Network port
	once    sync.Once
}

// routingTables holds the VM-wide GSI routing table per VM (KVM keeps one table per
// VM, so every device adding MSI routes must share it).
var routingTables sync.Map // *VM -> *kvm.GSIRouting

// GSIRouting returns the VM's GSI routing table (irqchip routes plus MSI routes),
// creating it on first use.
func (v *VM) GSIRouting() *kvm.GSIRouting {
	if r, ok := routingTables.Load(v); ok {
		return r.(*kvm.GSIRouting)
	}
	r, loaded := routingTables.LoadOrStore(v, kvm.NewGSIRouting(v.kvm, true))
	if !loaded {
		v.OnClose(func() error { routingTables.Delete(v); return nil })
	}
	return r.(*kvm.GSIRouting)
}

// AddNIC opens the TAP and adds a virtio-net PCI function for it. index numbers the
// VM's NICs (for the default MAC). Call it after New, before Run, from the goroutine
// that calls New and Close; VM.Close closes the NIC if the caller has not.
func (v *VM) AddNIC(index int, n NIC) (_ *NICDevice, err error) {
	if n.Queues == 0 {
		n.Queues = 1
	}
	if n.MAC == [6]byte{} {
		n.MAC = DefaultMAC(index)
	}
	if err := n.check(); err != nil {
		return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	nd := &NICDevice{}
	defer func() {
		if err != nil {
			nd.Close()
		}
	}()
	if n.Model == NICPtnet {
		return nd, v.addPtnetNIC(index, n, nd)
	}
	logf := func(format string, args ...any) { v.log.Warn(fmt.Sprintf(format, args...)) }
	ncfg := virtionet.Config{MAC: n.MAC, Ports: n.Ports, VnetHdr: n.PortsVnetHdr, MTU: n.MTU, NoOffloads: n.NoOffloads,
		Mode: n.Mode, Spin: n.Spin, Logf: logf}
	if n.Port != "" {
		ep, err := v.Network().OpenEndpoint(n.Port)
		if err != nil {
			return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
		}
		ncfg.Ports = []backends.Port{ep}
	} else if len(n.Ports) == 0 {
		if !tap.Exists(n.Tap) {
			if ok, why := tap.CanCreate(); !ok {
				return nil, fmt.Errorf("vmm: TAP %s does not exist and cannot be created (%s): create it with `ip tuntap add %s mode tap user $USER`", n.Tap, why, n.Tap)
			}
		}
		if nd.Tap, err = tap.Open(tap.Options{Name: n.Tap, Queues: n.Queues, VnetHdr: true}); err != nil {
			return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
		}
		if nd.Tap.Created() && n.MTU != 0 {
			if err := nd.Tap.SetMTU(n.MTU); err != nil {
				return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
			}
		}
		if n.HostIP.IsValid() {
			if err := nd.Tap.SetAddr(n.HostIP); err != nil {
				return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
			}
		}
		ncfg.Ports = make([]backends.Port, n.Queues)
		for i := range ncfg.Ports {
			ncfg.Ports[i] = nd.Tap.Queue(i)
		}
		ncfg.VnetHdr, ncfg.Offloads = true, nd.Tap
	}
	if nd.Net, err = virtionet.New(ncfg); err != nil {
		return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	if len(ncfg.Ports) == 1 {
		if d, ok := ncfg.Ports[0].(interface{ OnDown(func()) }); ok {
			// A port in a switch service: its link goes down with the service.
			dev := nd.Net
			d.OnDown(func() { dev.SetLink(false) })
		}
	}
	slot := n.Slot
	if slot == 0 {
		if slot, err = v.pci.FreeSlot(); err != nil {
			return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
		}
	}
	if slot < 1 || slot > 31 || v.pci.Function(slot) != nil {
		return nil, fmt.Errorf("vmm: NIC %d: PCI slot %d is taken or invalid (1..31)", index, slot)
	}
	if nd.msix, err = notify.NewMSIXVectors(v.kvm, v.GSIRouting(), 1+nd.Net.NumQueues()); err != nil {
		return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	if nd.intx, err = notify.NewIntx(v.kvm, pci.IntxGSI(slot), fmt.Sprintf("nic%d-intx", index)); err != nil {
		return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	bells := func(s notify.DoorbellSpec) (virtio.Bell, error) { return notify.NewDoorbell(v.kvm, s) }
	if nd.Transport, err = virtio.NewTransport(virtio.TransportConfig{
		Mem: v.mem, Device: nd.Net, Bells: bells, MSIX: nd.msix, Intx: nd.intx, Logf: logf,
	}); err != nil {
		return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	nd.Net.SetTransport(nd.Transport)
	if nd.Function, err = v.pci.Add(slot, nd.Transport.Spec()); err != nil {
		return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	nd.root = v.pci
	if err = nd.Transport.Attach(nd.Function); err != nil {
		return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	// INTx is level-triggered: at the guest's EOI KVM de-asserts the line and the
	// function re-asserts it if the device still holds it.
	fn := nd.Function
	if err = nd.intx.OnEOI(func(uint64) { _ = fn.Resample() }); err != nil {
		return nil, fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	// Closed with the VM at the latest, while its fd can still deassign our
	// doorbells and interrupts (Close is idempotent, so an earlier Close is fine).
	v.OnClose(nd.Close)
	v.log.Debug("nic added", "index", index, "tap", n.Tap, "port", n.Port, "slot", slot, "queues", n.Queues, "mac", fmt.Sprintf("%x", n.MAC))
	return nd, nil
}

// check rejects contradictory NIC settings.
func (n *NIC) check() error {
	switch n.Model {
	case NICVirtio:
		backendsGiven := 0
		for _, set := range []bool{n.Tap != "", n.Port != "", len(n.Ports) > 0} {
			if set {
				backendsGiven++
			}
		}
		if backendsGiven != 1 {
			return errors.New("a virtio-net NIC needs exactly one of Tap, Port or Ports")
		}
		if n.Port != "" && n.Queues > 1 {
			return fmt.Errorf("port %s: a NIC on a netmap port has one queue pair", n.Port)
		}
	case NICPtnet:
		if n.Port == "" || n.Tap != "" || len(n.Ports) > 0 {
			return errors.New("a ptnet NIC needs Port (valeX:Y or a pipe end) and no Tap or Ports")
		}
		if n.Queues > 1 {
			return errors.New("a ptnet NIC takes its ring count from the port (@conf:rings=N), not Queues")
		}
	default:
		return fmt.Errorf("unknown NIC model %d", int(n.Model))
	}
	if _, err := checkPortNameIfSet(n.Port); err != nil {
		return err
	}
	if n.HostIP.IsValid() {
		if n.Tap == "" {
			return errors.New("HostIP needs a TAP (a port or Ports have no host interface)")
		}
		if err := tap.CheckAddr(n.HostIP); err != nil {
			return fmt.Errorf("HostIP %w", err)
		}
	}
	return nil
}

func checkPortNameIfSet(name string) (netmap.Name, error) {
	if name == "" {
		return netmap.Name{}, nil
	}
	return checkPortName(name)
}

// addPtnetNIC opens the NIC's netmap port and adds the ptnet device (and the
// memdev for the port's region) for it; the device releases the port when it closes.
func (v *VM) addPtnetNIC(index int, n NIC, nd *NICDevice) error {
	if c := v.Network().Service(); c != nil {
		return v.addServicePtnetNIC(index, n, nd, c)
	}
	np, release, err := v.Network().OpenPort(n.Port, netmap.PortConfig{})
	if err != nil {
		return fmt.Errorf("vmm: NIC %d: %w", index, err)
	}
	if nd.Ptnet, err = v.AddPtnet(index, PtnetNIC{Port: np, MAC: n.MAC, Slot: n.Slot, Mode: n.Mode, Spin: n.Spin, Release: release}); err != nil {
		nd.Ptnet = nil
		return errors.Join(err, release())
	}
	return nil
}

// Close stops the device and releases the TAP (removing it if AddNIC created it),
// doorbells and interrupts. Safe to call more than once.
func (nd *NICDevice) Close() error {
	var err error
	nd.once.Do(func() {
		if nd.Ptnet != nil {
			err = nd.Ptnet.Close()
		}
		if nd.Function != nil {
			nd.root.Remove(nd.Function.Slot())
		}
		if nd.Net != nil {
			nd.Net.Reset()
		}
		if nd.Transport != nil {
			err = errors.Join(err, nd.Transport.Close())
		}
		if nd.Net != nil {
			err = errors.Join(err, nd.Net.Close()) // closes the TAP queues
		} else if nd.Tap != nil {
			err = errors.Join(err, nd.Tap.Close())
		}
		if nd.intx != nil {
			err = errors.Join(err, nd.intx.Close())
		}
		if nd.msix != nil {
			err = errors.Join(err, nd.msix.Close())
		}
		if nd.release != nil {
			err = errors.Join(err, nd.release())
		}
	})
	return err
}
