package tap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// SetAddr brings the interface up and assigns it prefix, the host's address
// on the link with its length (10.0.2.2/24), as `ip addr replace` does: a
// guest on the TAP then reaches the host stack at that address. On a TAP that
// Open created, the address goes away with it; on one that existed before,
// it stays after Close.
//
// Concurrency: safe from any goroutine; it must not race with Close.
func (t *Tap) SetAddr(prefix netip.Prefix) error {
	if err := CheckAddr(prefix); err != nil {
		return fmt.Errorf("tap: %s: %w", t.name, err)
	}
	if err := setUp(t.name); err != nil {
		return err
	}
	return AddAddr(t.name, prefix)
}

// CheckAddr rejects a prefix that cannot be an interface's own address: no
// length, an unspecified, loopback or multicast address, or (IPv4 shorter
// than /31) the network or broadcast address of its own prefix.
func CheckAddr(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("no address/prefix length (want e.g. 10.0.2.2/24)")
	}
	a := p.Addr()
	if a.Is4In6() || a.Zone() != "" {
		return fmt.Errorf("%s: give a plain IPv4 or IPv6 address", p)
	}
	switch {
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast():
		return fmt.Errorf("%s: not a host address (unspecified, loopback or multicast)", p)
	}
	if a.Is4() && p.Bits() < 31 {
		host := ^uint32(0) >> p.Bits()
		v := binary.BigEndian.Uint32(a.AsSlice())
		if v&host == 0 || v&host == host {
			return fmt.Errorf("%s: that is the network's own or broadcast address; give a host address in it, e.g. %s/%d",
				p, p.Masked().Addr().Next(), p.Bits())
		}
	}
	return nil
}

// AddAddr assigns prefix to the interface called name, any interface, not
// only a TAP (RTM_NEWADDR; an address it already has is replaced, not an
// error). The guest agent's ifconfig uses it too.
//
// Concurrency: safe from any goroutine.
func AddAddr(name string, prefix netip.Prefix) error {
	if err := CheckAddr(prefix); err != nil {
		return fmt.Errorf("tap: %s: %w", name, err)
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return fmt.Errorf("tap: add address %s to %s: %w", prefix, name, err)
	}
	seq := nlSeq.Add(1)
	if err := netlinkDo(addrRequest(ifi.Index, prefix, seq), seq); err != nil {
		hint := ""
		if errors.Is(err, unix.EPERM) {
			hint = " (needs CAP_NET_ADMIN: run as root)"
		}
		return fmt.Errorf("tap: add address %s to %s: %w%s", prefix, name, err, hint)
	}
	return nil
}

// SetLinkUp brings the interface called name up (IFF_UP), any interface.
//
// Concurrency: safe from any goroutine.
func SetLinkUp(name string) error { return setUp(name) }

// nlSeq numbers our netlink requests, so an answer is matched to its request.
var nlSeq atomic.Uint32

// addrRequest is the RTM_NEWADDR message that puts p on interface index:
// nlmsghdr, ifaddrmsg, then IFA_LOCAL and IFA_ADDRESS (the same address: no
// peer), each attribute padded to 4 bytes.
func addrRequest(index int, p netip.Prefix, seq uint32) []byte {
	family, addr := byte(unix.AF_INET), p.Addr().AsSlice()
	if p.Addr().Is6() {
		family = unix.AF_INET6
	}
	attr := nlAlign(unix.SizeofRtAttr + len(addr))
	b := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofIfAddrmsg+2*attr)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.RTM_NEWADDR)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	ne.PutUint32(b[8:], seq)
	m := b[unix.NLMSG_HDRLEN:]
	m[0], m[1] = family, byte(p.Bits()) // flags and scope (universe) stay 0
	ne.PutUint32(m[4:], uint32(index))
	off := unix.NLMSG_HDRLEN + unix.SizeofIfAddrmsg
	for _, typ := range []uint16{unix.IFA_LOCAL, unix.IFA_ADDRESS} {
		ne.PutUint16(b[off:], uint16(unix.SizeofRtAttr+len(addr)))
		ne.PutUint16(b[off+2:], typ)
		copy(b[off+unix.SizeofRtAttr:], addr)
		off += attr
	}
	return b
}

func nlAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// parseAck reads one netlink datagram from the kernel for our request seq:
// done with a nil error for its ACK, done with the errno for its error,
// not done when it holds only other messages. Bounds are checked, as a
// short or malformed datagram must give an error, never a panic.
func parseAck(b []byte, seq uint32) (done bool, err error) {
	ne := binary.NativeEndian
	for off := 0; off < len(b); {
		if len(b)-off < unix.NLMSG_HDRLEN {
			return true, fmt.Errorf("netlink: truncated header (%d bytes)", len(b)-off)
		}
		l := int(ne.Uint32(b[off:]))
		if l < unix.NLMSG_HDRLEN || l > len(b)-off {
			return true, fmt.Errorf("netlink: bad message length %d", l)
		}
		typ, mseq := ne.Uint16(b[off+4:]), ne.Uint32(b[off+8:])
		if mseq == seq && typ == unix.NLMSG_ERROR {
			if l < unix.NLMSG_HDRLEN+4 {
				return true, errors.New("netlink: truncated error message")
			}
			if e := int32(ne.Uint32(b[off+unix.NLMSG_HDRLEN:])); e != 0 {
				return true, unix.Errno(-e)
			}
			return true, nil
		}
		off += nlAlign(l)
	}
	return false, nil
}

// netlinkDo sends req (whose sequence number is seq) to the kernel's routing
// socket and waits, at most 5 s, for its answer.
func netlinkDo(req []byte, seq uint32) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 8192)
	// Only the kernel writes to this fresh socket; a few datagrams at most
	// come before the answer.
	for range 16 {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue
		}
		if done, err := parseAck(buf[:n], seq); done {
			return err
		}
	}
	return errors.New("netlink: no answer to the request")
}
