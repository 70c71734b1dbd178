package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/guest/initramfs"
	"github.com/ptvmm/ptvmm/guest/pktgen"
	"github.com/ptvmm/ptvmm/internal/testhost"
	"github.com/ptvmm/ptvmm/vmm"
)

// Environment variables naming netmap's own guest driver and pkt-gen, built
// outside the repository from netmap's source (testhost.PassFileEnvs carries
// them into the test host).
const (
	netmapKoEnv = "PTVMM_NETMAP_KO" // netmap.ko for the guest kernel, with ptnetmap-guest-drivers
	pktgenEnv   = "PTVMM_PKTGEN"    // a static pkt-gen
)

// netmapPCIDriver is the PCI driver netmap.ko registers for the memdev and ptnet.
const netmapPCIDriver = "ptnetmap-guest-drivers"

// TestNetmapGuestDriver: netmap's own Linux guest driver, unchanged, binds
// our memdev and ptnet (SPECS 3.8), and netmap's pkt-gen runs in netmap mode
// on the ptnet interface against a host port that counts or sends every frame.
// netmap.ko keeps its default ptnet_vnet_hdr=1: it asks VNET_HDR_LEN 12 at
// probe and at register. Without the feature the device keeps 0 and frames
// are plain; with it (vnet_hdr) pkt-gen prefixes a zeroed 12-byte header.
// That case runs over a pipe: ptvmm's vale reads the header as the Ethernet
// header (netmap's VALE would convert between ports' header lengths). The rx
// case runs over a pipe too, whose flow control makes the host sender wait
// for the guest, however late it starts: its pkt-gen sleeps in poll, woken
// by the RX ring's MSI-X vector. The stack case uses the ptnet as a plain
// Linux NIC (netmap's ndo_start_xmit and NAPI): the guest pings a host port
// that answers ARP and ICMP echo.
func TestNetmapGuestDriver(t *testing.T) {
	ko, pktgenBin := os.Getenv(netmapKoEnv), os.Getenv(pktgenEnv)
	if ko == "" || pktgenBin == "" {
		t.Skip("set " + netmapKoEnv + " and " + pktgenEnv + " to netmap.ko (built for the guest kernel) and a static pkt-gen from netmap's source")
	}
	dir := requireGuest(t)
	for _, c := range []netmapCase{
		{name: "tx_vale", guestPort: "vale0:vm1", hostPort: "vale0:host@conf:slots=4096"},
		{name: "tx_vnet_hdr", guestPort: "nm{1", hostPort: "nm}1", vnetHdr: true},
		{name: "rx", guestPort: "nm{2", hostPort: "nm}2", rx: true},
	} {
		t.Run(c.name, func(t *testing.T) { netmapPktgen(t, dir, ko, pktgenBin, c) })
	}
	t.Run("stack", func(t *testing.T) { netmapStack(t, dir, ko, pktgenBin) })
}

// netmapCase is one run of netmap's pkt-gen in the guest.
type netmapCase struct {
	name                string
	guestPort, hostPort string // the ptnet's port and the host program's
	vnetHdr             bool   // the device offers the virtio-net header
	rx                  bool   // pkt-gen receives what the host sends (else it sends)
}

// netmapGuestMAC is the ptnet's MAC in these guests.
var netmapGuestMAC = [6]byte{0x02, 0x6e, 0x6d, 0x00, 0x00, 0x01}

// netmapGuestOnPort is a guest with netmap.ko and pkt-gen and one ptnet NIC.
type netmapGuestOnPort struct {
	*ptnetGuest
	pd *vmm.PtnetDevice
}

// newNetmapGuest makes a guest whose initramfs loads ko (netmap.ko) at boot,
// has pkt-gen as /bin/pkt-gen, lists what netmap's driver bound and runs
// cmds; its one ptnet NIC is on port (opened by the caller, which the device
// releases). The caller opens its host port before so that a pipe end has
// its peer from the start.
func newNetmapGuest(t *testing.T, dir, ko, pktgenBin string, n *vmm.Network, port *netmap.Port, release func() error, vnetHdr bool, cmds ...string) *netmapGuestOnPort {
	t.Helper()
	all := append([]string{
		"/bin/ptvmm-agent ls /sys/bus/pci/drivers/" + netmapPCIDriver,
		"/bin/ptvmm-agent ls -l /sys/class/net/eth0/device/driver",
		"/bin/ptvmm-agent cat /sys/class/net/eth0/address",
		"/bin/ptvmm-agent ls -l /dev/netmap",
	}, cmds...)
	spec := initramfs.Spec{
		Init:    guestInit(t),
		Modules: []string{ko}, // loaded at boot; our ptvmm_ptnet is not in this image
		Files:   []initramfs.File{{Host: pktgenBin, Guest: "/bin/pkt-gen", Mode: 0o755}},
		Cmd:     strings.Join(all, "\n") + "\n",
	}
	img := filepath.Join(t.TempDir(), "guest.cpio")
	if err := initramfs.BuildFile(img, spec); err != nil {
		assert.NoError(t, release())
		require.NoError(t, err)
	}
	g := newLibGuest(t, vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  img,
		Cmdline: guestCmdlineFromFile(),
		MemSize: 256 << 20,
		CPUs:    1,
		Network: n,
	})
	pd, err := g.vm.AddPtnet(0, vmm.PtnetNIC{Port: port, MAC: netmapGuestMAC, VnetHdr: vnetHdr, Release: release})
	if err != nil {
		assert.NoError(t, release())
		require.NoError(t, err)
	}
	t.Cleanup(func() { assert.NoError(t, pd.Close()) })
	return &netmapGuestOnPort{ptnetGuest: &ptnetGuest{g: g, nds: []*vmm.NICDevice{{Ptnet: pd}}}, pd: pd}
}

// run runs the guest to a zero exit, its console logged as it comes, and
// checks that netmap's PCI driver bound both functions and that eth0 is the
// ptnet with our MAC.
func (ng *netmapGuestOnPort) run(t *testing.T) string {
	t.Helper()
	stop := streamConsole(t, ng.g.c)
	out := ng.runOK(t)
	stop()
	ptnetBDF := fmt.Sprintf("0000:00:%02x.0", ng.pd.Ptnet.Function.Slot())
	memdevBDF := fmt.Sprintf("0000:00:%02x.0", ng.pd.Memdev.Function.Slot())
	assert.True(t, ng.g.c.hasLine(ptnetBDF), "ptnet %s not bound to %s", ptnetBDF, netmapPCIDriver)
	assert.True(t, ng.g.c.hasLine(memdevBDF), "memdev %s not bound to %s", memdevBDF, netmapPCIDriver)
	assert.Regexp(t, `(?m)driver -> \S*/`+regexp.QuoteMeta(netmapPCIDriver)+`\s*$`, out, "eth0's driver")
	m := netmapGuestMAC
	assert.True(t, ng.g.c.hasLine(fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])),
		"eth0's MAC, decoded from MAC_HI/MAC_LO by netmap's driver")
	return out
}

// netmapPktgen runs netmap's pkt-gen in the guest against ptvmm's pktgen on
// c.hostPort.
func netmapPktgen(t *testing.T, dir, ko, pktgenBin string, c netmapCase) {
	const frames = 20000
	// Paced, with a large receiver ring on the switch, as in
	// TestPtnetSwitchTX: the host receiver shares the test host's CPU with the
	// guest. Over a pipe the sender waits for the receiver.
	pktgenCmd := fmt.Sprintf("/bin/pkt-gen -i eth0 -f tx -n %d -l 60 -R 10000", frames)
	if c.rx {
		pktgenCmd = fmt.Sprintf("/bin/pkt-gen -i eth0 -f rx -n %d", frames)
	}
	n := vmm.NewNetwork()
	defer n.Close()
	port, release, err := n.OpenPort(c.guestPort, netmap.PortConfig{})
	require.NoError(t, err)
	host := openHostPort(t, n, c.hostPort)
	ng := newNetmapGuest(t, dir, ko, pktgenBin, n, port, release, c.vnetHdr, pktgenCmd)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hdr := 0
	if c.vnetHdr {
		hdr = 12
	}
	hcfg := pktgen.Config{Mode: pktgen.ModeRx, Count: frames, HdrLen: hdr}
	if c.rx {
		// The guest boots while the host fills the pipe; the drain lasts until
		// the guest took the last frame.
		hcfg = pktgen.Config{Mode: pktgen.ModeTx, Count: frames, HdrLen: hdr, Drain: bootTimeout}
	}
	wait := host.run(ctx, hcfg)
	out := ng.run(t)
	if c.vnetHdr {
		assert.Contains(t, out, "Port requires virtio-net header, length = 12", "pkt-gen saw the port's header length")
	}

	// pkt-gen's own count, then the host side's.
	verb := "Sent"
	if c.rx {
		verb = "Received"
	}
	m := regexp.MustCompile(verb + ` (\d+) packets (\d+) bytes`).FindStringSubmatch(out)
	require.NotNil(t, m, "no pkt-gen summary on the console")
	pkts, _ := strconv.ParseUint(m[1], 10, 64)
	nbytes, _ := strconv.ParseUint(m[2], 10, 64)
	assert.Equal(t, uint64(frames), pkts, "pkt-gen's frames")
	assert.Equal(t, uint64(frames*(60+hdr)), nbytes, "pkt-gen's bytes: header and frame")

	timer := time.AfterFunc(30*time.Second, cancel)
	res, err := wait()
	timer.Stop()
	require.NoError(t, err)
	st := ng.pd.Ptnet.Stats()
	t.Logf("host: %s; device %+v", res.Summary(), st)
	if sw := n.Switches().Get("vale0"); sw != nil && sw.PortByName("vm1") != nil {
		vm1, hp := sw.PortByName("vm1").Counters(), sw.PortByName("host").Counters()
		t.Logf("switch vm1 %+v host %+v", vm1, hp)
		assert.Equal(t, uint64(frames), vm1.TxFrames, "frames the switch took from the guest's port")
	}
	assert.Equal(t, uint64(frames), res.Frames, "frames the host port sent or received")
	assert.Equal(t, uint64(frames*60), res.Bytes, "60-byte frames after the header")
	if !c.rx {
		assert.Equal(t, uint64(frames), res.Bad, "all are pkt-gen's (UDP), none ptvmm pktgen's")
	}
	assert.Equal(t, hdr, ng.pd.Ptnet.VnetHdrLen(), "VNET_HDR_LEN kept")
	// pkt-gen's open and close: one CREATE and one DELETE; the guest's reboot
	// (ptnet_shutdown) sends DELETE again, with no loop running.
	assert.Equal(t, uint64(1), st.Creates, "PTCTL CREATE")
	assert.Equal(t, uint64(1), st.Stops, "PTCTL DELETE at pkt-gen's exit")
	assert.Equal(t, uint64(1), st.IdleDeletes, "ptnet_shutdown's DELETE")
	assert.Zero(t, st.Refused+st.CSBRefused+st.BadKicks+st.BadAccesses, "nothing refused")
	if c.vnetHdr {
		assert.Zero(t, st.VnetRefused)
	} else {
		assert.Equal(t, uint64(2), st.VnetRefused, "VNET_HDR_LEN 12 without the feature, at probe and register, kept 0")
	}
	assert.False(t, ng.pd.Ptnet.Running(), "no host loop left")
}

// netmapStack: the guest brings eth0 up (netmap's ptnet_open registers the
// port for the kernel stack: PTCTL CREATE) and pings a host port on vale0
// that answers ARP and ICMP echo: every echo comes back through netmap's
// driver (MSI-X, NAPI).
func netmapStack(t *testing.T, dir, ko, pktgenBin string) {
	const pings = 5
	hostMAC, hostIP := [6]byte{0x02, 0x6e, 0x6d, 0x00, 0x00, 0xfe}, [4]byte{10, 0, 0, 1}
	n := vmm.NewNetwork()
	defer n.Close()
	port, release, err := n.OpenPort("vale0:vm1", netmap.PortConfig{})
	require.NoError(t, err)
	host := openHostPort(t, n, "vale0:peer")
	ng := newNetmapGuest(t, dir, ko, pktgenBin, n, port, release, false,
		"/bin/ptvmm-agent ifconfig eth0 10.0.0.2/24",
		fmt.Sprintf("/bin/ptvmm-agent ping -c %d -i 0.2 -W 5 10.0.0.1", pings))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := answerStack(ctx, host, hostMAC, hostIP)
	out := ng.run(t)
	cancel()
	arps, echoes, err := wait()
	require.NoError(t, err)
	st := ng.pd.Ptnet.Stats()
	t.Logf("host answered %d ARP and %d ICMP echo requests; device %+v", arps, echoes, st)
	assert.Contains(t, out, fmt.Sprintf("%d packets transmitted, %d received", pings, pings))
	assert.Equal(t, pings, echoes, "echo requests the host answered")
	assert.GreaterOrEqual(t, arps, 1, "the guest resolved the host's address")
	assert.GreaterOrEqual(t, st.Creates, uint64(1), "PTCTL CREATE at link up")
	assert.Zero(t, st.Refused+st.CSBRefused+st.BadKicks+st.BadAccesses, "nothing refused")
	assert.False(t, ng.pd.Ptnet.Running(), "no host loop left")
}

// streamConsole logs c's new lines as they come, so a guest that hangs in
// netmap's driver shows how far it got; stop logs the rest and ends it.
func streamConsole(t *testing.T, c *console) (stop func()) {
	done, ended := make(chan struct{}), make(chan struct{})
	logged := 0
	flush := func() {
		c.mu.Lock()
		lines := c.lines[logged:]
		logged = len(c.lines)
		c.mu.Unlock()
		for _, l := range lines {
			t.Log("guest: " + l)
		}
	}
	go func() {
		defer close(ended)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				flush()
				return
			case <-tick.C:
				flush()
			}
		}
	}()
	var once bool
	stop = func() {
		if !once {
			once = true
			close(done)
			<-ended
		}
	}
	t.Cleanup(stop)
	return stop
}

// stackReply is what a host at ip (with mac) answers to frame f: an ARP
// reply to a request for ip, an ICMP echo reply to an echo request to ip, or
// nil. f is peer data: every field is bounds-checked before use.
func stackReply(f []byte, mac [6]byte, ip [4]byte) []byte {
	if len(f) < 14 {
		return nil
	}
	switch binary.BigEndian.Uint16(f[12:14]) {
	case 0x0806: // ARP: Ethernet/IPv4 request for ip
		a := f[14:]
		if len(a) < 28 || binary.BigEndian.Uint16(a[0:2]) != 1 || binary.BigEndian.Uint16(a[2:4]) != 0x0800 ||
			a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:8]) != 1 || [4]byte(a[24:28]) != ip {
			return nil
		}
		r := make([]byte, 60)
		copy(r[0:6], f[6:12])
		copy(r[6:12], mac[:])
		binary.BigEndian.PutUint16(r[12:14], 0x0806)
		ra := r[14:]
		copy(ra[0:6], a[0:6])
		binary.BigEndian.PutUint16(ra[6:8], 2)
		copy(ra[8:14], mac[:])
		copy(ra[14:18], ip[:])
		copy(ra[18:28], a[8:18]) // the asker's MAC and IP
		return r
	case 0x0800: // IPv4 ICMP echo request to ip, no fragments
		p := f[14:]
		if len(p) < 20 || p[0]>>4 != 4 {
			return nil
		}
		ihl := int(p[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(p[2:4]))
		if ihl < 20 || total < ihl+8 || total > len(p) || p[9] != 1 || [4]byte(p[16:20]) != ip ||
			binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 || p[ihl] != 8 {
			return nil
		}
		r := make([]byte, max(60, 14+total))
		copy(r[0:6], f[6:12])
		copy(r[6:12], mac[:])
		binary.BigEndian.PutUint16(r[12:14], 0x0800)
		rp := r[14 : 14+total]
		copy(rp, p[:total])
		copy(rp[12:16], p[16:20])
		copy(rp[16:20], p[12:16])
		binary.BigEndian.PutUint16(rp[10:12], 0)
		binary.BigEndian.PutUint16(rp[10:12], inetChecksum(rp[:ihl]))
		icmp := rp[ihl:]
		icmp[0] = 0 // echo reply
		binary.BigEndian.PutUint16(icmp[2:4], 0)
		binary.BigEndian.PutUint16(icmp[2:4], inetChecksum(icmp))
		return r
	}
	return nil
}

func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// answerStack runs a minimal IPv4 host at ip on h's first ring pair until ctx
// ends: it answers ARP and ICMP echo requests (stackReply) and returns how
// many it answered (wait returns once ctx ended). Replies that find the TX
// ring full are dropped.
func answerStack(ctx context.Context, h *hostPort, mac [6]byte, ip [4]byte) (wait func() (arp, icmp int, err error)) {
	tx, rx := h.local.Driver.TxRing(0), h.local.Driver.RxRing(0)
	var arp, icmp int
	var ferr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			r := rx.Ring()
			if r.Empty() {
				if _, ferr = rx.Wait(50 * time.Millisecond); ferr != nil {
					return
				}
				continue
			}
			head, n := r.Head(), r.Space()
			for range n { // bounded by the slots the ring holds
				s := r.Slot(head)
				buf := r.Buf(s.BufIdx)
				if buf != nil && int(s.Len) <= len(buf) {
					if reply := stackReply(buf[:s.Len], mac, ip); reply != nil {
						if sendFrame(tx.Ring(), reply) {
							if reply[13] == 0x06 {
								arp++
							} else {
								icmp++
							}
						}
					}
				}
				head = r.Next(head)
			}
			r.SetHeadCur(head, head)
			if ferr = rx.Sync(0); ferr != nil {
				return
			}
			if ferr = tx.Sync(0); ferr != nil {
				return
			}
		}
	}()
	return func() (int, int, error) { <-done; return arp, icmp, ferr }
}

// sendFrame puts f in r's next free slot; false when r is full or f does
// not fit.
func sendFrame(r *netmap.Ring, f []byte) bool {
	if r.Space() == 0 {
		return false
	}
	head := r.Head()
	s := r.Slot(head)
	buf := r.Buf(s.BufIdx)
	if len(buf) < len(f) {
		return false
	}
	copy(buf, f)
	s.Len, s.Flags = uint16(len(f)), 0
	r.SetSlot(head, s)
	head = r.Next(head)
	r.SetHeadCur(head, head)
	return true
}

// TestStackReply: the host side of the stack case answers an ARP request for
// its address and an ICMP echo request to it, with valid checksums, and
// nothing else.
func TestStackReply(t *testing.T) {
	mac, ip := [6]byte{2, 0, 0, 0, 0, 0xfe}, [4]byte{10, 0, 0, 1}
	guest := []byte{2, 0, 0, 0, 0, 1}
	arp := make([]byte, 42)
	copy(arp[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(arp[6:12], guest)
	copy(arp[12:], []byte{0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1})
	copy(arp[22:28], guest)
	copy(arp[28:32], []byte{10, 0, 0, 2})
	copy(arp[38:42], ip[:])
	r := stackReply(arp, mac, ip)
	require.Len(t, r, 60)
	assert.Equal(t, guest, r[0:6])
	assert.Equal(t, mac[:], r[6:12])
	assert.Equal(t, []byte{0, 2}, r[20:22], "ARP reply")
	assert.Equal(t, mac[:], r[22:28])
	assert.Equal(t, ip[:], r[28:32])
	assert.Equal(t, guest, r[32:38])
	assert.Equal(t, []byte{10, 0, 0, 2}, r[38:42])
	arp[41] = 9
	assert.Nil(t, stackReply(arp, mac, ip), "ARP for another address")

	echo := make([]byte, 14+20+8+4)
	copy(echo[0:6], mac[:])
	copy(echo[6:12], guest)
	echo[12], echo[13] = 0x08, 0x00
	p := echo[14:]
	p[0], p[8], p[9] = 0x45, 64, 1
	binary.BigEndian.PutUint16(p[2:4], 32)
	copy(p[12:16], []byte{10, 0, 0, 2})
	copy(p[16:20], ip[:])
	binary.BigEndian.PutUint16(p[10:12], inetChecksum(p[:20]))
	p[20] = 8
	copy(p[28:32], "ping")
	binary.BigEndian.PutUint16(p[22:24], inetChecksum(p[20:32]))
	r = stackReply(echo, mac, ip)
	require.Len(t, r, 60)
	rp := r[14:46]
	assert.Equal(t, guest, r[0:6])
	assert.Equal(t, ip[:], rp[12:16])
	assert.Equal(t, []byte{10, 0, 0, 2}, rp[16:20])
	assert.Zero(t, inetChecksum(rp[:20]), "IP checksum")
	assert.Equal(t, byte(0), rp[20], "echo reply")
	assert.Zero(t, inetChecksum(rp[20:32]), "ICMP checksum")
	assert.Equal(t, "ping", string(rp[28:32]))
	binary.BigEndian.PutUint16(p[2:4], 200)
	assert.Nil(t, stackReply(echo, mac, ip), "IP length beyond the frame")
}

// FuzzStackReply: any frame gets no reply or a well-formed one, never a panic.
func FuzzStackReply(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 60))
	f.Fuzz(func(t *testing.T, b []byte) {
		mac, ip := [6]byte{2, 0, 0, 0, 0, 0xfe}, [4]byte{10, 0, 0, 1}
		r := stackReply(b, mac, ip)
		if r == nil {
			return
		}
		if len(r) < 60 || !bytes.Equal(r[0:6], b[6:12]) || !bytes.Equal(r[6:12], mac[:]) {
			t.Fatalf("reply % x to % x", r, b)
		}
	})
}
