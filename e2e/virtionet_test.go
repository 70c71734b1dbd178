package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/seqpacket"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/devices/virtionet"
	"github.com/ptvmm/ptvmm/guest/initramfs"
	"github.com/ptvmm/ptvmm/internal/testhost"
	"github.com/ptvmm/ptvmm/vmm"
)

// frameOnly hides a port's Readv/Writev, so virtio-net takes its copying path
// (the TAP tests cover the vectored one).
type frameOnly struct{ backends.Port }

// seqPort is a backend on one end of a SOCK_SEQPACKET socketpair (frames keep
// their boundaries; the test holds the other end).
func seqPort(fd int) backends.Port { return frameOnly{seqpacket.New(fd, "seqpacket")} }

var netCheckCmd = "/bin/ptvmm-agent cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu " + virtioFeatures + " /proc/interrupts"

// virtioFeatures is the negotiated feature string of the first virtio device: one
// '0'/'1' character per bit.
const virtioFeatures = "/sys/bus/virtio/devices/virtio0/features"

// modernFeatures reports whether s is a sysfs feature string with VERSION_1 (bit 32)
// set, i.e. Linux's modern virtio-pci driver runs the device (the legacy one
// cannot negotiate bits above 31).
func modernFeatures(s string) bool {
	s = strings.TrimSpace(s)
	return len(s) == 64 && strings.Trim(s, "01") == "" && s[32] == '1'
}

// countModern counts console lines that are feature strings with VERSION_1.
func countModern(out string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if modernFeatures(l) {
			n++
		}
	}
	return n
}

// assertModern checks on the host side that the NIC's driver negotiated VERSION_1.
func assertModern(t *testing.T, nd *vmm.NICDevice) {
	t.Helper()
	f := nd.Transport.LastFeatures()
	assert.NotZero(t, f&virtio.FVersion1, "the guest drove the NIC without VERSION_1 (legacy driver); features %#x", f)
}

// bootNIC boots the guest with nic and runs cmd; it returns the console.
func bootNIC(t *testing.T, nic vmm.NIC, cmd string) (*console, *vmm.NICDevice) {
	t.Helper()
	dir := requireGuest(t)
	k, err := testhost.LoadKernel(filepath.Join(dir, testhost.AssetKernelDir))
	require.NoError(t, err)
	mods, err := testhost.GuestModuleArg(k, "virtio-net")
	require.NoError(t, err)
	g := newLibGuest(t, vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  filepath.Join(dir, testhost.AssetGuestInit),
		Cmdline: testhost.GuestCmdline(cmd, mods),
		MemSize: 512 << 20,
		// One vCPU: the driver still sets up every queue's vector. Under the
		// QEMU TCG test host a second nested vCPU risks a whole-host freeze
		// (vCPU 0 spinning in stop_machine for vCPU 1; see docs/testing.md).
		CPUs: 1,
	})
	c, watch := g.c, g.watch
	nd, err := g.vm.AddNIC(0, nic)
	require.NoError(t, err)
	// The NIC goes before the VM: its doorbells and interrupts live on the VM fd.
	defer func() { assert.NoError(t, nd.Close()) }()

	runErr := g.run()
	fail := func() string { return failHint + "last console lines:\n" + c.tail(60) }
	require.NoError(t, runErr, fail())
	status, ok := watch.ExitStatus()
	require.True(t, ok, "no exit status; %s", fail())
	assert.Equal(t, 0, status, fail())
	t.Logf("inner guest with a NIC: agent ready %.2fs, done %.2fs", c.ready.Seconds(), time.Since(c.start).Seconds())
	assertModern(t, nd)
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
	assert.Equal(t, 1, countModern(out), "guest's %s shows no VERSION_1 (bit 32); %s", virtioFeatures, fail())
	for _, irq := range []string{"virtio0-config", "virtio0-input.0", "virtio0-output.0", "virtio0-input.1", "virtio0-output.1"} {
		assert.True(t, strings.Contains(out, irq), "no MSI-X vector %s in /proc/interrupts; %s", irq, fail())
	}
}

// TestVirtioNetGuest boots Debian's kernel with a two-pair virtio-net NIC whose
// backend is a pair of socketpairs: Linux's virtio_net must bind through the modern
// virtio-pci driver (VERSION_1 negotiated, seen by guest and host), show eth0 with our
// MAC and MTU, and get one MSI-X vector per queue.
func TestVirtioNetGuest(t *testing.T) {
	requireGuest(t)
	var ports []backends.Port
	for i := 0; i < 2; i++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		t.Cleanup(func() { unix.Close(fds[1]) })
		ports = append(ports, seqPort(fds[0]))
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

// helperInitramfs is a guest initramfs whose command can be this test binary
// (/bin/nethelper) running TestGuestNetHelper in the given mode.
func helperInitramfs(t *testing.T, dir, mode string) string {
	t.Helper()
	if _, err := os.Stat("/init"); err != nil {
		t.Skip("no agent at /init to reuse for the guest (not in the test host)")
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	k, err := testhost.LoadKernel(filepath.Join(dir, testhost.AssetKernelDir))
	require.NoError(t, err)
	mods, err := k.Modules("virtio-net")
	require.NoError(t, err)
	spec := initramfs.Spec{Init: "/init", Env: []string{netHelperEnv + "=" + mode}}
	for _, m := range mods {
		spec.Modules = append(spec.Modules, k.ModulePath(m))
	}
	spec.Files = append(spec.Files, initramfs.File{Guest: "/bin/nethelper", Host: exe, Mode: 0o755})
	img := filepath.Join(t.TempDir(), "guest.cpio")
	require.NoError(t, initramfs.BuildFile(img, spec))
	return img
}

const helperCmd = "/bin/nethelper -test.run=^TestGuestNetHelper$ -test.v"

// runHelperGuest boots the helper guest with nic; started runs once the NIC exists
// (before the guest starts). It returns the console and the NIC's counters.
func runHelperGuest(t *testing.T, dir, img string, nic vmm.NIC, started func(*vmm.NICDevice), log io.Writer) (*console, virtionet.PairStats) {
	t.Helper()
	g := newLibGuest(t, vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  img,
		Cmdline: testhost.GuestCmdline(helperCmd),
		MemSize: 512 << 20,
		// A vCPU per queue pair: multiqueue pins a transfer to each; one
		// otherwise (a second nested vCPU only adds test host flakes).
		CPUs: max(1, nic.Queues),
		Log:  logger(log),
	})
	c, watch := g.c, g.watch
	nd, err := g.vm.AddNIC(0, nic)
	require.NoError(t, err)
	defer func() { assert.NoError(t, nd.Close()) }()
	if started != nil {
		started(nd)
	}
	runErr := g.run()
	// Logged before any check: when a guest stalls, the counters say which side stopped.
	all := nd.Net.Stats()
	t.Logf("virtio-net counters: %+v", all)
	fail := func() string { return failHint + "last console lines:\n" + c.tail(60) }
	require.NoError(t, runErr, fail())
	status, ok := watch.ExitStatus()
	require.True(t, ok, "no exit status; %s", fail())
	assert.Equal(t, 0, status, "guest helper failed; %s", fail())
	assertModern(t, nd)
	assert.True(t, strings.Contains(c.text(), "nethelper: modern virtio-pci driver"), "guest helper did not confirm VERSION_1; %s", fail())
	return c, all[0]
}

// TestVirtioNetTraffic boots a guest whose initramfs holds this test binary as a
// helper (TestGuestNetHelper): it configures eth0 and pings the host; the host side
// answers ARP and echo requests and pings the guest, whose kernel answers. Both
// directions must work through the device's RX and TX paths.
func TestVirtioNetTraffic(t *testing.T) {
	dir := requireGuest(t)
	img := helperInitramfs(t, dir, "sock")
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fds[1])
	h := &hostSide{t: t, fd: fds[1], stop: make(chan struct{})}
	h.wg.Add(1)
	go h.run()
	defer h.close()
	c, st := runHelperGuest(t, dir, img, vmm.NIC{Ports: []backends.Port{seqPort(fds[0])}, PortsVnetHdr: true, MAC: guestMAC}, nil, nil)
	h.close()
	assert.True(t, strings.Contains(c.text(), "nethelper: pinged host"), c.tail(40))
	assert.GreaterOrEqual(t, h.echoReplies.Load(), int32(3), "guest answered too few of our pings")
	assert.GreaterOrEqual(t, h.echoRequests.Load(), int32(3), "guest sent too few pings")
	assert.NotZero(t, st.TxPackets)
	assert.NotZero(t, st.RxPackets)
}

// TestVirtioNetTAPTraffic runs real kernels on both ends of a TAP: the guest pings
// the host, the host pings the guest, and a TCP transfer goes both ways with its
// payload checked; with offloads on the guest sends TSO frames (TxGSO counter).
func TestVirtioNetTAPTraffic(t *testing.T) {
	dir := requireGuest(t)
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create a TAP: " + why)
	}
	img := helperInitramfs(t, dir, "tap")
	name := fmt.Sprintf("ptvt%d", os.Getpid()%10000)
	var pings atomic.Int32
	var bulk atomic.Int64
	var linkToggled, tapDeleted atomic.Bool
	vmmLog := &syncBuffer{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	c, st := runHelperGuest(t, dir, img, vmm.NIC{Tap: name, MAC: guestMAC}, func(nd *vmm.NICDevice) {
		require.NoError(t, setIPv4(name, tapHostIP))
		ln := hostListen(t, bulkPort, 1)
		lu := hostUDP(t, linkPort, 120)
		wg.Add(3)
		go func() {
			// On the guest's request: link down, then up again once it could see it.
			defer wg.Done()
			defer unix.Close(lu)
			if _, err := recvRetry(lu, make([]byte, 16)); err != nil {
				return
			}
			nd.Net.SetLink(false)
			select {
			case <-time.After(2 * time.Second):
			case <-stop:
			}
			nd.Net.SetLink(true)
			linkToggled.Store(true)
			// Second request: delete the TAP under the running guest.
			if _, err := recvRetry(lu, make([]byte, 16)); err != nil {
				return
			}
			if err := deleteLink(name); err != nil {
				t.Errorf("delete %s: %v", name, err)
				return
			}
			tapDeleted.Store(true)
		}()
		go func() { defer wg.Done(); defer unix.Close(ln); bulk.Store(serveBulk(ln)) }()
		go func() { defer wg.Done(); pingLoop(tapGuestIP, &pings, stop) }()
	}, vmmLog)
	out := c.text()
	assert.True(t, strings.Contains(out, "nethelper: pinged host"), c.tail(40))
	assert.True(t, strings.Contains(out, "nethelper: bulk ok"), c.tail(40))
	assert.True(t, linkToggled.Load(), "the guest never asked for the link test")
	assert.True(t, strings.Contains(out, "nethelper: link down seen"), c.tail(40))
	assert.True(t, strings.Contains(out, "nethelper: traffic resumed after module reload"), c.tail(40))
	assert.True(t, tapDeleted.Load(), "the guest never asked for the TAP to be removed")
	assert.True(t, strings.Contains(out, "nethelper: backend removed, link down"), c.tail(40))
	// The device's one line (virtionet portGone), whatever the backend's error says.
	assert.Equal(t, 1, strings.Count(vmmLog.String(), "gone, link down"), "one log line for the vanished TAP:\n%s", vmmLog.String())
	assert.Equal(t, int64(2*bulkSize), bulk.Load(), "bytes checked by the host side (negative: error)")
	assert.GreaterOrEqual(t, pings.Load(), int32(3), "echo replies from the guest")
	assert.NotZero(t, st.TxGSO, "the guest sent no TSO frames with HOST_TSO4 negotiated")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "nethelper:") {
			t.Log(strings.TrimSpace(l))
		}
	}
	assert.False(t, tap.Exists(name), "the TAP the VMM created is removed")
}

// TestVirtioNetTAPMultiqueue: two queue pairs on a multi-queue TAP, two vCPUs,
// one checked TCP transfer pinned to each guest CPU: both pairs carry traffic.
func TestVirtioNetTAPMultiqueue(t *testing.T) {
	dir := requireGuest(t)
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create a TAP: " + why)
	}
	img := helperInitramfs(t, dir, "tapmq")
	name := fmt.Sprintf("ptvq%d", os.Getpid()%10000)
	var bulk [2]atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	var nd *vmm.NICDevice
	c, _ := runHelperGuest(t, dir, img, vmm.NIC{Tap: name, MAC: guestMAC, Queues: 2}, func(d *vmm.NICDevice) {
		nd = d
		require.NoError(t, setIPv4(name, tapHostIP))
		ln := hostListen(t, bulkPort, 2)
		var both sync.WaitGroup
		both.Add(2)
		wg.Add(3)
		for i := range bulk {
			go func() { defer wg.Done(); defer both.Done(); bulk[i].Store(serveBulk(ln)) }()
		}
		go func() { defer wg.Done(); both.Wait(); unix.Close(ln) }()
	}, nil)
	assert.True(t, strings.Contains(c.text(), "nethelper: two pinned transfers ok"), c.tail(40))
	for i := range bulk {
		assert.Equal(t, int64(2*bulkSize), bulk[i].Load(), "transfer %d", i)
	}
	st := nd.Net.Stats()
	t.Logf("per-pair counters: %+v", st)
	require.Len(t, st, 2)
	for i := range st {
		assert.NotZero(t, st[i].TxPackets, "pair %d carried no guest TX", i)
	}
}

const udpPerfPort = 7002

// TestVirtioNetPerf measures guest-to-host TCP (8 MiB each way, checked) and 64-byte
// UDP over the TAP with offloads on and off. Absolute figures mean little inside the
// nested TCG test host; the ratio between the runs is the result.
func TestVirtioNetPerf(t *testing.T) {
	dir := requireGuest(t)
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create a TAP: " + why)
	}
	img := helperInitramfs(t, dir, "perf")
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("offloads_%v", !off), func(t *testing.T) {
			name := fmt.Sprintf("ptvp%d", os.Getpid()%10000)
			var bulk atomic.Int64
			var udp atomic.Int64
			var wg sync.WaitGroup
			defer wg.Wait()
			var udpDur time.Duration
			c, st := runHelperGuest(t, dir, img, vmm.NIC{Tap: name, MAC: guestMAC, NoOffloads: off}, func(d *vmm.NICDevice) {
				require.NoError(t, setIPv4(name, tapHostIP))
				ln := hostListen(t, bulkPort, 1)
				us := hostUDP(t, udpPerfPort, 90)
				require.NoError(t, unix.SetsockoptInt(us, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20))
				wg.Add(2)
				go func() { defer wg.Done(); defer unix.Close(ln); bulk.Store(serveBulk(ln)) }()
				go func() {
					defer wg.Done()
					defer unix.Close(us)
					buf := make([]byte, 2048)
					var first time.Time
					for {
						n, err := recvRetry(us, buf)
						if err != nil || n > 18 {
							udpDur = time.Since(first)
							return
						}
						if first.IsZero() {
							first = time.Now()
						}
						udp.Add(1)
					}
				}()
			}, nil)
			wg.Wait()
			out := c.text()
			assert.Equal(t, int64(2*bulkSize), bulk.Load())
			var tcpSec float64
			var sent int64
			for _, l := range strings.Split(out, "\n") {
				fmt.Sscanf(strings.TrimSpace(l), "nethelper: perf tcp %f s", &tcpSec)
				fmt.Sscanf(strings.TrimSpace(l), "nethelper: perf udp sent %d", &sent)
			}
			require.NotZero(t, tcpSec, c.tail(30))
			t.Logf("offloads %v: TCP %.1f Mbit/s (8 MiB each way, %.1fs); UDP 64-byte frames: guest sent %d, host received %d in %.1fs (%.0f pps); TSO frames %d",
				!off, float64(2*bulkSize*8)/tcpSec/1e6, tcpSec, sent, udp.Load(), udpDur.Seconds(), float64(udp.Load())/udpDur.Seconds(), st.TxGSO)
			if off {
				assert.Zero(t, st.TxGSO)
			} else {
				assert.NotZero(t, st.TxGSO)
			}
		})
	}
}

var (
	tapHostIP  = [4]byte{10, 0, 3, 1}
	tapGuestIP = [4]byte{10, 0, 3, 2}
)

const (
	linkPort = 7001
	bulkPort = 7000
	bulkSize = 8 << 20
)

func pattern(i int) byte { return byte(i * 7 % 251) }

// serveBulk receives bulkSize checked bytes then sends bulkSize back; it returns
// the bytes moved, or a negative count on a bad byte or error.
func serveBulk(ln int) int64 {
	fd, _, err := acceptRetry(ln)
	if err != nil {
		return -1
	}
	defer unix.Close(fd)
	tv := &unix.Timeval{Sec: 60}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, tv)
	buf := make([]byte, 256<<10)
	got := 0
	for got < bulkSize {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return -int64(got) - 2
		}
		for i := 0; i < n; i++ {
			if buf[i] != pattern(got+i) {
				return -int64(got+i) - 2
			}
		}
		got += n
	}
	sent := 0
	for sent < bulkSize {
		n := min(len(buf), bulkSize-sent)
		for i := 0; i < n; i++ {
			buf[i] = pattern(sent + i)
		}
		w, err := unix.Write(fd, buf[:n])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -int64(got+sent) - 2
		}
		sent += w
	}
	return int64(got + sent)
}

func acceptRetry(ln int) (int, unix.Sockaddr, error) {
	for {
		fd, sa, err := unix.Accept(ln)
		if err == unix.EINTR {
			continue
		}
		return fd, sa, err
	}
}

// pingLoop pings ip from the host every 200ms, counting replies, until stop. The
// pace is kept by the clock, not by receive timeouts: EINTR from the runtime's
// signals must not turn it into a flood that a slow nested guest drowns in.
func pingLoop(ip [4]byte, replies *atomic.Int32, stop chan struct{}) {
	ic, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_ICMP)
	if err != nil {
		return
	}
	defer unix.Close(ic)
	buf := make([]byte, 2048)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for seq := uint16(1); ; seq++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		// Count the replies that arrived since the last request.
		for {
			n, _, err := unix.Recvfrom(ic, buf, 0)
			if err != nil || n < 28 {
				break
			}
			r := buf[int(buf[0]&0xf)*4 : n]
			if r[0] == 0 && binary.BigEndian.Uint16(r[4:]) == 0x4343 && [4]byte(buf[12:16]) == ip {
				replies.Add(1)
			}
		}
		m := make([]byte, 8+16)
		m[0] = 8
		binary.BigEndian.PutUint16(m[4:], 0x4343)
		binary.BigEndian.PutUint16(m[6:], seq)
		binary.BigEndian.PutUint16(m[2:], csum(m))
		_ = unix.Sendto(ic, m, 0, &unix.SockaddrInet4{Addr: ip})
	}
}

// setIPv4 gives interface name the address ip/24 and brings it up.
func setIPv4(name string, ip [4]byte) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	for _, step := range []struct {
		req  uint
		addr []byte
	}{{unix.SIOCSIFADDR, ip[:]}, {unix.SIOCSIFNETMASK, []byte{255, 255, 255, 0}}} {
		r, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		if err := r.SetInet4Addr(step.addr); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(s, step.req, r); err != nil {
			return fmt.Errorf("%s: ioctl %#x: %w", name, step.req, err)
		}
	}
	r, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, r); err != nil {
		return err
	}
	r.SetUint16(r.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, r)
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

// TestGuestNetHelper runs inside the guests of the traffic tests (only there): eth0
// up, five pings of the host, in "tap" mode a checked TCP transfer both ways, then
// (socketpair mode) wait for the host's "done".
func TestGuestNetHelper(t *testing.T) {
	mode := os.Getenv(netHelperEnv)
	if mode == "" {
		t.Skip("runs only inside the guests of the virtio-net traffic tests")
	}
	me, peer := guestIP, hostIP
	if mode == "tap" || mode == "tapmq" || mode == "perf" {
		me, peer = tapGuestIP, tapHostIP
	}
	require.NoError(t, setIPv4("eth0", me))
	requireModern(t)

	guestPing(t, peer)
	fmt.Println("nethelper: pinged host, 5 replies")

	buf := make([]byte, 2048)
	if mode == "tap" {
		guestBulk(t, peer)
		guestLinkAndReload(t, me, peer)
		return
	}
	if mode == "perf" {
		start := time.Now()
		require.NoError(t, bulkConn(peer))
		fmt.Printf("nethelper: perf tcp %.1f s\n", time.Since(start).Seconds())
		guestUDPFlood(t, peer)
		return
	}
	if mode == "tapmq" {
		// One transfer pinned to each CPU: XPS maps CPU i to TX queue i.
		errs := make(chan error, 2)
		for cpu := 0; cpu < 2; cpu++ {
			go func() {
				runtime.LockOSThread()
				var set unix.CPUSet
				set.Set(cpu)
				if err := unix.SchedSetaffinity(0, &set); err != nil {
					errs <- err
					return
				}
				errs <- bulkConn(peer)
			}()
		}
		require.NoError(t, <-errs)
		require.NoError(t, <-errs)
		fmt.Println("nethelper: two pinned transfers ok")
		return
	}
	u, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	require.NoError(t, err)
	defer unix.Close(u)
	require.NoError(t, unix.Bind(u, &unix.SockaddrInet4{Port: doneUDPPort}))
	require.NoError(t, unix.SetsockoptTimeval(u, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 60}))
	n, err := recvRetry(u, buf)
	require.NoError(t, err, "no done message from the host")
	fmt.Printf("nethelper: host says %s\n", buf[:n])
}

// requireModern fails unless eth0's virtio device runs under the virtio-pci driver
// with VERSION_1 negotiated (Linux's modern virtio-pci path).
func requireModern(t *testing.T) {
	b, err := os.ReadFile(virtioFeatures)
	require.NoError(t, err)
	require.True(t, modernFeatures(string(b)), "features %q: no VERSION_1, legacy driver", b)
	drv, err := os.Readlink("/sys/bus/virtio/devices/virtio0/../driver")
	require.NoError(t, err)
	require.Equal(t, "virtio-pci", filepath.Base(drv))
	dev, err := os.Readlink("/sys/class/net/eth0/device")
	require.NoError(t, err)
	require.Equal(t, "virtio0", filepath.Base(dev))
	fmt.Println("nethelper: modern virtio-pci driver, VERSION_1 negotiated")
}

// guestPing pings peer until five replies came back (at most 20 tries).
func guestPing(t *testing.T, peer [4]byte) {
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
		require.NoError(t, unix.Sendto(ic, m, 0, &unix.SockaddrInet4{Addr: peer}))
		// Other ICMP (the host's own pings) also arrives here: wait one second for
		// this reply at most, then go on with the next sequence number.
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
			n, err := recvRetry(ic, buf)
			if err != nil || n < 28 {
				break
			}
			reply := buf[int(buf[0]&0xf)*4 : n]
			if reply[0] == 0 && binary.BigEndian.Uint16(reply[4:]) == 0x7777 {
				got++
				break
			}
		}
	}
	require.Equal(t, 5, got, "echo replies from %v", peer)
}

// guestLinkAndReload asks the host to take the link down and up again and watches
// eth0's carrier follow, then unloads and reloads virtio_net (device reset and
// re-initialisation) and pings again.
func guestLinkAndReload(t *testing.T, me, peer [4]byte) {
	u, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	require.NoError(t, err)
	require.NoError(t, unix.Sendto(u, []byte("link"), 0, &unix.SockaddrInet4{Addr: peer, Port: linkPort}))
	unix.Close(u)
	carrier := func() string {
		b, _ := os.ReadFile("/sys/class/net/eth0/carrier")
		return strings.TrimSpace(string(b))
	}
	waitFor := func(want string) {
		deadline := time.Now().Add(30 * time.Second)
		for carrier() != want {
			require.True(t, time.Now().Before(deadline), "carrier stayed %q, want %q", carrier(), want)
			time.Sleep(20 * time.Millisecond) // polling sysfs: there is nothing to wait on
		}
	}
	waitFor("0")
	fmt.Println("nethelper: link down seen")
	waitFor("1")
	fmt.Println("nethelper: link up seen")

	require.NoError(t, unix.DeleteModule("virtio_net", unix.O_NONBLOCK))
	_, err = os.Stat("/sys/class/net/eth0")
	require.True(t, os.IsNotExist(err), "eth0 still there after rmmod")
	f, err := os.Open("/lib/modules/ptvmm/virtio_net.ko")
	require.NoError(t, err)
	require.NoError(t, unix.FinitModule(int(f.Fd()), "", 0))
	f.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat("/sys/class/net/eth0"); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "no eth0 after modprobe")
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, setIPv4("eth0", me))
	requireModern(t)
	guestPing(t, peer)
	fmt.Println("nethelper: traffic resumed after module reload")

	// Now the host deletes the TAP under us: the link must go down, nothing else.
	u, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	require.NoError(t, err)
	require.NoError(t, unix.Sendto(u, []byte("del"), 0, &unix.SockaddrInet4{Addr: peer, Port: linkPort}))
	unix.Close(u)
	waitFor("0")
	fmt.Println("nethelper: backend removed, link down")
}

// guestUDPFlood sends 64-byte UDP frames (18-byte payload) to the host for two
// seconds and prints how many it sent.
func guestUDPFlood(t *testing.T, host [4]byte) {
	u, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	require.NoError(t, err)
	defer unix.Close(u)
	require.NoError(t, unix.Connect(u, &unix.SockaddrInet4{Addr: host, Port: udpPerfPort}))
	payload := make([]byte, 64-14-20-8-4) // 64-byte frame on the wire, without FCS
	sent := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		if _, err := unix.Write(u, payload); err == nil {
			sent++
		}
	}
	_, _ = unix.Write(u, []byte("end of the udp flood")) // marker: the host stops counting
	fmt.Printf("nethelper: perf udp sent %d\n", sent)
}

// bulkConn is one checked transfer each way, reporting instead of failing (it runs
// on its own goroutine).
func bulkConn(host [4]byte) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	tv := &unix.Timeval{Sec: 60}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, tv)
	for {
		err = unix.Connect(fd, &unix.SockaddrInet4{Addr: host, Port: bulkPort})
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return err
	}
	buf := make([]byte, 256<<10)
	for sent := 0; sent < bulkSize; {
		n := min(len(buf), bulkSize-sent)
		for i := 0; i < n; i++ {
			buf[i] = pattern(sent + i)
		}
		w, err := unix.Write(fd, buf[:n])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		sent += w
	}
	for got := 0; got < bulkSize; {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return fmt.Errorf("read after %d bytes: %v", got, err)
		}
		for i := 0; i < n; i++ {
			if buf[i] != pattern(got+i) {
				return fmt.Errorf("byte %d is %#x, want %#x", got+i, buf[i], pattern(got+i))
			}
		}
		got += n
	}
	return nil
}

// guestBulk sends bulkSize pattern bytes to the host and checks bulkSize coming back.
func guestBulk(t *testing.T, host [4]byte) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	for {
		err = unix.Connect(fd, &unix.SockaddrInet4{Addr: host, Port: bulkPort})
		if err != unix.EINTR {
			break
		}
	}
	require.NoError(t, err)
	tv := &unix.Timeval{Sec: 60}
	require.NoError(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, tv))
	require.NoError(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, tv))
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := 0; sent < bulkSize; {
		n := min(len(buf), bulkSize-sent)
		for i := 0; i < n; i++ {
			buf[i] = pattern(sent + i)
		}
		w, err := unix.Write(fd, buf[:n])
		if err == unix.EINTR {
			continue
		}
		require.NoError(t, err)
		sent += w
	}
	tx := time.Since(start)
	start = time.Now()
	for got := 0; got < bulkSize; {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		require.NoError(t, err)
		require.NotZero(t, n, "host closed early after %d bytes", got)
		for i := 0; i < n; i++ {
			if buf[i] != pattern(got+i) {
				t.Fatalf("byte %d from the host is %#x, want %#x", got+i, buf[i], pattern(got+i))
			}
		}
		got += n
	}
	rx := time.Since(start)
	mbit := func(d time.Duration) float64 { return float64(bulkSize) * 8 / d.Seconds() / 1e6 }
	fmt.Printf("nethelper: bulk ok: guest->host %d MiB in %.2fs (%.0f Mbit/s), host->guest %.2fs (%.0f Mbit/s)\n",
		bulkSize>>20, tx.Seconds(), mbit(tx), rx.Seconds(), mbit(rx))
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

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func logger(w io.Writer) *slog.Logger {
	if w == nil {
		return nil
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// deleteLink removes a network interface with an RTM_DELLINK netlink request
// (what `ip link del` does; the test host has no ip command).
func deleteLink(name string) error {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	msg := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], unix.RTM_DELLINK)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	binary.NativeEndian.PutUint32(msg[unix.NLMSG_HDRLEN+4:], uint32(ifi.Index)) // ifi_index
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	if n >= unix.NLMSG_HDRLEN+4 && binary.NativeEndian.Uint16(buf[4:]) == unix.NLMSG_ERROR {
		if e := int32(binary.NativeEndian.Uint32(buf[unix.NLMSG_HDRLEN:])); e != 0 {
			return unix.Errno(-e)
		}
	}
	return nil
}

// TestVmrunNet drives the command line: vmrun -net virtio,tap=...,mac=...,queues=2
// -s SLOT,virtio-net,TAP2 creates both TAPs, the guest sees both NICs with their
// MACs, and the TAPs are gone when vmrun exits.
func TestVmrunNet(t *testing.T) {
	dir := requireAssets(t)
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create a TAP: " + why)
	}
	k, err := testhost.LoadKernel(filepath.Join(dir, testhost.AssetKernelDir))
	require.NoError(t, err)
	mods, err := testhost.GuestModuleArg(k, "virtio-net")
	require.NoError(t, err)
	a, b := fmt.Sprintf("ptva%d", os.Getpid()%10000), fmt.Sprintf("ptvb%d", os.Getpid()%10000)
	args := []string{filepath.Join(dir, testhost.AssetVMRun),
		"-kernel", filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		"-initrd", filepath.Join(dir, testhost.AssetGuestInit),
		"-cpus", "1", // the NICs need no second vCPU
		"-net", "virtio,tap=" + a + ",mac=52:54:00:aa:00:01,queues=2",
		"-s", "7,virtio-net," + b + ",mac=52:54:00:bb:00:02",
		"-append", testhost.GuestCmdline("/bin/ptvmm-agent cat /sys/class/net/eth0/address /sys/class/net/eth1/address "+virtioFeatures+" /sys/bus/virtio/devices/virtio1/features", mods)}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "vmrun: %s", out)
	text := string(out)
	for _, mac := range []string{"52:54:00:aa:00:01", "52:54:00:bb:00:02"} {
		assert.Contains(t, text, mac, "guest did not show NIC %s", mac)
	}
	assert.Equal(t, 2, countModern(text), "both NICs negotiate VERSION_1 (modern driver): %s", text)
	assert.False(t, tap.Exists(a), "vmrun left %s behind", a)
	assert.False(t, tap.Exists(b), "vmrun left %s behind", b)
}

// hostListen is the host side's TCP listener on tapHostIP:port. Accept and reads
// time out after 90 s, so a dead guest cannot hang the test.
func hostListen(t *testing.T, port, backlog int) int {
	t.Helper()
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, unix.SetsockoptInt(ln, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1))
	require.NoError(t, unix.Bind(ln, &unix.SockaddrInet4{Addr: tapHostIP, Port: port}))
	require.NoError(t, unix.Listen(ln, backlog))
	require.NoError(t, unix.SetsockoptTimeval(ln, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 90}))
	return ln
}

// hostUDP is a UDP socket bound to tapHostIP:port whose reads time out after sec seconds.
func hostUDP(t *testing.T, port int, sec int64) int {
	t.Helper()
	u, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, unix.Bind(u, &unix.SockaddrInet4{Addr: tapHostIP, Port: port}))
	require.NoError(t, unix.SetsockoptTimeval(u, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: sec}))
	return u
}
