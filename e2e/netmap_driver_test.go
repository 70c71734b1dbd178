package e2e

import (
	"context"
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
// by the RX ring's MSI-X vector.
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
		t.Run(c.name, func(t *testing.T) { netmapGuest(t, dir, ko, pktgenBin, c) })
	}
}

// netmapCase is one run of netmap's pkt-gen in the guest.
type netmapCase struct {
	name                string
	guestPort, hostPort string // the ptnet's port and the host program's
	vnetHdr             bool   // the device offers the virtio-net header
	rx                  bool   // pkt-gen receives what the host sends (else it sends)
}

// netmapGuest boots a guest with netmap.ko and pkt-gen and one ptnet NIC on
// c.guestPort, checks that netmap's driver bound both functions, and runs
// pkt-gen against ptvmm's pktgen on c.hostPort.
func netmapGuest(t *testing.T, dir, ko, pktgenBin string, c netmapCase) {
	const frames = 20000
	const bus = "/sys/bus/pci/drivers/" + netmapPCIDriver
	// Paced, with a large receiver ring on the switch, as in
	// TestPtnetSwitchTX: the host receiver shares the test host's CPU with the
	// guest. Over a pipe the sender waits for the receiver.
	pktgenCmd := fmt.Sprintf("/bin/pkt-gen -i eth0 -f tx -n %d -l 60 -R 10000", frames)
	if c.rx {
		pktgenCmd = fmt.Sprintf("/bin/pkt-gen -i eth0 -f rx -n %d", frames)
	}
	cmds := []string{
		"/bin/ptvmm-agent ls " + bus,
		"/bin/ptvmm-agent ls -l /sys/class/net/eth0/device/driver",
		"/bin/ptvmm-agent cat /sys/class/net/eth0/address",
		"/bin/ptvmm-agent ls -l /dev/netmap",
		pktgenCmd,
	}
	spec := initramfs.Spec{
		Init:    guestInit(t),
		Modules: []string{ko}, // loaded at boot; our ptvmm_ptnet is not in this image
		Files:   []initramfs.File{{Host: pktgenBin, Guest: "/bin/pkt-gen", Mode: 0o755}},
		Cmd:     strings.Join(cmds, "\n") + "\n",
	}
	img := filepath.Join(t.TempDir(), "guest.cpio")
	require.NoError(t, initramfs.BuildFile(img, spec))

	n := vmm.NewNetwork()
	defer n.Close()
	// The guest's port first: the host's pipe end then has its peer from the start.
	port, release, err := n.OpenPort(c.guestPort, netmap.PortConfig{})
	require.NoError(t, err)
	owned := false // AddPtnet took the port: the device releases it
	t.Cleanup(func() {
		if !owned {
			assert.NoError(t, release())
		}
	})
	host := openHostPort(t, n, c.hostPort)
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

	g := newLibGuest(t, vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  img,
		Cmdline: guestCmdlineFromFile(),
		MemSize: 256 << 20,
		CPUs:    1,
		Network: n,
	})
	mac := [6]byte{0x02, 0x6e, 0x6d, 0x00, 0x00, 0x01}
	pd, err := g.vm.AddPtnet(0, vmm.PtnetNIC{Port: port, MAC: mac, VnetHdr: c.vnetHdr, Release: release})
	require.NoError(t, err)
	owned = true
	t.Cleanup(func() { assert.NoError(t, pd.Close()) })
	pg := &ptnetGuest{g: g, nds: []*vmm.NICDevice{{Ptnet: pd}}}
	stop := streamConsole(t, g.c)
	out := pg.runOK(t)
	stop()

	// Both functions are bound to netmap's PCI driver, and eth0 is the ptnet.
	ptnetBDF := fmt.Sprintf("0000:00:%02x.0", pd.Ptnet.Function.Slot())
	memdevBDF := fmt.Sprintf("0000:00:%02x.0", pd.Memdev.Function.Slot())
	assert.True(t, g.c.hasLine(ptnetBDF), "ptnet %s not bound to %s", ptnetBDF, netmapPCIDriver)
	assert.True(t, g.c.hasLine(memdevBDF), "memdev %s not bound to %s", memdevBDF, netmapPCIDriver)
	assert.Regexp(t, `(?m)driver -> \S*/`+regexp.QuoteMeta(netmapPCIDriver)+`\s*$`, out, "eth0's driver")
	assert.True(t, g.c.hasLine("02:6e:6d:00:00:01"), "eth0's MAC, decoded from MAC_HI/MAC_LO by netmap's driver")
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
	bytes, _ := strconv.ParseUint(m[2], 10, 64)
	assert.Equal(t, uint64(frames), pkts, "pkt-gen's frames")
	assert.Equal(t, uint64(frames*(60+hdr)), bytes, "pkt-gen's bytes: header and frame")

	timer := time.AfterFunc(30*time.Second, cancel)
	res, err := wait()
	timer.Stop()
	require.NoError(t, err)
	st := pd.Ptnet.Stats()
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
	assert.Equal(t, hdr, pd.Ptnet.VnetHdrLen(), "VNET_HDR_LEN kept")
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
	assert.False(t, pd.Ptnet.Running(), "no host loop left")
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
