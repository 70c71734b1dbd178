package vale

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
)

// TestTapOnSwitch attaches a real TAP to a switch through a BackendPort pump: frames
// from a netmap port come out of the TAP on the host side, and frames the host
// sends into the TAP reach the netmap port.
func TestTapOnSwitch(t *testing.T) {
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create TAP interfaces here: " + why)
	}
	name := fmt.Sprintf("ptvv%d", os.Getpid()%100000)
	tp, err := tap.Open(tap.Options{Name: name})
	require.NoError(t, err)
	defer tp.Close()

	// Host side: a packet socket on the interface, for our test EtherType only.
	const etherType = 0x88b5
	proto := etherType<<8&0xff00 | etherType>>8
	ifi, err := net.InterfaceByName(name)
	require.NoError(t, err)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}))

	s, err := New("vale5")
	require.NoError(t, err)
	bp, err := s.AttachBackend("tap", tp.Queue(0), BackendOptions{})
	require.NoError(t, err)
	defer bp.Close()
	require.NoError(t, bp.Start())
	p, err := s.NewPort("vm", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer p.Detach()
	u := newUser(t, p)

	// Switch -> TAP -> host.
	out := eth(bcastMAC, mac(0x1), 60, 0x5157)
	u.send(out)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	buf := make([]byte, 2048)
	for {
		n, err := unix.Poll(pfd, 5000)
		require.NoError(t, err)
		require.Equal(t, 1, n, "frame did not come out of the TAP within 5 s")
		k, err := unix.Read(fd, buf)
		require.NoError(t, err)
		if k >= 18 && binary.BigEndian.Uint32(buf[14:]) == 0x5157 {
			assert.Equal(t, out, buf[:k])
			break
		}
	}

	// Host -> TAP -> switch -> netmap port (flooded: the host MAC is unknown).
	in := eth(mac(0x1), mac(0x2), 60, 0x1234)
	_, err = unix.Write(fd, in)
	require.NoError(t, err)
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	require.NoError(t, err)
	defer unix.Close(efd)
	p.Netmap().RxRing(0).SetNotify(func() {
		one := [8]byte{1}
		unix.Write(efd, one[:])
	})
	defer p.Netmap().RxRing(0).SetNotify(nil)
	for found := false; !found; {
		for _, f := range u.recv() {
			if len(f) >= 18 && binary.BigEndian.Uint32(f[14:]) == 0x1234 {
				assert.Equal(t, in, f)
				found = true
			}
		}
		if !found {
			n, err := unix.Poll([]unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}}, 5000)
			require.NoError(t, err)
			require.Equal(t, 1, n, "host frame did not reach the switch port within 5 s")
			var b [8]byte
			unix.Read(efd, b[:])
		}
	}
	where, ok := s.Learning().Where(mac(0x2))
	require.True(t, ok)
	assert.Equal(t, bp.Port().Index(), where, "the host MAC was learned on the TAP port")
}
