package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/ptvmm/ptvmm/vmm"
)

// nicFlags collects the NICs given with -net and -s, in command-line order.
type nicFlags struct{ nics []vmm.NIC }

// netFlag is -net virtio,tap=NAME[,mac=MAC][,queues=N][,mtu=N].
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

// slotFlag is bhyve's -s SLOT[:0],virtio-net,TAP[,mac=MAC].
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

const netUsage = "virtio,tap=NAME[,mac=MAC][,queues=N][,mtu=N]"

// parseNet parses a -net value.
func parseNet(s string) (vmm.NIC, error) {
	var nic vmm.NIC
	parts := strings.Split(s, ",")
	if parts[0] != "virtio" {
		return nic, fmt.Errorf("-net %q: the only model is virtio; use -net %s", s, netUsage)
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
	if nic.Tap == "" {
		return nic, fmt.Errorf("-net %q: tap=NAME is required; use -net %s", s, netUsage)
	}
	return nic, nil
}

func setNICOption(nic *vmm.NIC, k, v string) error {
	switch k {
	case "tap":
		if len(v) > 15 || strings.ContainsAny(v, "/: ") {
			return fmt.Errorf("tap=%q is not an interface name (at most 15 characters, no '/', ':' or spaces)", v)
		}
		nic.Tap = v
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
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 16 {
			return fmt.Errorf("queues=%q: give a number of queue pairs from 1 to 16", v)
		}
		nic.Queues = n
	case "mtu":
		n, err := strconv.Atoi(v)
		if err != nil || n < 68 || n > 65535 {
			return fmt.Errorf("mtu=%q: give an MTU from 68 to 65535", v)
		}
		nic.MTU = n
	default:
		return fmt.Errorf("unknown option %q (tap, mac, queues, mtu)", k)
	}
	return nil
}

// parseSlot parses bhyve's -s SLOT[:FUNC],virtio-net,NAME[,mac=MAC][,queues=N][,mtu=N].
func parseSlot(s string) (vmm.NIC, error) {
	var nic vmm.NIC
	parts := strings.Split(s, ",")
	if len(parts) < 3 {
		return nic, fmt.Errorf("-s %q: use -s SLOT,virtio-net,TAPNAME", s)
	}
	slotStr, fn, hasFn := strings.Cut(parts[0], ":")
	slot, err := strconv.Atoi(slotStr)
	if err != nil || slot < 1 || slot > 31 {
		return nic, fmt.Errorf("-s %q: slot %q must be 1..31 (0 is the host bridge)", s, parts[0])
	}
	if hasFn && fn != "0" {
		return nic, fmt.Errorf("-s %q: only function 0 is supported", s)
	}
	if parts[1] != "virtio-net" {
		return nic, fmt.Errorf("-s %q: device %q is not supported here; use virtio-net", s, parts[1])
	}
	nic.Slot = slot
	if err := setNICOption(&nic, "tap", parts[2]); err != nil {
		return nic, fmt.Errorf("-s %q: %v (only TAP backends are supported)", s, err)
	}
	for _, kv := range parts[3:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" || k == "tap" {
			return nic, fmt.Errorf("-s %q: %q is not mac=, queues= or mtu=", s, kv)
		}
		if err := setNICOption(&nic, k, v); err != nil {
			return nic, fmt.Errorf("-s %q: %v", s, err)
		}
	}
	return nic, nil
}

// checkNICs rejects two NICs on one TAP or one slot.
func checkNICs(nics []vmm.NIC) error {
	taps, slots := map[string]bool{}, map[int]bool{}
	for _, n := range nics {
		if taps[n.Tap] {
			return fmt.Errorf("TAP %s is used by two NICs; give each NIC its own tap=", n.Tap)
		}
		taps[n.Tap] = true
		if n.Slot != 0 {
			if slots[n.Slot] {
				return fmt.Errorf("PCI slot %d is given twice", n.Slot)
			}
			slots[n.Slot] = true
		}
	}
	return nil
}
