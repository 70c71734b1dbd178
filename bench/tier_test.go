package bench

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/guest/pktgen"
)

// TestAutoTier: the most faithful tier the host allows, from what it has.
func TestAutoTier(t *testing.T) {
	noKVM := errors.New("kvm: /dev/kvm: no such file or directory")
	for _, tc := range []struct {
		name string
		c    hostCaps
		want Tier
	}{
		{"nothing", hostCaps{kvm: noKVM, kcError: errors.New("none")}, TierProcess},
		{"kernel but no kvm", hostCaps{kvm: noKVM, kernel: "/k"}, TierProcess},
		{"software kvm", hostCaps{kernel: "/k"}, TierMicro},
		{"hardware kvm without a kernel", hostCaps{hwvirt: true, kcError: errors.New("none")}, TierMicro},
		{"hardware kvm and a kernel", hostCaps{hwvirt: true, kernel: "/k"}, TierLinux},
	} {
		assert.Equal(t, tc.want, autoTier(tc.c), tc.name)
		ok, why := tierStatus(autoTier(tc.c), tc.c)
		assert.True(t, ok, "%s: the tier chosen can run: %s", tc.name, why)
	}
}

// TestTierStatus: a tier the host cannot run is one line saying why and what to
// do; the linux tier without VT-x/AMD-V points at make bench-linux.
func TestTierStatus(t *testing.T) {
	missing := errors.New("kvm: /dev/kvm: no such file or directory")
	soft := hostCaps{kernel: "/k"}
	ok, why := tierStatus(TierLinux, soft)
	assert.False(t, ok)
	assert.Contains(t, why, "tier linux: KVM here has no VT-x/AMD-V")
	assert.Contains(t, why, "make bench-linux")
	assert.Contains(t, why, "-tier micro")
	ok, _ = tierStatus(TierMicro, soft)
	assert.True(t, ok, "micro runs on a software KVM")
	ok, why = tierStatus(TierLinux, hostCaps{hwvirt: true, kcError: errors.New("no kernel cache")})
	assert.False(t, ok)
	assert.Contains(t, why, "make kernel")
	ok, _ = tierStatus(TierLinux, hostCaps{hwvirt: true, kernel: "/k"})
	assert.True(t, ok)
	for _, tier := range []Tier{TierMicro, TierLinux} {
		ok, why = tierStatus(tier, hostCaps{kvm: missing})
		assert.False(t, ok)
		assert.True(t, strings.HasPrefix(why, "tier "+string(tier)+": "), why)
		assert.Contains(t, why, "-tier process")
		assert.NotContains(t, why, "\n", "one line")
	}
	ok, _ = tierStatus(TierProcess, hostCaps{kvm: missing})
	assert.True(t, ok, "process runs anywhere")
	ok, _ = tierStatus("cloud", hostCaps{})
	assert.False(t, ok)
}

// TestUnsupportedWorkloads: each tier says which workloads it leaves out.
func TestUnsupportedWorkloads(t *testing.T) {
	assert.Empty(t, unsupported(TierProcess, Workloads))
	assert.Empty(t, unsupported(TierMicro, Workloads), "the micro tier runs tx, rx and ping-pong")
	assert.Empty(t, unsupported(TierLinux, Workloads), "the linux tier runs tx, rx and ping-pong")
	assert.Empty(t, unsupported(TierMicro, []Workload{WorkloadTX, WorkloadRX}), "the micro tier runs tx and rx")
}

func TestParseGuestTime(t *testing.T) {
	// A command name with spaces and parentheses; guest_time is field 43.
	fields := make([]string, 0, 50)
	for i := 3; i <= 52; i++ {
		switch i {
		case 43:
			fields = append(fields, "250")
		default:
			fields = append(fields, "7")
		}
	}
	line := "1234 (a b) (c) " + strings.Join(fields, " ") + "\n"
	d, err := parseGuestTime([]byte(line))
	require.NoError(t, err)
	assert.Equal(t, 2500*time.Millisecond, d)
	for _, bad := range []string{"", "1 (x", "1 (x) S 2 3", "1 (x) " + strings.Repeat("z ", 45)} {
		_, err := parseGuestTime([]byte(bad))
		assert.Error(t, err, "%q", bad)
	}
	assert.GreaterOrEqual(t, guestTime(), time.Duration(0))
}

func TestCPUSplit(t *testing.T) {
	g, h, p := cpuSplit(cpuMark{proc: time.Second, guest: 100 * time.Millisecond, peer: 50 * time.Millisecond},
		cpuMark{proc: 3 * time.Second, guest: 600 * time.Millisecond, peer: 250 * time.Millisecond})
	assert.Equal(t, 500*time.Millisecond, g)
	assert.Equal(t, 200*time.Millisecond, p)
	assert.Equal(t, 1300*time.Millisecond, h)
	// Clocks of different resolution never make a share negative.
	g, h, p = cpuSplit(cpuMark{proc: time.Second}, cpuMark{proc: time.Second, guest: 10 * time.Millisecond})
	assert.Equal(t, 10*time.Millisecond, g)
	assert.Zero(t, h)
	assert.Zero(t, p)
}

// TestConsoleLines: lines split across writes reach fn whole, in order; the tail
// keeps the last lines; an endless line is bounded.
func TestConsoleLines(t *testing.T) {
	var got []string
	c := &consoleLines{fn: func(l string) { got = append(got, l) }}
	for _, w := range []string{"ptvmm-agent: re", "ady\r\nline 2\nli", "ne 3\n", "partial"} {
		n, err := c.Write([]byte(w))
		require.NoError(t, err)
		assert.Equal(t, len(w), n)
	}
	assert.Equal(t, []string{"ptvmm-agent: ready", "line 2", "line 3"}, got)
	assert.Contains(t, c.tail(), "line 3")
	_, _ = c.Write([]byte(strings.Repeat("x", 10000)))
	assert.LessOrEqual(t, len(c.part), 4096)
	for i := range 100 {
		_, _ = c.Write([]byte("n" + strings.Repeat("y", i%3) + "\n"))
	}
	assert.Len(t, c.last, consoleTail)
}

// TestLinuxCommands: a marker before each run, pktgen over ptnet or eth0, the
// limits and addresses the far end expects.
func TestLinuxCommands(t *testing.T) {
	r := &runner{cfg: Config{Count: 300000}}
	runs := []*linuxRun{{w: WorkloadTX, size: 60}, {w: WorkloadPingPong, size: 1514}}
	cmds := strings.Split(strings.TrimSpace(r.linuxCommands(PathVirtioTap, runs)), "\n")
	require.Len(t, cmds, 4)
	assert.Equal(t, "/bin/ptvmm-agent echo ptvmm-bench: begin 0", cmds[0])
	assert.Equal(t, "/bin/ptvmm-agent pktgen -iface eth0 -mode tx -size 60 -batch 512 -count 300000 -src 02:70:74:76:00:01 -dst 02:70:74:76:00:02 -drain 30s", cmds[1])
	assert.Equal(t, "/bin/ptvmm-agent echo ptvmm-bench: begin 1", cmds[2])
	assert.Contains(t, cmds[3], "-mode ping -size 1514 -count 100000 ", "ping-pong is capped at MaxRoundTrips")
	r.cfg = Config{Duration: 2 * time.Second}
	cmds = strings.Split(strings.TrimSpace(r.linuxCommands(PathPtnetPipe, runs)), "\n")
	assert.True(t, strings.HasPrefix(cmds[1], "/bin/ptvmm-agent pktgen -mode tx -size 60 -batch 512 -duration 2s "), cmds[1])
	assert.NotContains(t, strings.Join(cmds, "\n"), "-iface")

	// rx: the guest acknowledges to the far end, ends when frames stop coming, and
	// with a Count has a time limit too; before an rx run that follows another, what
	// the first left on the way is drained, under a line no run claims.
	runs = []*linuxRun{{w: WorkloadRX, size: 60}, {w: WorkloadTX, size: 60}, {w: WorkloadRX, size: 1514}}
	r.cfg = Config{Count: 1000}
	cmds = strings.Split(strings.TrimSpace(r.linuxCommands(PathVirtioSwitch, runs)), "\n")
	require.Len(t, cmds, 8)
	assert.Equal(t, "/bin/ptvmm-agent echo ptvmm-bench: begin 0", cmds[0])
	assert.Equal(t, "/bin/ptvmm-agent pktgen -iface eth0 -mode rx -size 60 -batch 512 -count 1000 -duration 1m0s -idle 5s -ack 64 -src 02:70:74:76:00:01 -dst 02:70:74:76:00:02", cmds[1])
	assert.Equal(t, "/bin/ptvmm-agent echo ptvmm-bench: begin 1", cmds[2])
	assert.Equal(t, "/bin/ptvmm-agent echo "+linuxFlush, cmds[4])
	assert.Equal(t, "/bin/ptvmm-agent pktgen -iface eth0 -mode rx -duration 300ms", cmds[5])
	assert.Equal(t, "/bin/ptvmm-agent echo ptvmm-bench: begin 2", cmds[6])
	assert.Contains(t, cmds[7], "-mode rx -size 1514 ")
	r.cfg = Config{Duration: 2 * time.Second}
	cmds = strings.Split(strings.TrimSpace(r.linuxCommands(PathPtnetSwitch, runs[:1])), "\n")
	require.Len(t, cmds, 2)
	assert.Equal(t, "/bin/ptvmm-agent pktgen -mode rx -size 60 -batch 512 -duration 2s -idle 5s -ack 64 -src 02:70:74:76:00:01 -dst 02:70:74:76:00:02", cmds[1])
}

// TestLinuxRecord: a run's record comes from the guest's summary (frames, time,
// kicks) and the far end's count (received), with drops the difference; a run
// without its summary gives none.
func TestLinuxRecord(t *testing.T) {
	r := &runner{cfg: Config{Tier: TierLinux}, rep: &Report{Tier: TierLinux, Kernel: "k", Date: "d"}}
	peer := newLinuxPeer(nil)
	peer.byData[60].Store(1900)
	sum, ok := pktgen.ParseSummary(pktgen.Result{Mode: pktgen.ModeTx, Frames: 2000, Bytes: 120000, Elapsed: 2 * time.Second, Kicks: 8, Irqs: 2}.Summary())
	require.True(t, ok)
	run := &linuxRun{w: WorkloadTX, size: 60, began: true, ended: true, sum: sum, data0: 100,
		begin: cpuMark{proc: 0}, end: cpuMark{proc: time.Second, guest: 400 * time.Millisecond, peer: 100 * time.Millisecond}}
	rec, ok := r.linuxRecord(PathPtnetSwitch, run, peer)
	require.True(t, ok)
	assert.Equal(t, uint64(2000), rec.Frames)
	assert.Equal(t, uint64(1800), rec.Received)
	assert.Equal(t, uint64(200), rec.Drops)
	assert.InDelta(t, 0.0009, rec.Mpps, 1e-9)
	assert.InDelta(t, 0.004, rec.KicksPerFrame, 1e-9)
	assert.InDelta(t, 0.001, rec.IrqsPerFrame, 1e-9)
	assert.InDelta(t, 200, rec.CPUGuest, 1e-6) // 0.4 s over 0.002 Mframes
	assert.InDelta(t, 250, rec.CPUHost, 1e-6)
	assert.Equal(t, TierLinux, rec.Tier)
	// virtio: kicks and interrupts from the device; tx counts the TX queue's kicks.
	run.irq0, run.irq1 = 10, 30
	run.kick0, run.kick1 = [2]uint64{5, 7}, [2]uint64{45, 1007}
	rec, _ = r.linuxRecord(PathVirtioSwitch, run, peer)
	assert.InDelta(t, 0.02, rec.KicksPerFrame, 1e-9)
	assert.InDelta(t, 0.01, rec.IrqsPerFrame, 1e-9)
	run.ended = false
	_, ok = r.linuxRecord(PathPtnetSwitch, run, peer)
	assert.False(t, ok)

	// rx: the far end's frames sent and the guest's received (less frames not
	// pktgen's) and lost; the RX queue's kicks per frame received.
	sum, ok = pktgen.ParseSummary(pktgen.Result{Mode: pktgen.ModeRx, Frames: 1510, Bytes: 1510 * 1514, Elapsed: time.Second,
		Kicks: 3, Irqs: 151, Lost: 20, Bad: 10}.Summary())
	require.True(t, ok)
	job := &rxJob{size: 1514}
	job.sent.Store(1600) // 70 still on the way when the guest's time ran out
	rx := &linuxRun{w: WorkloadRX, size: 1514, began: true, ended: true, sum: sum, job: job,
		kick0: [2]uint64{0, 100}, kick1: [2]uint64{9, 250}, irq0: 1, irq1: 301,
		begin: cpuMark{proc: 0}, end: cpuMark{proc: time.Second, guest: 300 * time.Millisecond, peer: 100 * time.Millisecond}}
	rec, ok = r.linuxRecord(PathVirtioTap, rx, peer)
	require.True(t, ok)
	assert.Equal(t, WorkloadRX, rec.Workload)
	assert.Equal(t, uint64(1500), rec.Received)
	assert.Equal(t, uint64(20), rec.Drops)
	assert.Equal(t, uint64(1520), rec.Frames)
	assert.Equal(t, rec.Frames, rec.Received+rec.Drops)
	assert.InDelta(t, 0.0015, rec.Mpps, 1e-9)
	assert.InDelta(t, 0.1, rec.KicksPerFrame, 1e-9, "150 RX queue kicks over 1500 frames")
	assert.InDelta(t, 0.2, rec.IrqsPerFrame, 1e-9)
	assert.InDelta(t, 200, rec.CPUGuest, 1e-6)
	rec, _ = r.linuxRecord(PathPtnetPipe, rx, peer)
	assert.InDelta(t, 0.002, rec.KicksPerFrame, 1e-9, "ptnet: the guest's count")
	// A guest that received more than was sent (frames of an earlier run) is held
	// to the far end's count; a run the far end never sent for has nothing.
	job.sent.Store(1000)
	rec, _ = r.linuxRecord(PathPtnetPipe, rx, peer)
	assert.Equal(t, uint64(1000), rec.Received)
	assert.Equal(t, uint64(1000), rec.Frames)
	rx.job = nil
	rec, _ = r.linuxRecord(PathPtnetPipe, rx, peer)
	assert.Zero(t, rec.Received)
	assert.Zero(t, rec.Mpps)
}

// TestLinuxPeerRx: in an rx run the far end sends pktgen data frames of the run's
// size, numbered from 0, never more than its window ahead of the guest's acks,
// up to the run's count; with the window full and no ack for its ackTimeout it
// writes off what is in flight and goes on.
func TestLinuxPeerRx(t *testing.T) {
	m, sl, err := netmap.NewPipe("lpeer", "1", netmap.PortConfig{TxSlots: 256, RxSlots: 256})
	require.NoError(t, err)
	host, err := netmap.NewEndpoint(sl, true)
	require.NoError(t, err)
	guest, err := netmap.NewEndpoint(m, true)
	require.NoError(t, err)
	defer guest.Close()
	lp := newLinuxPeer(host)
	lp.window, lp.ackTimeout = 32, 200*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		lp.run(ctx)
	}()
	defer func() {
		cancel()
		<-done
		require.NoError(t, lp.err)
		host.Close()
	}()

	bufs, lens := make([][]byte, 64), make([]int, 64)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	ack := pktgen.Template(60, 0, peerMAC, driverMAC, pktgen.KindAck)
	// recv takes what arrived, checking every frame, waiting up to a second.
	recv := func(job *rxJob, next *uint64) int {
		fd := guest.ReadyFD()
		n, err := guest.Recv(bufs, lens)
		require.NoError(t, err)
		if n == 0 {
			_, err := waitFD(fd, time.Second)
			require.NoError(t, err)
			return 0
		}
		for i := range n {
			h, err := pktgen.Parse(bufs[i][:lens[i]])
			require.NoError(t, err)
			require.Equal(t, pktgen.KindData, h.Kind)
			require.Equal(t, job.size, lens[i])
			require.Equal(t, driverMAC, h.Dst)
			require.Equal(t, *next, h.Seq, "in order, from 0")
			*next++
		}
		return n
	}

	const count = 500
	job := lp.startRx(60, count)
	var next, acked uint64
	for end := time.Now().Add(10 * time.Second); next < count && time.Now().Before(end); {
		if recv(job, &next) == 0 {
			continue
		}
		require.LessOrEqual(t, next, acked+lp.window, "the window holds")
		if next-acked >= 16 || next == count {
			pktgen.Stamp(ack, next, next)
			k, err := guest.Send([][]byte{ack})
			require.NoError(t, err)
			require.Equal(t, 1, k)
			acked = next
		}
	}
	require.Equal(t, uint64(count), next, "every frame came, paced by the acks")
	require.Eventually(t, func() bool { return job.acked.Load() == count }, 5*time.Second, time.Millisecond, "the last ack is taken")
	assert.Equal(t, uint64(count), job.sent.Load(), "the count ends the sending")
	assert.Zero(t, job.writtenOff.Load())
	assert.Positive(t, job.acks.Load())

	// Without acks: one window, then another after the timeout.
	start := time.Now()
	job = lp.startRx(1514, 0)
	next = 0
	for end := time.Now().Add(10 * time.Second); next < 2*lp.window && time.Now().Before(end); {
		recv(job, &next)
	}
	lp.stopRx()
	require.GreaterOrEqual(t, next, 2*lp.window)
	assert.GreaterOrEqual(t, time.Since(start), lp.ackTimeout)
	assert.GreaterOrEqual(t, job.writtenOff.Load(), lp.window)
	assert.Zero(t, job.acks.Load())
}

// TestKeepFastest: per workload and size the faster run is kept, and every record
// says how many boots there were.
func TestKeepFastest(t *testing.T) {
	a := []Record{{Workload: WorkloadTX, Size: 60, Mpps: 1}, {Workload: WorkloadTX, Size: 1514, Mpps: 2}}
	b := []Record{{Workload: WorkloadTX, Size: 60, Mpps: 3}, {Workload: WorkloadTX, Size: 1514, Mpps: 1}, {Workload: WorkloadPingPong, Size: 60, Mpps: 0.1}}
	got := keepFastest(keepFastest(nil, a, 1), b, 2)
	require.Len(t, got, 3)
	assert.Equal(t, 3.0, got[0].Mpps)
	assert.Equal(t, 2.0, got[1].Mpps)
	for _, r := range got {
		assert.Equal(t, 2, r.Runs)
	}
}

func TestRateFormat(t *testing.T) {
	for v, want := range map[float64]string{0: "0.000", 13.2184: "13.218", 0.5: "0.500", 0.0123456: "0.0123", 0.000342: "0.000342", 0.1: "0.100", 1e-12: "0.000000000"} {
		assert.Equal(t, want, rate(v), "%g", v)
	}
}

// TestLinuxPeerPacesPaths: the linux tier's far end and a guest pktgen in rx
// mode with acks, over each path's real host side (the process tier's setup
// stands in for the guest's NIC): every frame arrives, none is lost or written
// off, since the far end never has more than its window in flight.
func TestLinuxPeerPacesPaths(t *testing.T) {
	const n = 20000
	for _, p := range Paths {
		t.Run(string(p), func(t *testing.T) {
			r := &runner{cfg: Config{Tier: TierProcess}, rep: &Report{Tier: TierProcess}}
			e, err := r.setup(p)
			var skip *SkipError
			if errors.As(err, &skip) {
				t.Skip(skip.Why)
			}
			require.NoError(t, err)
			defer func() { assert.NoError(t, e.close()) }()
			lp := newLinuxPeer(e.peer)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				lp.run(ctx)
			}()
			job := lp.startRx(1514, n)
			res, err := pktgen.Run(context.Background(), pktgen.Config{Mode: pktgen.ModeRx, Rx: e.rx, Ack: e.tx, AckEvery: linuxRxAck,
				HdrLen: e.hdrLen, Count: n, Duration: 20 * time.Second, Idle: 2 * time.Second, Src: driverMAC, Dst: peerMAC})
			lp.stopRx()
			cancel()
			<-done
			require.NoError(t, err)
			require.NoError(t, lp.err)
			t.Logf("%s: %s far end sent %d, %d acks", p, res.Summary(), job.sent.Load(), job.acks.Load())
			assert.Equal(t, uint64(n), res.Frames)
			assert.Zero(t, res.Lost)
			assert.Zero(t, res.Bad)
			assert.Equal(t, uint64(n), job.sent.Load())
			assert.Zero(t, job.writtenOff.Load())
			assert.Positive(t, res.Acks)
		})
	}
}
