package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/guest/initramfs"
	"github.com/ptvmm/ptvmm/guest/pktgen"
	"github.com/ptvmm/ptvmm/internal/testhost"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm"
)

// ptnetKmod is our guest driver for the memdev and ptnet devices (guest/kmod).
const ptnetKmod = "ptvmm_ptnet"

// ptnetInitramfs is a guest initramfs that loads ptvmm_ptnet at boot and runs
// cmds (agent built-ins, one per line) in order.
func ptnetInitramfs(t *testing.T, dir string, cmds ...string) string {
	t.Helper()
	init := guestInit(t)
	k, err := testhost.LoadKernel(filepath.Join(dir, testhost.AssetKernelDir))
	require.NoError(t, err)
	if why := testhost.KmodMissing(k, ptnetKmod); why != "" {
		t.Skip(why)
	}
	spec := initramfs.Spec{Init: init, Modules: []string{k.ModulePath(ptnetKmod)}, Cmd: strings.Join(cmds, "\n") + "\n"}
	img := filepath.Join(t.TempDir(), "guest.cpio")
	require.NoError(t, initramfs.BuildFile(img, spec))
	return img
}

// ptnetGuest is an inner guest with ptnet NICs on a network.
type ptnetGuest struct {
	g   *libGuest
	nds []*vmm.NICDevice
}

// newPtnetGuest creates a one-vCPU guest running cmds with one ptnet NIC per
// port name, on network n.
func newPtnetGuest(t *testing.T, dir string, n *vmm.Network, ports []string, cmds ...string) *ptnetGuest {
	t.Helper()
	img := ptnetInitramfs(t, dir, cmds...)
	g := newLibGuest(t, vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  img,
		Cmdline: guestCmdlineFromFile(),
		MemSize: 256 << 20,
		CPUs:    1,
		Network: n,
	})
	pg := &ptnetGuest{g: g}
	for i, p := range ports {
		nd, err := g.vm.AddNIC(i, vmm.NIC{Model: vmm.NICPtnet, Port: p})
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, nd.Close()) })
		pg.nds = append(pg.nds, nd)
	}
	return pg
}

// runOK runs the guest to its end and requires exit status 0; it returns the console.
func (pg *ptnetGuest) runOK(t *testing.T) string {
	t.Helper()
	err := pg.g.run()
	c := pg.g.c
	fail := func() string { return failHint + "last console lines:\n" + c.tail(60) }
	for i, nd := range pg.nds {
		t.Logf("ptnet %d: device %+v loop %+v", i, nd.Ptnet.Ptnet.Stats(), nd.Ptnet.Ptnet.LoopStats())
	}
	require.NoError(t, err, fail())
	status, ok := pg.g.watch.ExitStatus()
	require.True(t, ok, "no exit status; %s", fail())
	require.Equal(t, 0, status, "guest command failed; %s", fail())
	return c.text()
}

// summaries are the pktgen summary lines of a console, in order.
func summaries(t *testing.T, console string) []pktgen.Summary {
	t.Helper()
	var out []pktgen.Summary
	for line := range strings.Lines(console) {
		if s, ok := pktgen.ParseSummary(line); ok {
			out = append(out, s)
		}
	}
	return out
}

func field(t *testing.T, s pktgen.Summary, k string) uint64 {
	t.Helper()
	v, err := s.Uint(k)
	require.NoError(t, err)
	return v
}

// hostPort is a host program's netmap port on the network: its rings driven
// through the same CSB host loop and driver side a guest uses.
type hostPort struct {
	local   *netmap.Local
	release func() error
}

func openHostPort(t *testing.T, n *vmm.Network, name string) *hostPort {
	t.Helper()
	p, release, err := n.OpenPort(name, netmap.PortConfig{})
	require.NoError(t, err)
	l, err := netmap.StartLocal(p, notify.Block)
	if err != nil {
		release()
		require.NoError(t, err)
	}
	h := &hostPort{local: l, release: release}
	t.Cleanup(func() { assert.NoError(t, h.close()) })
	return h
}

func (h *hostPort) close() error {
	if h.local == nil {
		return nil
	}
	err := h.local.Close()
	h.local = nil
	return errorsJoin(err, h.release())
}

// run runs pktgen on the port's first ring pair in a goroutine; wait returns
// its result.
func (h *hostPort) run(ctx context.Context, cfg pktgen.Config) (wait func() (pktgen.Result, error)) {
	cfg.Tx, cfg.Rx = h.local.Driver.TxRing(0), h.local.Driver.RxRing(0)
	var res pktgen.Result
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, err = pktgen.Run(ctx, cfg)
	}()
	return func() (pktgen.Result, error) { <-done; return res, err }
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

const ptnetFrames = 20000

// TestPtnetSwitchTX: the guest's pktgen writes frames straight into its switch
// port's rings (BAR1 of the memdev) and the host loop forwards them through
// vale0 to a host port whose receiver keeps up: it gets exactly every frame, in
// sequence, and the switch counted no drop. Kicks and interrupts per frame come
// from the guest's own count.
func TestPtnetSwitchTX(t *testing.T) {
	dir := requireGuest(t)
	n := vmm.NewNetwork()
	defer n.Close()
	// The switch drops what finds the receiver's ring full. Here the receiver
	// shares the test host's one CPU with the guest's vCPU, so the sender is paced
	// and the ring is large, to let the receiver keep up.
	host := openHostPort(t, n, "vale0:host@conf:slots=4096")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := host.run(ctx, pktgen.Config{Mode: pktgen.ModeRx, Count: ptnetFrames})
	pg := newPtnetGuest(t, dir, n, []string{"vale0:vm1"},
		fmt.Sprintf("/bin/ptvmm-agent pktgen -mode tx -count %d -size 60 -batch 64 -rate 10000", ptnetFrames))
	out := pg.runOK(t)
	sums := summaries(t, out)
	require.Len(t, sums, 1, "one pktgen summary on the console")
	assert.Equal(t, uint64(ptnetFrames), field(t, sums[0], "frames"))
	kicks := field(t, sums[0], "kicks")
	t.Logf("guest: %s", strings.TrimSpace(pktgenLine(out)))

	// The host receiver stops at Count; give it the time the frames need at most.
	timer := time.AfterFunc(30*time.Second, cancel)
	res, err := wait()
	timer.Stop()
	require.NoError(t, err)
	sw := n.Switches().Get("vale0")
	vm1, hp := sw.PortByName("vm1").Counters(), sw.PortByName("host").Counters()
	t.Logf("host rx: %s; switch vm1 %+v host %+v", res.Summary(), vm1, hp)
	assert.Equal(t, uint64(ptnetFrames), vm1.TxFrames, "frames the switch took from the guest's port")
	assert.Equal(t, uint64(ptnetFrames), res.Frames+hp.Drops(), "received + dropped")
	assert.Equal(t, uint64(ptnetFrames), res.Frames, "a receiver that keeps up gets every frame")
	assert.Zero(t, res.Lost+res.Bad+res.OOO, "sequence: lost, bad, out of order")
	assert.Less(t, kicks, uint64(ptnetFrames), "the guest did not kick per frame")
}

func pktgenLine(out string) string {
	for line := range strings.Lines(out) {
		if strings.Contains(line, "pktgen: mode=") {
			return line
		}
	}
	return ""
}

// TestPtnetPipe: over a pipe (flow control: a full peer makes the sender
// wait, never drop) every frame arrives, in order, even with the host
// receiver started late. The guest sends twice, with BAR1 mapped write-back
// (the default) and uncached, and both rates are logged: on hardware the
// uncached mapping is much slower (AMD NPT honours the guest's memory type);
// under the test host's TCG, which ignores memory types, they should match.
func TestPtnetPipe(t *testing.T) {
	dir := requireGuest(t)
	n := vmm.NewNetwork()
	defer n.Close()
	tx := fmt.Sprintf("/bin/ptvmm-agent pktgen -mode tx -count %d -size 1514 -batch 256 -drain 60s", ptnetFrames)
	// Write-back, uncached, write-back again: the first session also pays for
	// warming up, so the uncached one is compared with the third.
	pg := newPtnetGuest(t, dir, n, []string{"pp{1"}, tx, tx+" -uncached", tx)
	host := openHostPort(t, n, "pp}1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := host.run(ctx, pktgen.Config{Mode: pktgen.ModeRx, Count: 3 * ptnetFrames})
	out := pg.runOK(t)
	sums := summaries(t, out)
	require.Len(t, sums, 3)
	for i, s := range sums {
		assert.Equal(t, uint64(ptnetFrames), field(t, s, "frames"), "session %d", i)
	}
	timer := time.AfterFunc(30*time.Second, cancel)
	res, err := wait()
	timer.Stop()
	require.NoError(t, err)
	wb1, _ := sums[0].Float("mpps")
	uc, _ := sums[1].Float("mpps")
	wb2, _ := sums[2].Float("mpps")
	t.Logf("guest BAR1 write-back %.4f then %.4f Mpps, uncached %.4f Mpps; host rx: %s", wb1, wb2, uc, res.Summary())
	assert.Equal(t, uint64(3*ptnetFrames), res.Frames)
	assert.Zero(t, res.Lost+res.Bad)
	// Later sessions number their frames from 0 again: each of their frames is
	// "late" to a receiver that saw the first session's.
	assert.Equal(t, uint64(2*ptnetFrames), res.OOO)
}

// TestPtnetPingPong: the guest pings a host port on the switch, which echoes
// with pktgen's pong on the host driver side; the guest reports latency
// percentiles for every round trip.
func TestPtnetPingPong(t *testing.T) {
	dir := requireGuest(t)
	n := vmm.NewNetwork()
	defer n.Close()
	host := openHostPort(t, n, "vale0:echo")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The echo's source must differ from the guest's, or the switch would learn
	// the guest's address on the host port and drop the echo as sent to itself.
	wait := host.run(ctx, pktgen.Config{Mode: pktgen.ModePong, Src: [6]byte{2, 0, 0, 0, 0, 0x0e}})
	const rounds = 300
	pg := newPtnetGuest(t, dir, n, []string{"vale0:vm1"}, fmt.Sprintf("/bin/ptvmm-agent pktgen -mode ping -count %d -round-timeout 2s", rounds))
	out := pg.runOK(t)
	cancel()
	res, _ := wait()
	sums := summaries(t, out)
	require.Len(t, sums, 1)
	t.Logf("guest: %shost: %s", pktgenLine(out), res.Summary())
	assert.Equal(t, uint64(rounds), field(t, sums[0], "frames"), "round trips")
	assert.Equal(t, uint64(rounds), field(t, sums[0], "rtts"))
	assert.Zero(t, field(t, sums[0], "lost"))
	p50, err := sums[0].Float("p50us")
	require.NoError(t, err)
	p99, err := sums[0].Float("p99us")
	require.NoError(t, err)
	assert.Greater(t, p50, 0.0)
	assert.GreaterOrEqual(t, p99, p50)
	assert.Equal(t, uint64(rounds), res.Frames, "host echoed every ping")
}

// TestPtnetTwoGuests: two VMs in one process share vale0 through one Network;
// the first pings, the second echoes with its pktgen pong, and each port's
// counters agree with the other's.
func TestPtnetTwoGuests(t *testing.T) {
	dir := requireGuest(t)
	n := vmm.NewNetwork()
	defer n.Close()
	const rounds = 200
	a := newPtnetGuest(t, dir, n, []string{"vale0:a"}, fmt.Sprintf("/bin/ptvmm-agent pktgen -mode ping -count %d -round-timeout 5s", rounds))
	b := newPtnetGuest(t, dir, n, []string{"vale0:b"}, "/bin/ptvmm-agent pktgen -mode pong -idle 20s -src 02:00:00:00:00:0b")
	var wg sync.WaitGroup
	var outB string
	wg.Add(1)
	go func() {
		defer wg.Done()
		outB = b.runOK(t)
	}()
	outA := a.runOK(t)
	wg.Wait()
	sa, sb := summaries(t, outA), summaries(t, outB)
	require.Len(t, sa, 1)
	require.Len(t, sb, 1)
	t.Logf("a: %sb: %s", pktgenLine(outA), pktgenLine(outB))
	assert.Equal(t, uint64(rounds), field(t, sa[0], "rtts"))
	sw := n.Switches().Get("vale0")
	ca, cb := sw.PortByName("a").Counters(), sw.PortByName("b").Counters()
	t.Logf("switch a %+v b %+v", ca, cb)
	assert.Equal(t, ca.TxFrames, cb.RxFrames+cb.Drops(), "a's frames reached b")
	assert.Equal(t, cb.TxFrames, ca.RxFrames+ca.Drops(), "b's frames reached a")
	assert.GreaterOrEqual(t, cb.RxFrames, uint64(rounds))
	assert.GreaterOrEqual(t, ca.RxFrames, uint64(rounds))
}

// TestPtnetReloadAndStop: the guest opens the device, sends, closes it (PTCTL
// DELETE) and opens it again (CREATE) three times; every session's frames
// arrive. Then a guest stopped in the middle of traffic leaves no host loop
// behind, and a new guest on the same port name sends again.
func TestPtnetReloadAndStop(t *testing.T) {
	dir := requireGuest(t)
	n := vmm.NewNetwork()
	defer n.Close()
	base := runtime.NumGoroutine()
	// Paced, with a large receiver ring, as in TestPtnetSwitchTX.
	const hostPortName = "vale0:host@conf:slots=4096"
	host := openHostPort(t, n, hostPortName)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const per = 3000
	wait := host.run(ctx, pktgen.Config{Mode: pktgen.ModeRx, Count: 3 * per})
	cmd := fmt.Sprintf("/bin/ptvmm-agent pktgen -mode tx -count %d -rate 10000", per)
	pg := newPtnetGuest(t, dir, n, []string{"vale0:vm1"}, cmd, cmd, cmd)
	out := pg.runOK(t)
	require.Len(t, summaries(t, out), 3, "three sessions")
	timer := time.AfterFunc(30*time.Second, cancel)
	res, err := wait()
	timer.Stop()
	require.NoError(t, err)
	assert.Equal(t, uint64(3*per), res.Frames, "frames of all three sessions")
	st := pg.nds[0].Ptnet.Ptnet.Stats()
	t.Logf("device after three sessions: %+v", st)
	require.NoError(t, pg.nds[0].Close())

	// A guest stopped while it sends: Stop ends Run, the NIC closes, its loop ends.
	pg2 := newPtnetGuest(t, dir, n, []string{"vale0:vm2"}, "/bin/ptvmm-agent pktgen -mode tx -duration 10m -rate 10000")
	started := make(chan struct{})
	go func() {
		defer close(started)
		deadline := time.Now().Add(bootTimeout)
		for time.Now().Before(deadline) {
			if pg2.nds[0].Ptnet.Ptnet.Running() && pg2.g.c.hasLine("ptvmm-agent: ready") {
				// Let some traffic flow through the loop before stopping.
				if s := pg2.nds[0].Ptnet.Ptnet.LoopStats(); len(s) > 0 && s[0].Syncs > 10 {
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		pg2.g.vm.Stop()
	}()
	_ = pg2.g.run()
	<-started
	assert.True(t, len(pg2.nds[0].Ptnet.Ptnet.LoopStats()) > 0 && pg2.nds[0].Ptnet.Ptnet.LoopStats()[0].Syncs > 10, "traffic was flowing when the guest stopped")
	require.NoError(t, pg2.nds[0].Close())
	assert.False(t, pg2.nds[0].Ptnet.Ptnet.Running(), "the host loop is gone")

	// The same port name works again in a new guest.
	require.NoError(t, host.close())
	host = openHostPort(t, n, hostPortName)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	wait = host.run(ctx2, pktgen.Config{Mode: pktgen.ModeRx, Count: per})
	pg3 := newPtnetGuest(t, dir, n, []string{"vale0:vm2"}, cmd)
	out = pg3.runOK(t)
	timer = time.AfterFunc(30*time.Second, cancel2)
	res, err = wait()
	timer.Stop()
	require.NoError(t, err)
	t.Logf("guest: %shost rx: %s; switch %+v", pktgenLine(out), res.Summary(), n.Switches().Get("vale0").PortByName("host").Counters())
	assert.Equal(t, uint64(per), res.Frames)
	require.NoError(t, pg3.nds[0].Close())
	require.NoError(t, host.close())
	waitFor(t, func() bool { return runtime.NumGoroutine() <= base+2 }, "goroutines back to the baseline")
}

// TestPtnetIdle: a guest that holds its ptnet open and waits for frames that
// never come costs the host nothing: its host loop neither wakes nor spins.
func TestPtnetIdle(t *testing.T) {
	dir := requireGuest(t)
	n := vmm.NewNetwork()
	defer n.Close()
	pg := newPtnetGuest(t, dir, n, []string{"vale0:idle"}, "/bin/ptvmm-agent pktgen -mode rx -duration 8s")
	type sample struct {
		at  time.Time
		tot netmapTotals
	}
	var first, last sample
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(bootTimeout)
		for !pg.nds[0].Ptnet.Ptnet.Running() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Second) // past the CREATE and the first waits
		first = sample{time.Now(), totals(pg)}
		time.Sleep(4 * time.Second)
		last = sample{time.Now(), totals(pg)}
	}()
	pg.runOK(t)
	<-done
	d := last.at.Sub(first.at)
	t.Logf("idle %v: ring runs %d -> %d, syncs %d -> %d", d, first.tot.wakeups, last.tot.wakeups, first.tot.syncs, last.tot.syncs)
	require.NotZero(t, first.tot.syncs, "the loop ran at CREATE")
	assert.Equal(t, first.tot.wakeups, last.tot.wakeups, "the host loop woke while nothing was sent")
	assert.Equal(t, first.tot.syncs, last.tot.syncs, "the host loop synced while nothing was sent")
}

type netmapTotals struct{ wakeups, syncs uint64 }

func totals(pg *ptnetGuest) netmapTotals {
	var t netmapTotals
	for _, s := range pg.nds[0].Ptnet.Ptnet.LoopStats() {
		t.wakeups += s.Wakeups
		t.syncs += s.Syncs
	}
	return t
}

// guestInit is the agent binary to pack as the inner guest's /init: the test
// host's own /init.
func guestInit(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/init"); err != nil {
		t.Skip("no agent at /init to reuse for the guest (not in the test host)")
	}
	return "/init"
}

// guestCmdlineFromFile is the inner guest's command line without ptvmm.cmd, so
// the agent runs the initramfs command file.
func guestCmdlineFromFile() string {
	var keep []string
	for _, f := range strings.Fields(testhost.GuestCmdline("true")) {
		if !strings.HasPrefix(f, "ptvmm.cmd=") {
			keep = append(keep, f)
		}
	}
	return strings.Join(keep, " ")
}

// TestVmrunPtnet: `vmrun -switch-tap vale0:TAP -s 3,ptnet,vale0:vm1`, the bhyve
// form: the guest's pktgen frames cross vale0 and leave through a real TAP,
// where an AF_PACKET socket on the host counts every one. vmrun removes the
// TAP it created when it exits.
func TestVmrunPtnet(t *testing.T) {
	dir := requireAssets(t)
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create a TAP: " + why)
	}
	const frames = 2000
	img := ptnetInitramfs(t, dir, fmt.Sprintf("/bin/ptvmm-agent pktgen -mode tx -count %d -rate 2000", frames))
	name := fmt.Sprintf("ptvp%d", os.Getpid()%10000)
	args := []string{filepath.Join(dir, testhost.AssetVMRun),
		"-kernel", filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		"-initrd", img, "-cpus", "1", "-m", "256M",
		"-switch-tap", "vale0:" + name,
		"-s", "3,ptnet,vale0:vm1",
		"-append", guestCmdlineFromFile()}

	// Count pktgen's frames (EtherType 0x88b5) arriving from the TAP.
	stop := make(chan struct{})
	var got int
	var countErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		got, countErr = countOnInterface(name, 0x88b5, stop)
	}()
	res := runVMRun(t, args, nil)
	close(stop)
	<-done
	require.Equal(t, 0, res.status, "vmrun: %slast console lines:\n%s", failHint, res.console.tail(30))
	require.NoError(t, countErr)
	out := res.console.text()
	t.Logf("guest: %s", pktgenLine(out))
	assert.Equal(t, uint64(frames), field(t, summaries(t, out)[0], "frames"))
	assert.Equal(t, frames, got, "frames seen on %s", name)
	assert.False(t, tap.Exists(name), "vmrun left %s behind", name)
}

// countOnInterface waits for interface name to appear, then counts frames of
// EtherType proto arriving on it until stop is closed.
func countOnInterface(name string, proto uint16, stop <-chan struct{}) (int, error) {
	var idx int
	for {
		select {
		case <-stop:
			return 0, fmt.Errorf("interface %s never appeared", name)
		default:
		}
		if ifc, err := net.InterfaceByName(name); err == nil {
			idx = ifc.Index
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	be := proto>>8 | proto<<8
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(be))
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: be, Ifindex: idx}); err != nil {
		return 0, err
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}); err != nil {
		return 0, err
	}
	buf := make([]byte, 2048)
	n := 0
	for {
		select {
		case <-stop:
			return n, nil
		default:
		}
		_, _, err := unix.Recvfrom(fd, buf, 0)
		switch {
		case err == nil:
			n++
		case err == unix.EAGAIN || err == unix.EINTR:
		case err == unix.ENETDOWN || err == unix.ENXIO:
			return n, nil // vmrun removed the TAP
		default:
			return n, err
		}
	}
}
