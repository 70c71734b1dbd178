package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm"
)

// nicFlags collects the NICs given with -net and -s, in command-line order.
type nicFlags struct{ nics []vmm.NIC }

// netFlag is -net virtio,tap=NAME|port=PORT[,...] or -net ptnet,port=PORT[,mac=MAC].
type netFlag struct{ f *nicFlags }

func (n netFlag) String() string { return "" }
func (n netFlag) Set(s string) error {
	nic, err := parseNet(s)
	if err != nil {
		return err
	}
	n.f.nics = append(n.f.nics, nic)
	return nil
}

// slotFlag is bhyve's -s SLOT[:0],virtio-net|ptnet,BACKEND[,mac=MAC].
type slotFlag struct{ f *nicFlags }

func (n slotFlag) String() string { return "" }
func (n slotFlag) Set(s string) error {
	nic, err := parseSlot(s)
	if err != nil {
		return err
	}
	n.f.nics = append(n.f.nics, nic)
	return nil
}

const (
	netUsage  = "virtio,tap=NAME|port=PORT[,mac=MAC][,queues=N][,mtu=N][,host-ip=ADDR/LEN][,poll=D] or ptnet,port=PORT[,mac=MAC][,poll=D]"
	slotUsage = "SLOT,virtio-net,TAP|PORT[,mac=MAC][,queues=N][,mtu=N][,host-ip=ADDR/LEN][,poll=D] or SLOT,ptnet,PORT[,mac=MAC][,poll=D]"
	// portForms says what a PORT is.
	portForms = "PORT is a switch port valeX:Y or a pipe end NAME{N / NAME}N"
)

// parseNet parses a -net value.
func parseNet(s string) (vmm.NIC, error) {
	var nic vmm.NIC
	parts := strings.Split(s, ",")
	switch parts[0] {
	case "virtio", "virtio-net":
	case "ptnet":
		nic.Model = vmm.NICPtnet
	default:
		return nic, fmt.Errorf("-net %q: model %q is not virtio or ptnet; use -net %s", s, parts[0], netUsage)
	}
	for _, kv := range parts[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return nic, fmt.Errorf("-net %q: %q is not key=value; use -net %s", s, kv, netUsage)
		}
		if err := setNICOption(&nic, k, v); err != nil {
			return nic, fmt.Errorf("-net %q: %v", s, err)
		}
	}
	switch {
	case nic.Model == vmm.NICPtnet && nic.Port == "":
		return nic, fmt.Errorf("-net %q: ptnet needs port=PORT; use -net ptnet,port=vale0:vm1 (%s)", s, portForms)
	case nic.Tap == "" && nic.Port == "":
		return nic, fmt.Errorf("-net %q: tap=NAME or port=PORT is required; use -net %s", s, netUsage)
	case nic.Tap != "" && nic.Port != "":
		return nic, fmt.Errorf("-net %q: give tap= or port=, not both", s)
	case nic.HostIP.IsValid() && nic.Tap == "":
		return nic, fmt.Errorf("-net %q: host-ip= goes with tap=NAME; %s", s, hostIPNeedsTap)
	}
	return nic, nil
}

// hostIPNeedsTap says where the host's address goes when the NIC has no TAP.
const hostIPNeedsTap = "a switch port has no host interface: join a TAP with -switch-tap valeX:TAP and address it with ip addr add"

// isPortName says a backend name is a netmap port rather than an interface: TAP
// names cannot hold ':', '{' or '}'.
func isPortName(v string) bool { return strings.ContainsAny(v, ":{}") }

func setNICOption(nic *vmm.NIC, k, v string) error {
	ptnet := nic.Model == vmm.NICPtnet
	switch k {
	case "tap":
		if ptnet {
			return fmt.Errorf("ptnet runs on a netmap port, not a TAP; use port=PORT (%s), and join a TAP to the switch with -switch-tap valeX:TAP", portForms)
		}
		if len(v) > 15 || strings.ContainsAny(v, "/: {}") {
			return fmt.Errorf("tap=%q is not an interface name (at most 15 characters, no '/', ':', '{', '}' or spaces)", v)
		}
		nic.Tap = v
	case "port":
		if !isPortName(v) {
			return fmt.Errorf("port=%q: %s", v, portForms)
		}
		if err := vmm.CheckPortName(v); err != nil {
			return fmt.Errorf("port=%q: %v (%s)", v, err, portForms)
		}
		nic.Port = v
	case "mac":
		hw, err := net.ParseMAC(v)
		if err != nil || len(hw) != 6 {
			return fmt.Errorf("mac=%q is not a MAC address like 52:54:00:12:34:56", v)
		}
		if hw[0]&1 != 0 {
			return fmt.Errorf("mac=%s is a multicast address; use one whose first byte is even", v)
		}
		copy(nic.MAC[:], hw)
	case "queues":
		if ptnet {
			return fmt.Errorf("ptnet takes its rings from the port: use port=valeX:Y@conf:rings=N")
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 16 {
			return fmt.Errorf("queues=%q: give a number of queue pairs from 1 to 16", v)
		}
		nic.Queues = n
	case "host-ip":
		if ptnet {
			return fmt.Errorf("ptnet has no host-ip=; %s", hostIPNeedsTap)
		}
		p, err := netip.ParsePrefix(v)
		if err != nil {
			if _, aerr := netip.ParseAddr(v); aerr == nil {
				return fmt.Errorf("host-ip=%s needs a prefix length, e.g. host-ip=%s/24", v, v)
			}
			return fmt.Errorf("host-ip=%q is not an address with a prefix length, like 10.0.2.2/24", v)
		}
		if err := tap.CheckAddr(p); err != nil {
			return fmt.Errorf("host-ip=%v", err)
		}
		nic.HostIP = p
	case "poll":
		// As QEMU's poll-max-ns or vhost-net's busyloop_timeout: the host side polls
		// this long after the last work before it sleeps.
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > time.Second {
			return fmt.Errorf("poll=%q: give how long the host side polls before it sleeps, from 0 (sleep at once, the default) to 1s, e.g. poll=50us", v)
		}
		nic.Mode, nic.Spin = notify.Block, 0
		if d > 0 {
			nic.Mode, nic.Spin = notify.Adaptive, d
		}
	case "mtu":
		if ptnet {
			return fmt.Errorf("ptnet has no mtu= option (frames are up to the port's buffer size)")
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 68 || n > 65535 {
			return fmt.Errorf("mtu=%q: give an MTU from 68 to 65535", v)
		}
		nic.MTU = n
	default:
		if ptnet {
			return fmt.Errorf("unknown option %q (port, mac, poll)", k)
		}
		return fmt.Errorf("unknown option %q (tap, port, mac, queues, mtu, host-ip, poll)", k)
	}
	return nil
}

// parseSlot parses bhyve's -s SLOT[:FUNC],virtio-net,TAP|PORT[,opts] and
// -s SLOT[:FUNC],ptnet,PORT[,mac=MAC].
func parseSlot(s string) (vmm.NIC, error) {
	var nic vmm.NIC
	parts := strings.Split(s, ",")
	if len(parts) < 3 {
		return nic, fmt.Errorf("-s %q: use -s %s", s, slotUsage)
	}
	slotStr, fn, hasFn := strings.Cut(parts[0], ":")
	slot, err := strconv.Atoi(slotStr)
	if err != nil || slot < 1 || slot > 31 {
		return nic, fmt.Errorf("-s %q: slot %q must be 1..31 (0 is the host bridge)", s, parts[0])
	}
	if hasFn && fn != "0" {
		return nic, fmt.Errorf("-s %q: only function 0 is supported", s)
	}
	switch parts[1] {
	case "virtio-net":
	case "ptnet":
		nic.Model = vmm.NICPtnet
	default:
		return nic, fmt.Errorf("-s %q: device %q is not supported here; use -s %s", s, parts[1], slotUsage)
	}
	nic.Slot = slot
	key := "tap"
	if nic.Model == vmm.NICPtnet || isPortName(parts[2]) {
		key = "port"
	}
	if err := setNICOption(&nic, key, parts[2]); err != nil {
		return nic, fmt.Errorf("-s %q: %v", s, err)
	}
	for _, kv := range parts[3:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" || k == "tap" || k == "port" {
			return nic, fmt.Errorf("-s %q: %q is not one of mac=, queues=, mtu=, host-ip=, poll=; use -s %s", s, kv, slotUsage)
		}
		if err := setNICOption(&nic, k, v); err != nil {
			return nic, fmt.Errorf("-s %q: %v", s, err)
		}
	}
	if nic.HostIP.IsValid() && nic.Tap == "" {
		return nic, fmt.Errorf("-s %q: host-ip= goes with a TAP; %s", s, hostIPNeedsTap)
	}
	return nic, nil
}

// switchTapFlag is -switch-tap SWITCH:TAP (repeatable).
type switchTapFlag struct{ taps *[][2]string }

func (f switchTapFlag) String() string { return "" }
func (f switchTapFlag) Set(s string) error {
	sw, tp, ok := strings.Cut(s, ":")
	if !ok || tp == "" || len(tp) > 15 || strings.ContainsAny(tp, "/: {}") {
		return fmt.Errorf("-switch-tap %q: use -switch-tap valeX:TAPNAME (e.g. vale0:tap0)", s)
	}
	if err := vmm.CheckSwitchName(sw); err != nil {
		return fmt.Errorf("-switch-tap %q: %v; use -switch-tap valeX:TAPNAME", s, err)
	}
	*f.taps = append(*f.taps, [2]string{sw, tp})
	return nil
}

// checkNICs rejects two NICs on one TAP, port or slot.
func checkNICs(nics []vmm.NIC) error {
	taps, ports, slots := map[string]bool{}, map[string]bool{}, map[int]bool{}
	for _, n := range nics {
		if n.Tap != "" && taps[n.Tap] {
			return fmt.Errorf("TAP %s is used by two NICs; give each NIC its own tap=", n.Tap)
		}
		taps[n.Tap] = true
		if n.Port != "" {
			key, _, _ := strings.Cut(n.Port, "@")
			if ports[key] {
				return fmt.Errorf("port %s is used by two NICs; give each NIC its own port", key)
			}
			ports[key] = true
		}
		if n.Slot != 0 {
			if slots[n.Slot] {
				return fmt.Errorf("PCI slot %d is given twice", n.Slot)
			}
			slots[n.Slot] = true
		}
	}
	return nil
}
