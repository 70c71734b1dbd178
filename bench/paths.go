package bench

import (
	"errors"
	"fmt"
	"os"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/backends/vale"
	"github.com/ptvmm/ptvmm/guest/pktgen"
)

// Addresses of the driver (the guest's NIC) and of the far end.
var (
	driverMAC = [6]byte{0x02, 0x70, 0x74, 0x76, 0x00, 0x01}
	peerMAC   = [6]byte{0x02, 0x70, 0x74, 0x76, 0x00, 0x02}
)

// env is one path set up in the process tier: the driver's rings, the far end, and
// the host's interrupt count.
type env struct {
	tx, rx   pktgen.Ring
	hdrLen   int // virtio-net header in front of each frame in the driver's buffers
	peer     backends.Port
	peerRing *netmap.Port // the far end's netmap port (nil: a packet socket)
	hostIrqs func() uint64
	close    func() error
}

// SkipError says a path cannot run here, why, and what to do about it. Plain data.
type SkipError struct{ Why string }

func (e *SkipError) Error() string { return e.Why }

// setup builds path p for one run (every run starts from fresh rings and ports).
func (r *runner) setup(p Path) (*env, error) {
	switch p {
	case PathPtnetSwitch:
		return r.setupPtnetSwitch()
	case PathPtnetPipe:
		return r.setupPtnetPipe()
	case PathVirtioTap:
		return r.setupVirtioTap()
	case PathVirtioSwitch:
		return r.setupVirtioSwitch()
	}
	return nil, fmt.Errorf("bench: unknown path %q", p)
}

// local puts a netmap port behind its host loop and a driver (the passthrough
// attachment a ptnet guest gets). The host loop waits as Config.Wait says, and
// with WaitAdaptive the driver polls its ring as long before it sleeps.
func (r *runner) local(np *netmap.Port) (*netmap.Local, func() uint64, error) {
	mode, spin := r.hostWait()
	l, err := netmap.StartLocalConfig(np, netmap.LocalConfig{Mode: mode, Spin: spin, DriverSpin: spin})
	if err != nil {
		return nil, nil, err
	}
	irqs := func() uint64 {
		var s uint64
		for _, st := range l.Loop.Stats() {
			s += st.Interrupts
		}
		return s
	}
	return l, irqs, nil
}

// setupPtnetSwitch: the driver's port and a receiver's port on one switch; the
// switch knows both addresses, so frames go unicast (one copy, as VALE does).
func (r *runner) setupPtnetSwitch() (*env, error) {
	s, err := vale.New("valebench")
	if err != nil {
		return nil, err
	}
	pa, err := s.NewPort("drv", netmap.PortConfig{})
	if err != nil {
		return nil, fmt.Errorf("bench: switch port: %w", err)
	}
	pb, err := s.OpenEndpoint("peer", netmap.PortConfig{})
	if err != nil {
		pa.Detach()
		return nil, fmt.Errorf("bench: switch port: %w", err)
	}
	s.Learning().Learn(driverMAC[:], pa.Index())
	s.Learning().Learn(peerMAC[:], pb.SwitchPort().Index())
	l, irqs, err := r.local(pa.Netmap())
	if err != nil {
		pb.Close()
		pa.Detach()
		return nil, fmt.Errorf("bench: ptnet on a switch port: %w", err)
	}
	return &env{tx: l.Driver.TxRing(0), rx: l.Driver.RxRing(0), peer: pb, peerRing: pb.Port(), hostIrqs: irqs,
		close: func() error { return errors.Join(l.Close(), pb.Close(), pa.Detach()) }}, nil
}

// setupPtnetPipe: the driver on one end of a netmap pipe, the far end on the other
// (buffers swapped, not copied).
func (r *runner) setupPtnetPipe() (*env, error) {
	m, sl, err := netmap.NewPipe("bench", "1", netmap.PortConfig{})
	if err != nil {
		return nil, fmt.Errorf("bench: pipe: %w", err)
	}
	l, irqs, err := r.local(m)
	if err != nil {
		sl.Close()
		m.Close()
		return nil, fmt.Errorf("bench: ptnet on a pipe: %w", err)
	}
	peer, err := netmap.NewEndpoint(sl, false)
	if err != nil {
		l.Close()
		sl.Close()
		m.Close()
		return nil, fmt.Errorf("bench: pipe end: %w", err)
	}
	return &env{tx: l.Driver.TxRing(0), rx: l.Driver.RxRing(0), peer: peer, peerRing: sl, hostIrqs: irqs,
		close: func() error { return errors.Join(l.Close(), peer.Close(), sl.Close(), m.Close()) }}, nil
}

// tapName is the TAP the virtio-tap path creates (per process, so runs side by side
// do not collide).
func tapName() string { return fmt.Sprintf("ptvb%d", os.Getpid()%1000000) }

// setupVirtioTap: virtio-net on a TAP with virtio-net headers (writev and readv
// straight from and to guest buffers), the far end a packet socket on the TAP.
func (r *runner) setupVirtioTap() (*env, error) {
	name := r.cfg.Tap
	if name == "" {
		name = tapName()
		if ok, why := tap.CanCreate(); !ok {
			return nil, &SkipError{Why: fmt.Sprintf("cannot create a TAP (%s): run as root, or create one with `ip tuntap add ptvb0 mode tap user $USER && ip link set ptvb0 up` and pass -tap ptvb0", why)}
		}
	} else if !tap.Exists(name) {
		return nil, &SkipError{Why: fmt.Sprintf("TAP %s does not exist: create it with `ip tuntap add %s mode tap user $USER && ip link set %s up`", name, name, name)}
	}
	t, err := tap.Open(tap.Options{Name: name, VnetHdr: true})
	if err != nil {
		return nil, &SkipError{Why: fmt.Sprintf("cannot open TAP %s: %v", name, err)}
	}
	if t.Created() {
		quietIPv6(name)
	}
	pk, err := openPacket(name)
	if err != nil {
		t.Close()
		return nil, &SkipError{Why: fmt.Sprintf("cannot read TAP %s from the host: %v (needs CAP_NET_RAW: run as root)", name, err)}
	}
	nic, err := r.newVirtioNIC(t.Queue(0), true, t, driverMAC)
	if err != nil {
		pk.Close()
		t.Close()
		return nil, err
	}
	return &env{tx: nic.tx, rx: nic.rx, hdrLen: 12, peer: pk, hostIrqs: nic.Interrupts,
		close: func() error { return errors.Join(nic.Close(), t.Close(), pk.Close()) }}, nil
}

// setupVirtioSwitch: virtio-net whose backend is a switch port (one copy from guest
// buffers into the switch), the far end another port.
func (r *runner) setupVirtioSwitch() (*env, error) {
	s, err := vale.New("valebench")
	if err != nil {
		return nil, err
	}
	pv, err := s.OpenEndpoint("drv", netmap.PortConfig{})
	if err != nil {
		return nil, fmt.Errorf("bench: switch port: %w", err)
	}
	pb, err := s.OpenEndpoint("peer", netmap.PortConfig{})
	if err != nil {
		pv.Close()
		return nil, fmt.Errorf("bench: switch port: %w", err)
	}
	s.Learning().Learn(driverMAC[:], pv.SwitchPort().Index())
	s.Learning().Learn(peerMAC[:], pb.SwitchPort().Index())
	nic, err := r.newVirtioNIC(pv, false, nil, driverMAC)
	if err != nil {
		pb.Close()
		return nil, err
	}
	return &env{tx: nic.tx, rx: nic.rx, hdrLen: 12, peer: pb, peerRing: pb.Port(), hostIrqs: nic.Interrupts,
		close: func() error { return errors.Join(nic.Close(), pb.Close()) }}, nil
}
