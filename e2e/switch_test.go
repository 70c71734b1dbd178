package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/pcap"
	"github.com/ptvmm/ptvmm/backends/vale"
	"github.com/ptvmm/ptvmm/guest/pktgen"
	"github.com/ptvmm/ptvmm/internal/testhost"
)

// bgVMRun is a vmrun process running in the background with its console
// captured; wait returns its exit status (-1 if it did not exit by itself).
type bgVMRun struct {
	console *console
	cmd     *exec.Cmd
	done    chan struct{}
	status  int
	err     error
}

func startVMRun(t *testing.T, args ...string) *bgVMRun {
	t.Helper()
	t.Logf("starting %s", strings.Join(args, " "))
	b := &bgVMRun{console: &console{start: time.Now()}, done: make(chan struct{}), status: -1}
	b.cmd = exec.Command(args[0], args[1:]...)
	b.cmd.WaitDelay = 5 * time.Second
	pr, pw := io.Pipe()
	b.cmd.Stdout, b.cmd.Stderr = pw, pw
	fed := make(chan struct{})
	go func() { b.console.feed(pr); close(fed) }()
	require.NoError(t, b.cmd.Start())
	go func() {
		defer close(b.done)
		b.err = b.cmd.Wait()
		pw.Close()
		<-fed
		var ee *exec.ExitError
		switch {
		case b.err == nil:
			b.status = 0
		case errors.As(b.err, &ee) && ee.ExitCode() >= 0:
			b.status = ee.ExitCode()
		}
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			_ = b.cmd.Process.Kill()
			<-b.done
		}
	})
	return b
}

// wait waits for the process for at most d; it fails the test with the console
// tail if it did not end.
func (b *bgVMRun) wait(t *testing.T, d time.Duration, what string) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(d):
		_ = b.cmd.Process.Kill()
		<-b.done
		t.Fatalf("%s did not finish within %v; %slast console lines:\n%s", what, d, failHint, b.console.tail(40))
	}
	return b.status
}

// waitLong polls cond every 20 ms for at most d; on timeout it fails with the
// console tail of the guest it waits for.
func waitLong(t *testing.T, d time.Duration, cond func() bool, what string, g *bgVMRun) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out (%v) waiting for %s; %slast console lines:\n%s", d, what, failHint, g.console.tail(40))
		}
		select {
		case <-g.done:
			if !cond() {
				t.Fatalf("vmrun ended (status %d) while waiting for %s; last console lines:\n%s", g.status, what, g.console.tail(40))
			}
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func entry(es []vale.ListEntry, sw, name string) *vale.ListEntry {
	for i := range es {
		if es[i].Switch == sw && es[i].Name == name {
			return &es[i]
		}
	}
	return nil
}

// TestSwitchServiceTwoVmruns: `vmrun switch` runs the switch; two Linux guests
// started by two separate `vmrun -switch` processes ping and pong each other
// through vale0 by passthrough, both ways; a host pktgen on vale0 (a HostPort of
// the service) receives the pinging guest's broadcast frames; `vmrun vale list`
// shows the three ports with counters that agree with the guests' own; and a
// capture of the first guest's port holds every frame it sent and received.
func TestSwitchServiceTwoVmruns(t *testing.T) {
	dir := requireAssets(t)
	vmrunBin := filepath.Join(dir, testhost.AssetVMRun)
	sock := filepath.Join(t.TempDir(), "switch.sock")
	svc := startVMRun(t, vmrunBin, "switch", "-socket", sock)
	var c *vale.Client
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if c, err = vale.Dial(sock); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "vmrun switch not up: %v\n%s", err, svc.console.tail(20))
	}
	defer c.Close()

	// The host's receiver: large ring, as the guests share the test host's CPU.
	const rounds = 200
	host, err := c.OpenHostPort("vale0:host@conf:slots=4096", vale.HostPortConfig{})
	require.NoError(t, err)
	defer host.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hostRes := make(chan pktgen.Result, 1)
	go func() {
		r, _ := pktgen.Run(ctx, pktgen.Config{Mode: pktgen.ModeRx, Rx: host.RxRing(0), Count: rounds})
		hostRes <- r
	}()

	cmdline := guestCmdlineFromFile()
	guest := func(port string, cmds ...string) []string {
		img := ptnetInitramfs(t, dir, cmds...)
		return []string{vmrunBin, "-kernel", filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
			"-initrd", img, "-cpus", "1", "-m", "256M", "-switch", sock, "-s", "3,ptnet,vale0:" + port, "-append", cmdline}
	}
	// b echoes; a pings once b's device is up, then lingers so that the port and
	// its final counters can be listed before the VM goes.
	b := startVMRun(t, guest("b", "/bin/ptvmm-agent pktgen -mode pong -idle 30s -src 02:00:00:00:00:0b", "/bin/ptvmm-agent sleep 5")...)
	waitLong(t, bootTimeout, func() bool {
		es, err := c.List()
		require.NoError(t, err)
		e := entry(es, "vale0", "b")
		return e != nil && e.Loop
	}, "guest b's ptnet running in the service", b)

	capFile := filepath.Join(t.TempDir(), "a.pcap")
	a := startVMRun(t, guest("a", fmt.Sprintf("/bin/ptvmm-agent pktgen -mode ping -count %d -round-timeout 5s", rounds), "/bin/ptvmm-agent sleep 8")...)
	var stopCapture func() (uint64, uint64, error)
	waitLong(t, time.Minute, func() bool {
		es, err := c.List()
		require.NoError(t, err)
		return entry(es, "vale0", "a") != nil
	}, "guest a's port attached", a)
	f, err := os.Create(capFile)
	require.NoError(t, err)
	stopCapture, err = c.Capture("vale0:a", vale.MonitorBoth, f, 0)
	require.NoError(t, err)
	f.Close()

	// Once a's pings are all answered, list while both guests still linger.
	var ea, eb, eh *vale.ListEntry
	waitLong(t, bootTimeout, func() bool {
		es, err := c.List()
		require.NoError(t, err)
		ea, eb, eh = entry(es, "vale0", "a"), entry(es, "vale0", "b"), entry(es, "vale0", "host")
		return ea != nil && eb != nil && eh != nil && pktgenLine(a.console.text()) != ""
	}, "a's pktgen done", a)
	var out strings.Builder
	ls := exec.Command(vmrunBin, "vale", "-switch", sock, "list")
	ls.Stdout, ls.Stderr = &out, &out
	require.NoError(t, ls.Run(), out.String())
	t.Logf("vmrun vale list:\n%s", out.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	assert.Len(t, lines, 4, "a header and three ports")
	for _, n := range []string{"a", "b", "host"} {
		found := false
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) > 2 && f[0] == "vale0" && f[2] == n {
				found = true
			}
		}
		assert.True(t, found, "port %s listed", n)
	}

	require.Equal(t, 0, a.wait(t, bootTimeout, "vmrun a"), "vmrun a; %s", a.console.tail(40))
	require.Equal(t, 0, b.wait(t, bootTimeout, "vmrun b"), "vmrun b; %s", b.console.tail(40))
	pk, dr, err := stopCapture()
	require.NoError(t, err)

	sa, sb := summaries(t, a.console.text()), summaries(t, b.console.text())
	require.Len(t, sa, 1)
	require.Len(t, sb, 1)
	t.Logf("a: %sb: %s", pktgenLine(a.console.text()), pktgenLine(b.console.text()))
	assert.Equal(t, uint64(rounds), field(t, sa[0], "rtts"), "every ping answered")
	t.Logf("service a %+v\nb %+v\nhost %+v", *ea, *eb, *eh)
	// a's pings are broadcasts: b and the host get each; b's echoes go to a only.
	assert.Equal(t, ea.TxFrames, eb.RxFrames+eb.NoSpace, "a's frames reached b")
	assert.Equal(t, ea.TxFrames, eh.RxFrames+eh.NoSpace, "a's frames reached the host port")
	assert.Equal(t, eb.TxFrames, ea.RxFrames+ea.NoSpace, "b's frames reached a")
	assert.Equal(t, field(t, sb[0], "frames"), eb.TxFrames, "b's pktgen and the service count its echoes alike")
	assert.GreaterOrEqual(t, eb.RxFrames, uint64(rounds))

	timer := time.AfterFunc(30*time.Second, cancel)
	hr := <-hostRes
	timer.Stop()
	t.Logf("host rx: %s", hr.Summary())
	assert.Equal(t, uint64(rounds), hr.Frames, "the host pktgen got a's frames")

	// The capture: every frame a sent and got while it was attached.
	t.Logf("capture: %d frames, %d dropped", pk, dr)
	assert.Zero(t, dr)
	assert.Equal(t, ea.TxFrames+ea.RxFrames, pk)
	n := pcapFrames(t, capFile)
	assert.Equal(t, int(pk), n, "frames in the pcap file")

	// The service ends with SIGTERM; our client sees it.
	require.NoError(t, svc.cmd.Process.Signal(unix.SIGTERM))
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("client did not see the service stop")
	}
	assert.Equal(t, 0, svc.wait(t, 10*time.Second, "vmrun switch"), svc.console.tail(20))
}

// pcapFrames counts a pcap file's frames with tshark when the test host has it,
// else with our reader.
func pcapFrames(t *testing.T, path string) int {
	if ts, err := exec.LookPath("tshark"); err == nil {
		out, err := exec.Command(ts, "-r", path, "-T", "fields", "-e", "frame.number").Output()
		require.NoError(t, err)
		return len(strings.Fields(string(out)))
	}
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	r, err := pcap.NewReader(f)
	require.NoError(t, err)
	n := 0
	for {
		if _, err := r.Next(); err != nil {
			return n
		}
		n++
	}
}
