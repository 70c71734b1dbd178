package vale

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/seqpacket"
)

const childEnv = "PTVMM_VALE_SERVICE_CHILD"

// TestServiceKilledClientChild is the client TestServiceKilledClient kills: it
// attaches vale0:victim and sends until it dies.
func TestServiceKilledClientChild(t *testing.T) {
	path := os.Getenv(childEnv)
	if path == "" {
		t.Skip("helper process of TestServiceKilledClient")
	}
	c, err := Dial(path)
	require.NoError(t, err)
	h, err := c.OpenHostPort("vale0:victim", HostPortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	fmt.Println("child-ready")
	src := mac(0xee)
	for i := uint32(0); ; i += 32 {
		// To its own MAC: the switch drops them (DropSelf), so the other ports'
		// rings see none of this traffic but the port's counters do.
		hostSend(t, h, frames(src, src, 32, i)...)
		time.Sleep(time.Millisecond) // a pace, not a synchronisation
	}
}

// A client killed with SIGKILL while sending: its port is detached within a
// second, the service's memfd of the port's region is closed (with the client's
// mapping gone, the kernel frees the memory), and the other ports keep forwarding.
func TestServiceKilledClient(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c := dial(t, s.Path())
	a := openHost(t, c, "vale0:a", 256)
	b := openHost(t, c, "vale0:b", 256)
	ma, mb := mac(0xa), mac(0xb)
	learn(t, b, mb)
	hostRecv(t, a, 1, 2*time.Second)

	cmd := exec.Command(os.Args[0], "-test.run=^TestServiceKilledClientChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+s.Path())
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "child-ready") {
				ready <- sc.Text()
			}
		}
		close(ready)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case _, ok := <-ready:
		require.True(t, ok, "child ended before it was ready")
	case <-time.After(20 * time.Second):
		t.Fatal("child not ready in 20s")
	}
	var victim *ListEntry
	waitFor(t, 10*time.Second, "victim sending", func() bool {
		es, err := c.List()
		require.NoError(t, err)
		victim = findEntry(es, "vale0", "victim")
		return victim != nil && victim.TxFrames > 64
	})
	require.Equal(t, uint32(cmd.Process.Pid), victim.OwnerPID)
	require.True(t, victim.Loop)

	var ino uint64
	s.mu.Lock()
	for np, p := range s.owned {
		if p.name == "vale0:victim" {
			var st unix.Stat_t
			require.NoError(t, unix.Fstat(np.Region().FD(), &st))
			ino = st.Ino
		}
	}
	s.mu.Unlock()
	require.NotZero(t, ino)
	require.True(t, inodeOpen(t, ino))
	ports0 := s.Stats().Ports

	require.NoError(t, cmd.Process.Signal(unix.SIGKILL))
	killed = true
	_ = cmd.Wait()
	start := time.Now()
	waitFor(t, time.Second, "victim detached", func() bool {
		es, err := c.List()
		require.NoError(t, err)
		return findEntry(es, "vale0", "victim") == nil
	})
	// The switch forgets the port first, then the port is closed.
	waitFor(t, time.Second-time.Since(start), "the region's memfd closed", func() bool { return !inodeOpen(t, ino) })
	t.Logf("victim detached and its region closed %v after SIGKILL", time.Since(start))
	st := s.Stats()
	require.Equal(t, ports0-1, st.Ports)
	require.Equal(t, uint64(2), st.Loops)
	require.Equal(t, uint64(1), st.DeadPeers)

	hostSend(t, a, frames(mb, ma, 100, 0)...)
	require.Equal(t, 100, len(from(hostRecv(t, b, 100, 5*time.Second), ma)), "a and b still forward")
}

// A client that writes garbage in its CSB or its ring slots: its rings are
// reinitialised or its bad slots dropped, each counted on its port, and the other
// ports are unaffected.
func TestServiceCorruptClient(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c, cx := dial(t, s.Path()), dial(t, s.Path())
	a := openHost(t, c, "vale0:a", 64)
	b := openHost(t, c, "vale0:b", 64)
	x := openHost(t, cx, "vale0:x", 64)
	ma, mb := mac(0xa), mac(0xb)
	learn(t, b, mb)
	hostRecv(t, a, 1, 2*time.Second)
	hostRecv(t, x, 1, 2*time.Second)

	// CSB attack: TX and RX heads far outside the ring, then a kick.
	ntx := x.NumTx()
	oldTx, oldRx := x.CSB.Head(0), x.CSB.Head(ntx)
	x.CSB.SetHeadCur(0, 9999, 9999)
	x.CSB.SetHeadCur(ntx, 0xffffffff, 3)
	require.NoError(t, x.Kicks[0].Signal())
	require.NoError(t, x.Kicks[ntx].Signal())
	var ex *ListEntry
	waitFor(t, 5*time.Second, "x's rings reinitialised", func() bool {
		es, err := c.List()
		require.NoError(t, err)
		ex = findEntry(es, "vale0", "x")
		return ex.LoopReinits >= 2
	})
	require.GreaterOrEqual(t, ex.RingReinits, uint64(2), "the krings count them too")
	require.Equal(t, uint32(1), x.CSB.KernNeedKick(0), "the loop asks for a kick to recover")

	// Ring attack: a TX slot naming a buffer outside the region, and one longer
	// than its buffer. The client repairs its CSB first (back to what its driver
	// published), then syncs the damaged slots through its driver.
	x.CSB.SetHeadCur(0, oldTx, oldTx)
	x.CSB.SetHeadCur(ntx, oldRx, oldRx)
	r := x.TxRing(0).Ring()
	h := r.Head()
	sl := r.Slot(h)
	r.SetSlot(h, netmap.Slot{BufIdx: 1 << 30, Len: 60})
	h = r.Next(h)
	sl2 := r.Slot(h)
	r.SetSlot(h, netmap.Slot{BufIdx: sl2.BufIdx, Len: 65000})
	h = r.Next(h)
	r.SetHeadCur(h, h)
	require.NoError(t, x.TxRing(0).Sync(0))
	waitFor(t, 5*time.Second, "x's bad slots counted", func() bool {
		es, err := c.List()
		require.NoError(t, err)
		ex = findEntry(es, "vale0", "x")
		return ex.BadSlots >= 2
	})
	_ = sl
	// The driver's slots hold the bad indices until the host hands them back
	// repaired; the service never used them. Others are unaffected:
	hostSend(t, a, frames(mb, ma, 40, 0)...)
	require.Equal(t, 40, len(from(hostRecv(t, b, 40, 5*time.Second), ma)))
	es, err := c.List()
	require.NoError(t, err)
	for _, n := range []string{"a", "b"} {
		e := findEntry(es, "vale0", n)
		require.Zero(t, e.LoopReinits+e.RingReinits+e.BadSlots, n)
	}
	// And x itself can send again.
	hostSend(t, x, eth(mb, mac(0xc), 60, 1))
	require.Equal(t, 1, len(from(hostRecv(t, b, 1, 5*time.Second), mac(0xc))))
}

// TAP ports: TAP_ATTACH joins a host interface (here a seqpacket stand-in) to a
// switch in the service; frames pass both ways; the listing shows it; detach.
func TestServiceTapPorts(t *testing.T) {
	peers := map[string]int{}
	s := startService(t, ServiceConfig{OpenTap: func(name string) (backends.Port, io.Closer, error) {
		p, peer, err := seqpacket.Pair(name)
		if err != nil {
			return nil, nil, err
		}
		peers[name] = peer
		return p, p, nil
	}})
	c := dial(t, s.Path())
	require.NoError(t, c.AttachTap("vale0", "tap7"))
	require.ErrorIs(t, c.AttachTap("vale0", "tap7"), unix.EEXIST)
	peer := peers["tap7"]
	defer unix.Close(peer)
	b := openHost(t, c, "vale0:b", 64)

	_, err := unix.Write(peer, eth(bcastMAC, mac(0x77), 60, 5))
	require.NoError(t, err)
	require.Equal(t, 1, len(from(hostRecv(t, b, 1, 5*time.Second), mac(0x77))))
	hostSend(t, b, eth(mac(0x77), mac(0xb), 60, 6))
	buf := make([]byte, 2048)
	require.True(t, fdReadable(t, peer, 5*time.Second))
	n, err := unix.Read(peer, buf)
	require.NoError(t, err)
	require.Equal(t, eth(mac(0x77), mac(0xb), 60, 6), buf[:n])

	es, err := c.List()
	require.NoError(t, err)
	e := findEntry(es, "vale0", "tap7")
	require.NotNil(t, e)
	require.Equal(t, uint8(KindTap), e.Kind)
	require.Zero(t, e.OwnerPID, "owned by the service")
	require.Equal(t, uint64(1), e.TxFrames)

	require.NoError(t, c.DetachTap("vale0", "tap7"))
	es, err = c.List()
	require.NoError(t, err)
	require.Nil(t, findEntry(es, "vale0", "tap7"))
	require.ErrorIs(t, c.DetachTap("vale0", "tap7"), unix.ENOENT)
}
