package bench

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/guest/pktgen"
)

var _ backends.Port = (*packetPort)(nil)

// packetPort is the host's side of a TAP as any host program sees it: an AF_PACKET
// socket bound to the interface and to pktgen's EtherType, read and written in
// batches (recvmmsg, sendmmsg). What the guest sends on the TAP arrives here; what is
// sent here leaves through the TAP into the guest.
//
// Concurrency: as backends.Port (one Send and one Recv at a time, may overlap).
type packetPort struct {
	fd     int
	name   string
	rx, tx *mmsgs
	// frames offered but refused by the socket (buffer full) are the caller's
}

// openPacket opens the socket on interface ifname. Its buffers are made large so that
// a burst from the device is not lost before the reader runs.
func openPacket(ifname string) (*packetPort, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("bench: packet socket on %s: %w", ifname, err)
	}
	// Protocol 0 at creation: nothing is queued before the bind below names the
	// interface and the EtherType.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bench: packet socket on %s: %w", ifname, err)
	}
	proto := htons(pktgen.EtherType)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bench: bind packet socket to %s: %w", ifname, err)
	}
	// Best effort: larger buffers (root may force them), no qdisc on send.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 16<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
	return &packetPort{fd: fd, name: ifname, rx: newMmsgs(256), tx: newMmsgs(256)}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (p *packetPort) Name() string { return "packet:" + p.name }

// Send writes frames with sendmmsg; frames the socket refused now are not taken.
func (p *packetPort) Send(frames [][]byte) (int, error) {
	done := 0
	for done < len(frames) {
		n := p.tx.set(frames[done:])
		if n == 0 {
			return done, errors.New("bench: packet socket: empty frame")
		}
		k, err := p.tx.mmsg(unix.SYS_SENDMMSG, p.fd, n, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOBUFS):
			return done, nil
		case err != nil:
			return done, fmt.Errorf("bench: send on %s: %w", p.name, err)
		}
		done += k
		if k < n {
			return done, nil
		}
	}
	return done, nil
}

// Recv reads up to len(bufs) frames with recvmmsg; it never blocks.
func (p *packetPort) Recv(bufs [][]byte, lens []int) (int, error) {
	n := p.rx.set(bufs[:min(len(bufs), len(lens))])
	for {
		k, err := p.rx.mmsg(unix.SYS_RECVMMSG, p.fd, n, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, nil
		case err != nil:
			return 0, fmt.Errorf("bench: receive on %s: %w", p.name, err)
		}
		for i := range k {
			lens[i] = min(int(p.rx.hdrs[i].Len), len(bufs[i]))
		}
		return k, nil
	}
}

// ReadyFD is the socket: readable when frames are queued.
func (p *packetPort) ReadyFD() int { return p.fd }

func (p *packetPort) Close() error { return unix.Close(p.fd) }

// quietIPv6 turns IPv6 off on a fresh TAP, so the host stack sends no router
// solicitations or MLD reports into the guest during a run (best effort).
func quietIPv6(ifname string) {
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1\n"), 0o644)
}
