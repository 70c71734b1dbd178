package vmm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/backends/vale"
)

// Network is what NICs attach to by netmap port name instead of a TAP: VALE-style
// switches ("valeX:Y" names a port Y on switch valeX, created on first use), pipes
// ("name{N" and "name}N" are the two ends of pipe N) and host TAPs joined to a switch.
// VMs in one process that share a Network (Config.Network) are on the same switches,
// as bhyve VMs are on the kernel's VALE switches.
//
// Concurrency: every method may be called from any goroutine.
type Network struct {
	reg   *vale.Registry
	pipes netmap.PipeTable
	svc   *vale.Client // set: the switches live in a switch service

	mu   sync.Mutex
	taps []*switchTap
}

// switchTap is a host TAP joined to a switch through a pump goroutine.
type switchTap struct {
	t    *tap.Tap
	pump *vale.BackendPort
}

// NewNetwork creates an empty network of its own switches and pipes.
func NewNetwork() *Network { return &Network{reg: vale.NewRegistry()} }

// DefaultNetwork is the process-wide network on vale.Default, the one VMs use when
// their Config names none: like the netmap kernel module's switches, vale0 is then
// the same switch for every VM in the process. Nothing closes it; whoever attaches
// TAPs to it closes it when done with them.
var DefaultNetwork = &Network{reg: vale.Default}

// NewServiceNetwork is a Network whose switches, pipes and TAPs live in the switch
// service c is connected to (`vmrun switch`), shared with every process attached
// there: a ptnet NIC attaches its port in the service, maps the region it returns
// as the memdev BAR and has the service run its host loop; a virtio-net NIC is a
// driver-side user of a service port (vale.DriverEndpoint). Guest RAM must be
// memfd-backed (Config.Memory.MemFD) for ptnet: the service maps the CSB pages
// from it. The caller closes c after the VMs using the network.
func NewServiceNetwork(c *vale.Client) *Network { return &Network{reg: vale.NewRegistry(), svc: c} }

// Service is the switch service client of a service network, or nil.
func (n *Network) Service() *vale.Client { return n.svc }

// Switches is the network's switch registry (listing, capture, custom lookups).
func (n *Network) Switches() *vale.Registry { return n.reg }

// AttachTap joins host interface tapName to switch sw (created if needed), as
// `vale-ctl -a valeX:ifname` does: frames the host sends on the TAP enter the switch
// and frames the switch forwards to the port leave through the TAP. The TAP is created
// when it does not exist (and removed when the network closes), opened without
// virtio-net headers; the switch port is named after it.
func (n *Network) AttachTap(sw, tapName string) error {
	if err := vale.CheckSwitchName(sw); err != nil {
		return fmt.Errorf("vmm: attach TAP %s: %w", tapName, err)
	}
	if n.svc != nil {
		// The service owns the TAP port (and keeps it: vmrun vale detach).
		return n.svc.AttachTap(sw, tapName)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !tap.Exists(tapName) {
		if ok, why := tap.CanCreate(); !ok {
			return fmt.Errorf("vmm: TAP %s does not exist and cannot be created (%s): create it with `ip tuntap add %s mode tap`", tapName, why, tapName)
		}
	}
	t, err := tap.Open(tap.Options{Name: tapName, Queues: 1})
	if err != nil {
		return fmt.Errorf("vmm: attach TAP %s to %s: %w", tapName, sw, err)
	}
	s, err := n.reg.Switch(sw)
	if err != nil {
		t.Close()
		return fmt.Errorf("vmm: attach TAP %s: %w", tapName, err)
	}
	bp, err := s.AttachBackend(tapName, t.Queue(0), vale.BackendOptions{})
	if err != nil {
		t.Close()
		return fmt.Errorf("vmm: attach TAP %s to %s: %w", tapName, sw, err)
	}
	if err := bp.Start(); err != nil {
		bp.Close()
		t.Close()
		return fmt.Errorf("vmm: attach TAP %s to %s: %w", tapName, sw, err)
	}
	n.taps = append(n.taps, &switchTap{t: t, pump: bp})
	return nil
}

// checkPortName accepts the names a NIC may attach to: "valeX:Y" or a pipe end.
func checkPortName(name string) (netmap.Name, error) {
	nm, err := netmap.ParseName(name)
	if err != nil {
		return nm, err
	}
	switch {
	case nm.Kind == netmap.KindVALE && !nm.Pipe:
	case nm.Kind == netmap.KindPipeMaster || nm.Kind == netmap.KindPipeSlave:
	default:
		return nm, fmt.Errorf("port %q: use a switch port valeX:Y or a pipe end NAME{N / NAME}N", name)
	}
	return nm, nil
}

// OpenPort opens a netmap port by name: a new switch port "valeX:Y" (the switch is
// created on first use) or a pipe end. It is what a ptnet NIC runs on, and what a
// host program uses to join the network as a netmap application. release detaches
// (switch) or closes (pipe) it.
func (n *Network) OpenPort(name string, cfg netmap.PortConfig) (np *netmap.Port, release func() error, err error) {
	nm, err := checkPortName(name)
	if err != nil {
		return nil, nil, err
	}
	if n.svc != nil {
		return nil, nil, fmt.Errorf("port %s: the network's switches are in a switch service; open it there (vale.Client.OpenHostPort)", name)
	}
	if nm.Kind == netmap.KindVALE {
		p, err := n.reg.NewPort(name, cfg)
		if err != nil {
			return nil, nil, err
		}
		return p.Netmap(), p.Detach, nil
	}
	p, err := n.pipes.Open(name, cfg)
	if err != nil {
		return nil, nil, err
	}
	return p, p.Close, nil
}

// OpenEndpoint opens a netmap port by name as a backends.Port carrying plain
// Ethernet frames: what a virtio-net NIC on a port uses, and a simple way for a host
// program to send and receive on the network. Close releases the port.
func (n *Network) OpenEndpoint(name string) (backends.Port, error) {
	nm, err := checkPortName(name)
	if err != nil {
		return nil, err
	}
	if n.svc != nil {
		return n.svc.OpenEndpoint(name)
	}
	if nm.Kind == netmap.KindVALE {
		return n.reg.OpenEndpoint(name, netmap.PortConfig{})
	}
	p, err := n.pipes.Open(name, netmap.PortConfig{})
	if err != nil {
		return nil, err
	}
	ep, err := netmap.NewEndpoint(p, true)
	if err != nil {
		p.Close()
		return nil, err
	}
	return ep, nil
}

// Close detaches and closes the TAPs joined with AttachTap (removing those it
// created). Ports that NICs opened are released by their NICs. Safe to call more than
// once; AttachTap works again afterwards.
func (n *Network) Close() error {
	n.mu.Lock()
	taps := n.taps
	n.taps = nil
	n.mu.Unlock()
	var err error
	for _, st := range taps {
		err = errors.Join(err, st.pump.Close(), st.t.Close())
	}
	return err
}

// Network returns the network the VM's NICs attach to: Config.Network, or
// DefaultNetwork.
func (v *VM) Network() *Network {
	if v.cfg.Network == nil {
		return DefaultNetwork
	}
	return v.cfg.Network
}

// CheckPortName reports whether name is a netmap port a NIC can attach to: a switch
// port "valeX:Y" or a pipe end "name{N" / "name}N", with optional @conf: options.
func CheckPortName(name string) error {
	_, err := checkPortName(name)
	return err
}

// CheckSwitchName reports whether name is a switch name: "vale" and an optional
// suffix of letters, digits, '_', '-' or '.'.
func CheckSwitchName(name string) error { return vale.CheckSwitchName(name) }
