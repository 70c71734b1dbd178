package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
)

var _ backends.Port = (*Queue)(nil)

const testEtherType = 0x88b5 // IEEE local experimental: nothing else on the link uses it

func needTap(t *testing.T) {
	t.Helper()
	if ok, why := CanCreate(); !ok {
		t.Skip("cannot create TAP interfaces here: " + why)
	}
}

func tapName(t *testing.T, suffix string) string {
	return fmt.Sprintf("ptvt%d%s", os.Getpid()%100000, suffix)
}

// packetSocket is a raw socket on the host side of the TAP.
func packetSocket(t *testing.T, name string) (int, int) {
	ifi, err := net.InterfaceByName(name)
	require.NoError(t, err)
	proto := htons(testEtherType)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	require.NoError(t, unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}))
	return fd, ifi.Index
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func frame(payload string) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], []byte{0x02, 0, 0, 0, 0, 1})
	copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(f[12:], testEtherType)
	return append(f, payload...)
}

func waitReadable(t *testing.T, fd int) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 5000)
	require.NoError(t, err)
	require.Equal(t, 1, n, "fd %d did not become readable within 5s", fd)
}

func TestCreateExchangeAndRemove(t *testing.T) {
	needTap(t)
	name := tapName(t, "a")
	require.False(t, Exists(name))
	tp, err := Open(Options{Name: name, Queues: 2, VnetHdr: true})
	require.NoError(t, err)
	defer tp.Close()
	assert.True(t, tp.Created())
	assert.True(t, Exists(name))
	assert.Equal(t, 2, tp.NumQueues())
	ifi, err := net.InterfaceByName(name)
	require.NoError(t, err)
	assert.NotZero(t, ifi.Flags&net.FlagUp, "a created TAP is brought up")
	require.NoError(t, tp.SetMTU(9000))
	ifi, err = net.InterfaceByName(name)
	require.NoError(t, err)
	assert.Equal(t, 9000, ifi.MTU)
	require.NoError(t, tp.SetVnetHdrSize(12))
	require.NoError(t, tp.SetOffload(OffloadCsum|OffloadTSO4|OffloadTSO6))

	ps, _ := packetSocket(t, name)
	// Guest -> host: header and frame gathered from separate buffers.
	hdr := make([]byte, 12)
	f := frame("guest to host")
	n, err := tp.Queue(1).Writev([][]byte{hdr, f[:10], f[10:]})
	require.NoError(t, err)
	assert.Equal(t, 12+len(f), n)
	waitReadable(t, ps)
	got := make([]byte, 2048)
	m, _, err := unix.Recvfrom(ps, got, 0)
	require.NoError(t, err)
	assert.Equal(t, f, got[:m])

	// Host -> guest: the frame shows up with a 12-byte header on one of the queues.
	out := frame("host to guest")
	ifi, _ = net.InterfaceByName(name)
	require.NoError(t, unix.Sendto(ps, out, 0, &unix.SockaddrLinklayer{Protocol: htons(testEtherType), Ifindex: ifi.Index, Halen: 6, Addr: [8]byte{0x02, 0, 0, 0, 0, 1}}))
	found := false
	for !found {
		pfd := []unix.PollFd{{Fd: int32(tp.Queue(0).FD()), Events: unix.POLLIN}, {Fd: int32(tp.Queue(1).FD()), Events: unix.POLLIN}}
		k, err := unix.Poll(pfd, 5000)
		require.NoError(t, err)
		require.NotZero(t, k, "frame never arrived")
		for i := range pfd {
			if pfd[i].Revents&unix.POLLIN == 0 {
				continue
			}
			h, body := make([]byte, 12), make([]byte, 2048)
			r, err := tp.Queue(i).Readv([][]byte{h, body})
			require.NoError(t, err)
			if r >= 12+14 && bytes.Equal(body[:r-12], out) {
				found = true
			}
		}
	}

	require.NoError(t, tp.Close())
	assert.False(t, Exists(name), "a TAP created by Open goes away on Close")
}

func TestPortSendRecv(t *testing.T) {
	needTap(t)
	name := tapName(t, "p")
	tp, err := Open(Options{Name: name})
	require.NoError(t, err)
	defer tp.Close()
	q := tp.Queue(0)
	ps, idx := packetSocket(t, name)
	f := frame("port send")
	n, err := q.Send([][]byte{f, f})
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	waitReadable(t, ps)
	got := make([]byte, 2048)
	m, _, err := unix.Recvfrom(ps, got, 0)
	require.NoError(t, err)
	assert.Equal(t, f, got[:m])

	// Nothing pending from our side right now is fine: Recv never blocks.
	require.NoError(t, unix.Sendto(ps, frame("port recv"), 0, &unix.SockaddrLinklayer{Protocol: htons(testEtherType), Ifindex: idx, Halen: 6}))
	bufs, lens := [][]byte{make([]byte, 2048)}, []int{0}
	for {
		waitReadable(t, q.ReadyFD())
		k, err := q.Recv(bufs, lens)
		require.NoError(t, err)
		if k == 1 && bytes.Equal(bufs[0][:lens[0]], frame("port recv")) {
			break
		}
	}
}

func TestRemovedUnderUs(t *testing.T) {
	needTap(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip command to delete the link with")
	}
	name := tapName(t, "d")
	tp, err := Open(Options{Name: name, VnetHdr: true})
	require.NoError(t, err)
	defer tp.Close()
	require.NoError(t, exec.Command("ip", "link", "del", name).Run())
	_, err = tp.Queue(0).Writev([][]byte{make([]byte, 10), frame("x")})
	require.ErrorIs(t, err, ErrGone)
	_, err = tp.Queue(0).Readv([][]byte{make([]byte, 2048)})
	require.ErrorIs(t, err, ErrGone)
}

func TestBadOptions(t *testing.T) {
	_, err := Open(Options{Name: ""})
	assert.Error(t, err)
	_, err = Open(Options{Name: "a-name-that-is-far-too-long"})
	assert.Error(t, err)
	_, err = Open(Options{Name: "ptvnonexist0", NoCreate: true})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ip tuntap add ptvnonexist0 mode tap")
	assert.Contains(t, hint(unix.EPERM, false, "x"), "CAP_NET_ADMIN")
	assert.False(t, errors.Is(wrap("read", &Queue{tap: &Tap{name: "x"}}, unix.EAGAIN), ErrGone))
}

// BenchmarkWritev sends 1514-byte frames (12-byte header + frame in two iovecs) into
// a TAP nobody reads (the kernel drops them after the tap's queue): the per-frame
// cost of the TX syscall path.
func BenchmarkWritev(b *testing.B) {
	if ok, why := CanCreate(); !ok {
		b.Skip("cannot create TAP interfaces here: " + why)
	}
	tp, err := Open(Options{Name: fmt.Sprintf("ptvb%d", os.Getpid()%100000), VnetHdr: true})
	require.NoError(b, err)
	defer tp.Close()
	require.NoError(b, tp.SetVnetHdrSize(12))
	iovs := [][]byte{make([]byte, 12), frame(string(make([]byte, 1500)))}
	q := tp.Queue(0)
	b.ReportAllocs()
	b.SetBytes(int64(len(iovs[1])))
	for b.Loop() {
		if _, err := q.Writev(iovs); err != nil {
			b.Fatal(err)
		}
	}
}
