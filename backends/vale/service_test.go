package vale

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/pcap"
)

// Two clients attach host ports to vale0 in the service and exchange frames both
// ways through it; the listing's counters agree with what was sent.
func TestServiceHostPortsSwitch(t *testing.T) {
	s := startService(t, ServiceConfig{})
	ca, cb := dial(t, s.Path()), dial(t, s.Path())
	a := openHost(t, ca, "vale0:a", 256)
	b := openHost(t, cb, "vale0:b", 256)
	ma, mb := mac(0xa), mac(0xb)
	learn(t, a, ma)
	learn(t, b, mb)
	hostRecv(t, a, 1, 2*time.Second) // b's broadcast
	hostRecv(t, b, 1, 2*time.Second) // a's broadcast

	// The switch drops what finds the receiver's ring full (it never waits), and
	// the slots a receiver releases reach the switch when its host loop next runs
	// (netmap does not kick for releases until the ring is full): so a burst
	// fits when it is below half the ring.
	const n, burst = 1000, 100
	var got [][]byte
	for i := 0; i < n; i += burst {
		hostSend(t, a, frames(mb, ma, burst, uint32(i))...)
		got = append(got, hostRecv(t, b, burst, 10*time.Second)...)
	}
	require.Equal(t, n, len(from(got, ma)))
	require.Equal(t, uint32(0), tagOf(got[0]))
	require.Equal(t, uint32(n-1), tagOf(got[n-1]), "in order")

	hostSend(t, b, frames(ma, mb, 10, 100)...)
	back := hostRecv(t, a, 10, 5*time.Second)
	require.Equal(t, 10, len(from(back, mb)))

	es, err := ca.List()
	require.NoError(t, err)
	ea, eb := findEntry(es, "vale0", "a"), findEntry(es, "vale0", "b")
	require.NotNil(t, ea)
	require.NotNil(t, eb)
	require.Equal(t, uint64(n+1), ea.TxFrames, "a sent its broadcast and n frames")
	require.Equal(t, uint64(n+1), eb.RxFrames, "b got a's broadcast and n frames")
	require.Equal(t, uint64(11), eb.TxFrames)
	require.Equal(t, uint64(11), ea.RxFrames)
	require.Equal(t, uint32(os.Getpid()), ea.OwnerPID)
	require.True(t, ea.Loop)
	require.Greater(t, ea.LoopKicks, uint64(0))
	require.Zero(t, ea.Drops+eb.Drops)
}

func tagOf(f []byte) uint32 {
	return uint32(f[14])<<24 | uint32(f[15])<<16 | uint32(f[16])<<8 | uint32(f[17])
}

// A pipe in the service: its two ends opened by two clients.
func TestServiceHostPortsPipe(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c1, c2 := dial(t, s.Path()), dial(t, s.Path())
	m := openHost(t, c1, "pp{1", 128)
	sl := openHost(t, c2, "pp}1", 128)
	// A pipe keeps what its peer has no room for: a sender may run ahead.
	done := make(chan struct{})
	go func() {
		defer close(done)
		hostSend(t, m, frames(mac(2), mac(1), 500, 0)...)
	}()
	require.Equal(t, 500, len(hostRecv(t, sl, 500, 10*time.Second)))
	<-done
	hostSend(t, sl, frames(mac(1), mac(2), 7, 0)...)
	require.Equal(t, 7, len(hostRecv(t, m, 7, 5*time.Second)))

	es, err := c1.List()
	require.NoError(t, err)
	e := findEntry(es, "", "pp{1")
	require.NotNil(t, e)
	require.Equal(t, uint8(KindPipeEnd), e.Kind)
	require.NotNil(t, findEntry(es, "", "pp}1"))

	// The end is taken while open.
	_, err = c2.Attach("pp{1", netmap.PortConfig{})
	require.ErrorIs(t, err, unix.EBUSY)
}

// A DriverEndpoint is a backends.Port on a service port: Send, Recv, and a
// ReadyFD that becomes readable when frames arrive.
func TestServiceEndpoint(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c := dial(t, s.Path())
	e1, err := c.OpenEndpoint("vale1:e1")
	require.NoError(t, err)
	defer e1.Close()
	e2, err := c.OpenEndpoint("vale1:e2")
	require.NoError(t, err)
	defer e2.Close()

	bufs := [][]byte{make([]byte, 2048), make([]byte, 2048)}
	lens := make([]int, 2)
	n, err := e2.Recv(bufs, lens)
	require.NoError(t, err)
	require.Zero(t, n)
	require.False(t, fdReadable(t, e2.ReadyFD(), 0), "nothing arrived yet")

	big := eth(bcastMAC, mac(1), 5000, 7) // three buffers: a MOREFRAG chain
	k, err := e1.Send([][]byte{eth(bcastMAC, mac(1), 60, 1), big})
	require.NoError(t, err)
	require.Equal(t, 2, k)
	require.True(t, fdReadable(t, e2.ReadyFD(), 5*time.Second), "ReadyFD after delivery")
	got := 0
	waitFor(t, 5*time.Second, "two frames", func() bool {
		n, err := e2.Recv(bufs[got:], lens[got:])
		require.NoError(t, err)
		got += n
		return got == 2
	})
	require.Equal(t, 60, lens[0])
	require.Equal(t, 2048, lens[1], "cut to the caller's buffer")
	tr, _, _ := e2.Stats()
	require.Equal(t, uint64(1), tr)
	require.Equal(t, big[:2048], bufs[1][:2048])
}

func fdReadable(t testing.TB, fd int, timeout time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(timeout/time.Millisecond))
		if err == unix.EINTR {
			continue
		}
		require.NoError(t, err)
		return n > 0
	}
}

// Capture writes a port's frames into a file the client opened; the file reads
// back as pcap with the right frame count.
func TestServiceCapture(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c := dial(t, s.Path())
	a := openHost(t, c, "vale0:a", 64)
	b := openHost(t, c, "vale0:b", 64)
	path := filepath.Join(t.TempDir(), "a.pcap")
	f, err := os.Create(path)
	require.NoError(t, err)
	stop, err := c.Capture("vale0:a", MonitorTX, f, 0)
	require.NoError(t, err)
	f.Close() // the service has its own descriptor
	hostSend(t, a, frames(bcastMAC, mac(0xa), 25, 0)...)
	hostRecv(t, b, 25, 5*time.Second)
	pk, dr, err := stop()
	require.NoError(t, err)
	require.Equal(t, uint64(25), pk)
	require.Zero(t, dr)

	rf, err := os.Open(path)
	require.NoError(t, err)
	defer rf.Close()
	r, err := pcap.NewReader(rf)
	require.NoError(t, err)
	n := 0
	for {
		rec, err := r.Next()
		if err != nil {
			break
		}
		require.Len(t, rec.Data, 60)
		n++
	}
	require.Equal(t, 25, n)
	if ts, err := exec.LookPath("tshark"); err == nil {
		out, err := exec.Command(ts, "-r", path, "-T", "fields", "-e", "frame.len").Output()
		require.NoError(t, err)
		lens := strings.Fields(string(out))
		require.Len(t, lens, 25, "tshark reads 25 frames")
		require.Equal(t, "60", lens[0])
	}

	_, err = c.Capture("vale0:nosuch", MonitorBoth, rf, 0)
	require.ErrorIs(t, err, unix.ENOENT)
	_, err = c.Capture("vale0:a", MonitorBoth, rf, 0)
	require.ErrorIs(t, err, unix.EBADF, "a read-only file is refused")
}

// The service stopping ends every client: Done closes, requests fail with
// ErrServiceGone, nothing hangs; the port memory a client mapped stays valid.
func TestServiceCloseClientsSeeError(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c := dial(t, s.Path())
	h := openHost(t, c, "vale0:a", 64)
	down := make(chan error, 1)
	c.OnDown(func(err error) { down <- err })
	e, err := c.OpenEndpoint("vale0:e")
	require.NoError(t, err)
	linkDown := make(chan struct{}, 2)
	e.OnDown(func() { linkDown <- struct{}{} })
	closedEP, err := c.OpenEndpoint("vale0:f")
	require.NoError(t, err)
	closedEP.OnDown(func() { t.Error("OnDown ran for a closed endpoint") })
	require.NoError(t, closedEP.Close())
	require.NoError(t, s.Close())
	select {
	case err := <-down:
		require.ErrorIs(t, err, ErrServiceGone)
	case <-time.After(5 * time.Second):
		t.Fatal("client did not notice the service closing")
	}
	<-c.Done()
	require.Len(t, linkDown, 1, "the endpoint's OnDown ran once")
	_, err = c.List()
	require.ErrorIs(t, err, ErrServiceGone)
	require.NoError(t, e.Close())
	// The driver's memory is still mapped: using it is harmless, nothing answers.
	hostSend(t, h, eth(bcastMAC, mac(1), 60, 0))
	require.NoError(t, h.Close(), "closing after the service went is quiet")
	_, err = Dial(s.Path())
	require.Error(t, err)
}

// Peer credentials: a uid the service does not allow is refused with EACCES.
func TestServicePeerCredentials(t *testing.T) {
	s := startService(t, ServiceConfig{AllowUID: func(uid uint32) bool { return false }})
	_, err := Dial(s.Path())
	require.ErrorIs(t, err, unix.EACCES)
	require.Equal(t, uint64(1), s.Stats().Refused)
	fi, err := os.Stat(s.Path())
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

// A second service on a live socket is refused; a stale socket is replaced.
func TestServiceSocketInUse(t *testing.T) {
	s := startService(t, ServiceConfig{})
	_, err := NewService(ServiceConfig{Socket: s.Path()})
	require.ErrorContains(t, err, "already listens")

	stale := filepath.Join(t.TempDir(), "stale.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	require.NoError(t, err)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrUnix{Name: stale}))
	unix.Close(fd) // bound, never listened: a leftover file
	s2 := startService(t, ServiceConfig{Socket: stale})
	c := dial(t, s2.Path())
	require.NotZero(t, c.ServicePID())
}

// MOVE_CSB: the loop moves to a new CSB (written from the rings' state) and the
// port keeps working through a driver opened on the new CSB.
func TestServiceMoveCSB(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c := dial(t, s.Path())
	a := openHost(t, c, "vale0:a", 64)
	b := openHost(t, c, "vale0:b", 64)
	hostSend(t, a, frames(bcastMAC, mac(0xa), 5, 0)...)
	require.Equal(t, 5, len(hostRecv(t, b, 5, 5*time.Second)))

	fd, mem, err := newCSBMemfd(4 * csbPage)
	require.NoError(t, err)
	defer unix.Close(fd)
	defer unix.Munmap(mem)
	n := a.Port.NumRings()
	csb, err := netmap.NewCSB(mem[2*csbPage:], mem[3*csbPage:], n)
	require.NoError(t, err)
	csb.SetApplNeedKick(1, 1)
	require.NoError(t, a.Port.MoveCSB(CSBRef{fd, 2 * csbPage}, CSBRef{fd, 3 * csbPage}))
	require.Equal(t, uint32(1), csb.KernNeedKick(0), "the new CSB was written from the rings")
	require.Equal(t, uint32(5), csb.HwCur(0), "TX hwcur after 5 frames")
	drv, err := netmap.NewDriver(netmap.DriverConfig{Mem: a.Mem(), Nifp: a.Port.Info().Nifp, CSB: csb,
		Kick: netmap.EventFDKick(a.Kicks), Wait: netmap.EventFDWait(a.Irqs)})
	require.NoError(t, err)
	a.Driver = drv
	hostSend(t, a, frames(bcastMAC, mac(0xa), 5, 5)...)
	require.Equal(t, 5, len(hostRecv(t, b, 5, 5*time.Second)))

	// Overlapping arrays are refused, and the loop still runs on the old ones.
	err = a.Port.MoveCSB(CSBRef{fd, 0}, CSBRef{fd, 64})
	require.ErrorIs(t, err, unix.EINVAL)
	hostSend(t, a, frames(bcastMAC, mac(0xa), 2, 10)...)
	require.Equal(t, 2, len(hostRecv(t, b, 2, 5*time.Second)))
}

// STOP and START again: the port keeps its rings, the loop resumes.
func TestServiceStopStart(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c := dial(t, s.Path())
	a := openHost(t, c, "vale0:a", 64)
	b := openHost(t, c, "vale0:b", 64)
	require.NoError(t, a.Port.Stop())
	es, err := c.List()
	require.NoError(t, err)
	require.False(t, findEntry(es, "vale0", "a").Loop)
	require.Equal(t, uint64(1), s.Stats().Loops, "b's loop only")
	err = a.Port.Start(CSBRef{a.CSBFD(), 0}, CSBRef{a.CSBFD(), csbPage}, a.Kicks, a.Irqs, 0, 0)
	require.NoError(t, err)
	err = a.Port.Start(CSBRef{a.CSBFD(), 0}, CSBRef{a.CSBFD(), csbPage}, a.Kicks, a.Irqs, 0, 0)
	require.ErrorIs(t, err, unix.EBUSY, "START twice")
	hostSend(t, a, frames(bcastMAC, mac(0xa), 3, 0)...)
	require.Equal(t, 3, len(hostRecv(t, b, 3, 5*time.Second)))
}

// No goroutine or descriptor leak across 1,000 attach, start, stop, detach cycles.
func TestServiceAttachDetachNoLeak(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 cycles")
	}
	s := startService(t, ServiceConfig{Logf: func(string, ...any) {}})
	c := dial(t, s.Path())
	cycle := func() {
		h, err := c.OpenHostPort("vale0:cyc", HostPortConfig{TxSlots: 8, RxSlots: 8})
		require.NoError(t, err)
		require.NoError(t, h.Close())
	}
	for i := 0; i < 10; i++ {
		cycle() // warm up pools and the runtime's threads
	}
	g0, f0 := goroutines(), len(openFDs(t))
	for i := 0; i < 1000; i++ {
		cycle()
	}
	waitFor(t, 5*time.Second, "goroutines back", func() bool { return goroutines() <= g0 })
	require.Equal(t, f0, len(openFDs(t)), "descriptors")
	st := s.Stats()
	require.Zero(t, st.Ports)
	require.Zero(t, st.Loops)
}

func goroutines() int { return runtime.NumGoroutine() }

// A request the service refuses does not end the connection.
func TestServiceErrorsKeepServing(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c := dial(t, s.Path())
	_, err := c.Attach("netmap:eth0", netmap.PortConfig{})
	require.ErrorIs(t, err, unix.EINVAL)
	_, err = c.Attach("vale0:", netmap.PortConfig{})
	require.Error(t, err)
	_, err = c.Attach("vale0:x", netmap.PortConfig{TxSlots: 1})
	require.Error(t, err)
	h := openHost(t, c, "vale0:x", 32)
	_, err = c.Attach("vale0:x", netmap.PortConfig{})
	require.ErrorIs(t, err, unix.EEXIST)
	var se *ServiceError
	require.True(t, errors.As(err, &se))
	require.Equal(t, MsgAttach, se.Op)
	require.ErrorIs(t, c.DetachTap("vale0", "tapnone"), unix.ENOENT)
	hostSend(t, h, eth(bcastMAC, mac(1), 60, 0))
	_, err = c.List()
	require.NoError(t, err)
}
