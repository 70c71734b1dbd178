package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/guest/initramfs"
	"github.com/ptvmm/ptvmm/internal/testhost"
	"github.com/ptvmm/ptvmm/vmm"
)

// seqPort is a frame backend over one end of a SOCK_SEQPACKET socketpair (frames
// keep their boundaries; the test holds the other end).
type seqPort struct{ fd int }

func (s *seqPort) Name() string { return "seqpacket" }
func (s *seqPort) ReadyFD() int { return s.fd }
func (s *seqPort) Close() error { return unix.Close(s.fd) }
func (s *seqPort) Send(f [][]byte) (int, error) {
	for i, b := range f {
		if _, err := unix.Write(s.fd, b); err != nil {
			return i, err
		}
	}
	return len(f), nil
}
func (s *seqPort) Recv(bufs [][]byte, lens []int) (int, error) {
	for i := range bufs {
		n, err := unix.Read(s.fd, bufs[i])
		if err == unix.EAGAIN {
			return i, nil
		}
		if err != nil {
			return i, err
		}
		lens[i] = n
	}
	return len(bufs), nil
}

var netCheckCmd = "/bin/ptvmm-agent cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu /proc/interrupts"

// bootNIC boots the guest with nic and runs cmd; it returns the console.
func bootNIC(t *testing.T, nic vmm.NIC, cmd string) (*console, *vmm.NICDevice) {
	t.Helper()
	dir := requireGuest(t)
	k, err := testhost.LoadKernel(filepath.Join(dir, testhost.AssetKernelDir))
	require.NoError(t, err)
	mods, err := testhost.GuestModuleArg(k, "virtio-net")
	require.NoError(t, err)
	c := &console{start: time.Now()}
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { c.feed(pr); close(done) }()
	watch := vmm.NewAgentWatcher(pw)
	vm, err := vmm.New(vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  filepath.Join(dir, testhost.AssetGuestInit),
		Cmdline: testhost.GuestCmdline(cmd, mods),
		MemSize: 512 << 20,
		CPUs:    2,
		Console: watch,
		Start:   c.start,
	})
	if err != nil {
		pw.Close()
		<-done
		require.NoError(t, err)
	}
	defer vm.Close()
	nd, err := vm.AddNIC(0, nic)
	require.NoError(t, err)
	// The NIC goes before the VM: its doorbells and interrupts live on the VM fd.
	defer func() { assert.NoError(t, nd.Close()) }()

	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	runErr := vm.Run(ctx)
	pw.Close()
	<-done
	fail := func() string { return failHint + "last console lines:\n" + c.tail(60) }
	require.NoError(t, runErr, fail())
	status, ok := watch.ExitStatus()
	require.True(t, ok, "no exit status; %s", fail())
	assert.Equal(t, 0, status, fail())
	t.Logf("inner guest with a NIC: agent ready %.2fs, done %.2fs", c.ready.Seconds(), time.Since(c.start).Seconds())
	return c, nd
}

// checkNIC asserts what netCheckCmd printed: our MAC, the MTU we offered and one
// MSI-X vector per queue plus the config vector.
func checkNIC(t *testing.T, c *console, mac string, mtu int) {
	t.Helper()
	fail := func() string { return failHint + "last console lines:\n" + c.tail(60) }
	assert.True(t, c.hasLine(mac), "eth0 has not our MAC %s; %s", mac, fail())
	assert.True(t, c.hasLine(fmt.Sprint(mtu)), "eth0 MTU is not %d; %s", mtu, fail())
	out := c.text()
	for _, irq := range []string{"virtio0-config", "virtio0-input.0", "virtio0-output.0", "virtio0-input.1", "virtio0-output.1"} {
		assert.True(t, strings.Contains(out, irq), "no MSI-X vector %s in /proc/interrupts; %s", irq, fail())
	}
}

// TestVirtioNetGuest boots Debian's kernel with a two-pair virtio-net NIC whose
// backend is a pair of socketpairs: Linux's virtio_net must bind (through the
// transitional device's legacy registers), show eth0 with our MAC and MTU, and get
// one MSI-X vector per queue.
func TestVirtioNetGuest(t *testing.T) {
	requireGuest(t)
	var ports []backends.Port
	for i := 0; i < 2; i++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		t.Cleanup(func() { unix.Close(fds[1]) })
		ports = append(ports, &seqPort{fd: fds[0]})
	}
	c, _ := bootNIC(t, vmm.NIC{Ports: ports, PortsVnetHdr: true, Queues: 2, MAC: [6]byte{0x52, 0x54, 0, 0xab, 0xcd, 0xef}, MTU: 9000}, netCheckCmd)
	checkNIC(t, c, "52:54:00:ab:cd:ef", 9000)
}

// TestVirtioNetGuestTAP is the same on a TAP the VMM creates, which is gone after
// the NIC is closed.
func TestVirtioNetGuestTAP(t *testing.T) {
	requireGuest(t)
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create a TAP: " + why)
	}
	name := fmt.Sprintf("ptve%d", os.Getpid()%10000)
	c, _ := bootNIC(t, vmm.NIC{Tap: name, Queues: 2, MTU: 9000}, netCheckCmd)
	checkNIC(t, c, "52:54:00:12:34:56", 9000)
	assert.False(t, tap.Exists(name), "the TAP the VMM created is removed")
}

// Addresses of the traffic test: the test plays the host at hostIP on the other end
// of the NIC's socketpair, answering ARP and ICMP itself.
var (
	hostMAC  = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	guestMAC = [6]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	hostIP   = [4]byte{10, 0, 2, 1}
	guestIP  = [4]byte{10, 0, 2, 2}
)

const (
	netHelperEnv = "PTVMM_NETHELPER"
	doneUDPPort  = 7777
	vnetHdrLen   = 12
)

// TestVirtioNetTraffic boots a guest whose initramfs holds this test binary as a
// helper (TestGuestNetHelper): it configures eth0 and pings the host; the host side
// answers ARP and echo requests and pings the guest, whose kernel answers. Both
// directions must work through the device's RX and TX paths.
func TestVirtioNetTraffic(t *testing.T) {
	dir := requireGuest(t)
	if _, err := os.Stat("/init"); err != nil {
		t.Skip("no agent at /init to reuse for the guest (not in the test host)")
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	k, err := testhost.LoadKernel(filepath.Join(dir, testhost.AssetKernelDir))
	require.NoError(t, err)
	mods, err := k.Modules("virtio-net")
	require.NoError(t, err)
	spec := initramfs.Spec{Init: "/init", Env: []string{netHelperEnv + "=1"}}
	for _, m := range mods {
		spec.Modules = append(spec.Modules, k.ModulePath(m))
	}
	spec.Files = append(spec.Files, initramfs.File{Guest: "/bin/nethelper", Host: exe, Mode: 0o755})
	img := filepath.Join(t.TempDir(), "guest.cpio")
	require.NoError(t, initramfs.BuildFile(img, spec))

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	host := fds[1]
	defer unix.Close(host)
	h := &hostSide{t: t, fd: host, stop: make(chan struct{})}
	h.wg.Add(1)
	go h.run()
	defer h.close()

	c := &console{start: time.Now()}
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { c.feed(pr); close(done) }()
	watch := vmm.NewAgentWatcher(pw)
	vm, err := vmm.New(vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  img,
		Cmdline: testhost.GuestCmdline("/bin/nethelper -test.run=^TestGuestNetHelper$ -test.v"),
		MemSize: 512 << 20,
		CPUs:    2,
		Console: watch,
		Start:   c.start,
	})
	if err != nil {
		pw.Close()
		<-done
		require.NoError(t, err)
	}
	defer vm.Close()
	nd, err := vm.AddNIC(0, vmm.NIC{Ports: []backends.Port{&seqPort{fd: fds[0]}}, PortsVnetHdr: true, MAC: guestMAC})
	require.NoError(t, err)
	defer func() { assert.NoError(t, nd.Close()) }()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	runErr := vm.Run(ctx)
	pw.Close()
	<-done
	h.close()
	fail := func() string { return failHint + "last console lines:\n" + c.tail(60) }
	require.NoError(t, runErr, fail())
	status, ok := watch.ExitStatus()
	require.True(t, ok, "no exit status; %s", fail())
	assert.Equal(t, 0, status, "guest helper failed; %s", fail())
	assert.True(t, strings.Contains(c.text(), "nethelper: pinged host"), fail())
	assert.GreaterOrEqual(t, h.echoReplies.Load(), int32(3), "guest answered too few of our pings")
	assert.GreaterOrEqual(t, h.echoRequests.Load(), int32(3), "guest sent too few pings")
	st := nd.Net.Stats()[0]
	t.Logf("virtio-net counters: %+v", st)
	assert.NotZero(t, st.TxPackets)
	assert.NotZero(t, st.RxPackets)
}

// hostSide answers ARP and ICMP echo for hostIP and pings guestIP.
type hostSide struct {
	t            *testing.T
	fd           int
	stop         chan struct{}
	once         sync.Once
	wg           sync.WaitGroup
	echoReplies  atomic.Int32 // replies from the guest to our requests
	echoRequests atomic.Int32 // requests from the guest we answered
}

func (h *hostSide) close() {
	h.once.Do(func() { close(h.stop) })
	h.wg.Wait()
}

func (h *hostSide) send(frame []byte) {
	_, _ = unix.Write(h.fd, append(make([]byte, vnetHdrLen), frame...))
}

func (h *hostSide) run() {
	defer h.wg.Done()
	buf := make([]byte, 70000)
	seq := uint16(0)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-tick.C:
			if h.echoReplies.Load() < 3 {
				seq++
				h.send(icmpEcho(hostMAC, guestMAC, hostIP, guestIP, 8, 0x4242, seq, []byte("ping from the host side")))
			} else {
				h.send(udpFrame(hostMAC, guestMAC, hostIP, guestIP, doneUDPPort, []byte("done")))
			}
		default:
		}
		pfd := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(pfd, 50); n <= 0 {
			continue
		}
		n, err := unix.Read(h.fd, buf)
		if err != nil || n < vnetHdrLen+14 {
			continue
		}
		h.handle(buf[vnetHdrLen:n])
	}
}

func (h *hostSide) handle(f []byte) {
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0806: // ARP
		if len(f) < 42 || binary.BigEndian.Uint16(f[20:]) != 1 || [4]byte(f[38:42]) != hostIP {
			return
		}
		r := make([]byte, 42)
		copy(r[0:], f[6:12])
		copy(r[6:], hostMAC[:])
		binary.BigEndian.PutUint16(r[12:], 0x0806)
		copy(r[14:20], f[14:20]) // htype, ptype, hlen, plen
		binary.BigEndian.PutUint16(r[20:], 2)
		copy(r[22:], hostMAC[:])
		copy(r[28:], hostIP[:])
		copy(r[32:], f[22:28])
		copy(r[38:], f[28:32])
		h.send(r)
	case 0x0800:
		ihl := int(f[14]&0xf) * 4
		if len(f) < 14+ihl+8 || f[14+9] != 1 {
			return
		}
		icmp := f[14+ihl:]
		switch icmp[0] {
		case 8: // echo request to us: answer
			if [4]byte(f[30:34]) != hostIP {
				return
			}
			h.echoRequests.Add(1)
			id, sq := binary.BigEndian.Uint16(icmp[4:]), binary.BigEndian.Uint16(icmp[6:])
			h.send(icmpEcho(hostMAC, [6]byte(f[6:12]), hostIP, [4]byte(f[26:30]), 0, id, sq, icmp[8:]))
		case 0: // reply to our request
			if binary.BigEndian.Uint16(icmp[4:]) == 0x4242 {
				h.echoReplies.Add(1)
			}
		}
	}
}

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func ipFrame(src, dst [6]byte, sip, dip [4]byte, proto byte, payload []byte) []byte {
	f := make([]byte, 34+len(payload))
	copy(f[0:], dst[:])
	copy(f[6:], src[:])
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(payload)))
	copy(ip[12:], sip[:])
	copy(ip[16:], dip[:])
	binary.BigEndian.PutUint16(ip[10:], csum(ip))
	copy(f[34:], payload)
	return f
}

func icmpEcho(src, dst [6]byte, sip, dip [4]byte, typ byte, id, seq uint16, data []byte) []byte {
	m := make([]byte, 8+len(data))
	m[0] = typ
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	copy(m[8:], data)
	binary.BigEndian.PutUint16(m[2:], csum(m))
	return ipFrame(src, dst, sip, dip, 1, m)
}

func udpFrame(src, dst [6]byte, sip, dip [4]byte, port uint16, data []byte) []byte {
	u := make([]byte, 8+len(data))
	binary.BigEndian.PutUint16(u[0:], port)
	binary.BigEndian.PutUint16(u[2:], port)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], data) // checksum 0: none (allowed for UDP over IPv4)
	return ipFrame(src, dst, sip, dip, 17, u)
}

// TestGuestNetHelper runs inside the guest of TestVirtioNetTraffic (only there):
// eth0 up at guestIP, five pings of hostIP, then wait for the host's "done".
func TestGuestNetHelper(t *testing.T) {
	if os.Getenv(netHelperEnv) == "" {
		t.Skip("runs only inside the TestVirtioNetTraffic guest")
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	require.NoError(t, err)
	defer unix.Close(s)
	ifreq := func() *unix.Ifreq {
		r, err := unix.NewIfreq("eth0")
		require.NoError(t, err)
		return r
	}
	r := ifreq()
	require.NoError(t, r.SetInet4Addr(guestIP[:]))
	require.NoError(t, unix.IoctlIfreq(s, unix.SIOCSIFADDR, r))
	r = ifreq()
	require.NoError(t, r.SetInet4Addr([]byte{255, 255, 255, 0}))
	require.NoError(t, unix.IoctlIfreq(s, unix.SIOCSIFNETMASK, r))
	r = ifreq()
	require.NoError(t, unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, r))
	r.SetUint16(r.Uint16() | unix.IFF_UP)
	require.NoError(t, unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, r))

	ic, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	require.NoError(t, err)
	defer unix.Close(ic)
	require.NoError(t, unix.SetsockoptTimeval(ic, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}))
	got := 0
	buf := make([]byte, 2048)
	for seq := uint16(1); seq <= 20 && got < 5; seq++ {
		m := make([]byte, 8+32)
		m[0] = 8
		binary.BigEndian.PutUint16(m[4:], 0x7777)
		binary.BigEndian.PutUint16(m[6:], seq)
		binary.BigEndian.PutUint16(m[2:], csum(m))
		require.NoError(t, unix.Sendto(ic, m, 0, &unix.SockaddrInet4{Addr: hostIP}))
		n, err := recvRetry(ic, buf)
		if err != nil || n < 28 {
			fmt.Printf("nethelper: seq %d: %v\n", seq, err)
			continue
		}
		reply := buf[int(buf[0]&0xf)*4 : n]
		if reply[0] == 0 && binary.BigEndian.Uint16(reply[4:]) == 0x7777 {
			got++
		}
	}
	require.Equal(t, 5, got, "echo replies from the host")
	fmt.Println("nethelper: pinged host, 5 replies")

	u, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	require.NoError(t, err)
	defer unix.Close(u)
	require.NoError(t, unix.Bind(u, &unix.SockaddrInet4{Port: doneUDPPort}))
	require.NoError(t, unix.SetsockoptTimeval(u, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 60}))
	n, err := recvRetry(u, buf)
	require.NoError(t, err, "no done message from the host")
	fmt.Printf("nethelper: host says %s\n", buf[:n])
}

// recvRetry is recvfrom that retries EINTR: a socket with SO_RCVTIMEO returns it
// whenever the Go runtime's preemption signal lands, SA_RESTART or not.
func recvRetry(fd int, buf []byte) (int, error) {
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		return n, err
	}
}
