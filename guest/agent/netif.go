package agent

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/ptvmm/ptvmm/backends/tap"
)

const ifconfigUsage = "ifconfig [IFACE [ADDR/LEN]] (bring IFACE up and add the address; without one: show)"

// runIfconfig is the ifconfig built-in: with an address it brings the link
// up and adds the address (netlink, as `ip link set up` and `ip addr
// replace`), then shows the interface; without one it shows IFACE, or every
// interface. Status 1 when the interface or the change fails, 2 on bad usage.
func runIfconfig(args []string, s stdio) int {
	if len(args) > 2 {
		fmt.Fprintf(s.err, "usage: %s\n", ifconfigUsage)
		return 2
	}
	if len(args) == 0 {
		ifs, err := net.Interfaces()
		if err != nil {
			fmt.Fprintf(s.err, "ifconfig: %v\n", err)
			return 1
		}
		for _, ifi := range ifs {
			fmt.Fprintln(s.out, ifaceLine(&ifi))
		}
		return 0
	}
	name := args[0]
	if len(args) == 2 {
		p, err := netip.ParsePrefix(args[1])
		if err != nil {
			fmt.Fprintf(s.err, "ifconfig: %q is not an address with a prefix length, like 10.0.2.15/24\n", args[1])
			return 2
		}
		if err := tap.SetLinkUp(name); err != nil {
			fmt.Fprintf(s.err, "ifconfig: %v\n", err)
			return 1
		}
		if err := tap.AddAddr(name, p); err != nil {
			fmt.Fprintf(s.err, "ifconfig: %v\n", err)
			return 1
		}
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		fmt.Fprintf(s.err, "ifconfig: %s: %v\n", name, err)
		return 1
	}
	fmt.Fprintln(s.out, ifaceLine(ifi))
	return 0
}

// ifaceLine is one interface on one line: name, flags, MTU, MAC, addresses.
func ifaceLine(ifi *net.Interface) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: <%s> mtu %d", ifi.Name, strings.ReplaceAll(ifi.Flags.String(), "|", ","), ifi.MTU)
	if len(ifi.HardwareAddr) > 0 {
		fmt.Fprintf(&b, " ether %s", ifi.HardwareAddr)
	}
	if addrs, err := ifi.Addrs(); err == nil {
		for _, a := range addrs {
			fmt.Fprintf(&b, " inet %s", a)
		}
	}
	return b.String()
}
