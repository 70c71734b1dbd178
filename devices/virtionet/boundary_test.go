package virtionet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/devices/virtio"
)

// Attacks at the guest boundary (issue 9). Each failed before the fix it names.

// resetWithin resets the device from another goroutine (the vCPU) and fails if that
// does not return: a worker that never gets back to its stop event blocks it forever.
func (g *guest) resetWithin(d time.Duration) {
	g.t.Helper()
	done := make(chan bool, 1)
	go func() { done <- g.mmio.Write(g.bar4+20, []byte{0}) }()
	select {
	case ok := <-done:
		require.True(g.t, ok)
	case <-time.After(d):
		g.t.Fatalf("guest reset blocked for %v: a queue worker never returned", d)
	}
}

// rxQueue is pair 0's running RX queue.
func (g *guest) rxQueue() *virtio.QueueHandle {
	g.dev.mu.Lock()
	defer g.dev.mu.Unlock()
	require.NotEmpty(g.t, g.dev.running)
	return g.dev.running[0].rx
}

// TestRxMalformedChainResetDoesNotHang: mergeable buffers, a small valid receive chain,
// then a chain whose buffer lies outside guest RAM, and a frame larger than the small
// chain. The malformed chain is returned to the guest once; the frame waits for more
// buffers without the worker spinning; a guest reset stops the worker at once and the
// waiting frame is counted as dropped. (Before: the chains were given back and the
// malformed one dropped and pushed again on every pass, forever, and the reset hung.)
func TestRxMalformedChainResetDoesNotHang(t *testing.T) {
	g := newGuest(t, 0)
	g.bringUp(rxFeatures)
	g.hostSend(append(make([]byte, 12), ethFrame(g.dev.MAC(), string(bytes.Repeat([]byte{'x'}, 500)))...))
	g.add(0, [3]uint64{g.alloc(100), 100, 1})
	bad := g.add(0, [3]uint64{ramSize - 8, 16, 1})
	g.publish(0)
	g.kick(0)
	u := g.waitUsed(0, 1)
	require.Equal(t, []usedElem{{uint32(bad), 0}}, u, "the malformed chain comes back, once")
	q := g.rxQueue()
	g.resetWithin(5 * time.Second)
	assert.Equal(t, uint64(1), q.Stats().Pushed, "one used entry in the queue's whole life")
	st := g.dev.Stats()[0]
	assert.Equal(t, uint64(1), st.RxDropped, "the frame the reset discarded")
	assert.Zero(t, st.RxPackets)
}

// TestRxMalformedChainThenBuffers: as above, then the guest adds a large buffer; the
// frame lands in the small and the large chain, in order, and nothing else is used.
func TestRxMalformedChainThenBuffers(t *testing.T) {
	g := newGuest(t, 0)
	g.bringUp(rxFeatures)
	f := ethFrame(g.dev.MAC(), string(bytes.Repeat([]byte{'y'}, 500)))
	g.hostSend(append(make([]byte, 12), f...))
	small := g.alloc(100)
	a := g.add(0, [3]uint64{small, 100, 1})
	bad := g.add(0, [3]uint64{ramSize - 8, 16, 1})
	g.publish(0)
	g.kick(0)
	require.Equal(t, []usedElem{{uint32(bad), 0}}, g.waitUsed(0, 1))
	big := g.alloc(2048)
	c := g.post(0, [3]uint64{big, 2048, 1})
	u := g.waitUsed(0, 2)
	require.Equal(t, []usedElem{{uint32(a), 100}, {uint32(c), uint32(12 + len(f) - 100)}}, u)
	got := append(append([]byte(nil), g.ram[small:small+100]...), g.ram[big:big+uint64(u[1].len)]...)
	assert.Equal(t, uint16(2), binary.LittleEndian.Uint16(got[10:]), "num_buffers")
	assert.Equal(t, f, got[12:])
	assert.Equal(t, uint64(3), g.rxQueue().Stats().Pushed)
	st := g.dev.Stats()[0]
	assert.Equal(t, uint64(1), st.RxPackets)
	assert.Zero(t, st.RxDropped)
}

// wantKick is a driver's EVENT_IDX decision after publishing avail entries old..newIdx.
func wantKick(event, newIdx, old uint16) bool { return newIdx-event-1 < newIdx-old }

// TestCtrlCommandPostedOnCompletion: with EVENT_IDX, a driver that adds its next
// control command as soon as it sees the previous one used (Linux's
// virtnet_send_command spins for it) kicks only if the device asked. The device must
// have re-armed before publishing the completion, or have looked again: the command
// must run without any unrelated wakeup. (Before: serviceCtrl ignored what re-arming
// reported and the command waited for other traffic.)
func TestCtrlCommandPostedOnCompletion(t *testing.T) {
	g := newGuest(t, 0)
	const ctrl = 2
	cmd1, cmd2, ack1, ack2 := g.alloc(3), g.alloc(3), g.alloc(1), g.alloc(1)
	copy(g.ram[cmd1:], []byte{ctrlRx, ctrlRxPromisc, 0})
	copy(g.ram[cmd2:], []byte{ctrlRx, ctrlRxAllmulti, 1})
	g.ram[ack1], g.ram[ack2] = 0xff, 0xff
	usedIdx := ringBase(ctrl) + 0x400 + 2
	availEvent := ringBase(ctrl) + 0x400 + 4 + 8*qsize
	kick := make(chan bool, 1)
	var once sync.Once
	hook := func() {
		// Runs in the device's worker, inside the interrupt for command 1: the
		// driver sees it used and posts command 2 at once.
		if virtio.LoadLE16(g.ram[usedIdx:]) != 1 {
			return
		}
		once.Do(func() {
			old := g.avail[ctrl]
			g.add(ctrl, [3]uint64{cmd2, 3, 0}, [3]uint64{ack2, 1, 1})
			g.publish(ctrl)
			kick <- wantKick(virtio.LoadLE16(g.ram[availEvent:]), old+1, old)
		})
	}
	g.irq.hook.Store(&hook)
	// Command 1 is in the ring when the device starts: the worker's first look runs
	// it, and no kick is pending that could wake the worker for command 2 by chance.
	g.bringUpWith(allFeatures, func() {
		g.add(ctrl, [3]uint64{cmd1, 3, 0}, [3]uint64{ack1, 1, 1})
		g.publish(ctrl)
	})
	require.NotZero(t, g.features&virtio.FEventIdx)
	select {
	case k := <-kick:
		if k {
			g.kick(ctrl)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("command 1 never completed")
	}
	g.irq.hook.Store(nil)
	u := g.waitUsed(ctrl, 2)
	require.Len(t, u, 2)
	assert.Equal(t, byte(ackOK), g.ram[ack1])
	assert.Equal(t, byte(ackOK), g.ram[ack2])
	g.dev.filterMu.RLock()
	defer g.dev.filterMu.RUnlock()
	assert.True(t, g.dev.allmulti)
}

// TestRxChainWithoutRoom: without mergeable buffers, receive chains that cannot hold
// any frame (only device-readable buffers; fewer writable bytes than a header and an
// Ethernet header) are returned unused and counted, and the frame waiting on the port
// goes to the next good chain. (Before: the frame was taken from the backend, cut to
// nothing and lost uncounted, or the bad chain stalled the queue.)
func TestRxChainWithoutRoom(t *testing.T) {
	for _, vnet := range []bool{true, false} {
		name := map[bool]string{true: "readv", false: "copy"}[vnet]
		t.Run(name, func(t *testing.T) {
			g := newGuestN(t, 0, 1, func(c *Config) { c.VnetHdr = vnet })
			g.bringUp(rxFeatures &^ FMrgRxbuf)
			f := ethFrame(g.dev.MAC(), "no room")
			wire := f
			if vnet {
				wire = append(make([]byte, 12), f...)
			}
			g.hostSend(wire)
			x := g.add(0, [3]uint64{g.alloc(64), 64, 0})
			z := g.add(0, [3]uint64{g.alloc(16), 16, 1})
			y := g.add(0, [3]uint64{g.alloc(2048), 2048, 1})
			g.publish(0)
			g.kick(0)
			u := g.waitUsed(0, 3)
			require.Equal(t, []usedElem{{uint32(x), 0}, {uint32(z), 0}, {uint32(y), uint32(12 + len(f))}}, u)
			st := g.dev.Stats()[0]
			assert.Equal(t, uint64(1), st.RxPackets)
			assert.Zero(t, st.RxDropped)
			assert.Equal(t, uint64(2), st.RxBadBuffers)
		})
	}
}

// TestTxPipeFlowControl: the backend is one end of a netmap pipe whose peer reads
// late. Frames the pipe cannot take stay in the guest's TX ring and go once the peer
// frees room: none is dropped, order is kept. (Before: each was dropped.)
func TestTxPipeFlowControl(t *testing.T) {
	m, s, err := netmap.NewPipe("vnet", "0", netmap.PortConfig{TxSlots: 8, RxSlots: 8})
	require.NoError(t, err)
	a, err := netmap.NewEndpoint(m, true)
	require.NoError(t, err)
	b, err := netmap.NewEndpoint(s, true)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() }) // after the device's cleanup: registered first, runs last
	g := newGuestN(t, 0, 1, func(c *Config) {
		c.Ports[0].Close()
		c.Ports = []backends.Port{a}
		c.VnetHdr = false
	})
	g.bringUp(allFeatures)
	const n = 12 // the pipe holds 7
	for i := 0; i < n; i++ {
		f := ethFrame([6]byte{2, 0, 0, 0, 0, 9}, string([]byte{byte(i)}))
		buf := g.alloc(12 + len(f))
		copy(g.ram[buf+12:], f)
		g.add(1, [3]uint64{buf, uint64(12 + len(f)), 0})
	}
	g.publish(1)
	g.kick(1)
	bufs := [][]byte{make([]byte, 2048), make([]byte, 2048), make([]byte, 2048)}
	lens := make([]int, len(bufs))
	var got []byte
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < n && time.Now().Before(deadline) {
		pfd := []unix.PollFd{{Fd: int32(b.ReadyFD()), Events: unix.POLLIN}}
		_, err := unix.Poll(pfd, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			require.NoError(t, err)
		}
		k, err := b.Recv(bufs, lens)
		require.NoError(t, err)
		for i := 0; i < k; i++ {
			require.Equal(t, 15, lens[i])
			got = append(got, bufs[i][14])
		}
	}
	want := make([]byte, n)
	for i := range want {
		want[i] = byte(i)
	}
	require.Equal(t, want, got, "every frame, in order")
	require.Len(t, g.waitUsed(1, n), n)
	st := g.dev.Stats()[0]
	assert.Equal(t, uint64(n), st.TxPackets)
	assert.Zero(t, st.TxDropped)
}

func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// TestResetLoopDuringTraffic: a thousand guest resets (status 0, then a full bring-up)
// while the host keeps sending frames and the guest keeps posting buffers and TX
// chains. Every reset returns promptly; afterwards no goroutine or descriptor is left.
func TestResetLoopDuringTraffic(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 100
	}
	g := newGuest(t, 0)
	g.bringUp(rxFeatures)
	g.resetWithin(5 * time.Second)
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the host: frames as fast as the socket takes them
		defer wg.Done()
		f := seqFrame(g, 7)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := unix.Write(g.host, f); errors.Is(err, unix.EAGAIN) {
				pfd := []unix.PollFd{{Fd: int32(g.host), Events: unix.POLLOUT}}
				_, _ = unix.Poll(pfd, 10)
			}
		}
	}()
	pool := g.newRxPool()
	tf := ethFrame([6]byte{2, 0, 0, 0, 0, 9}, "tx during resets")
	tbuf := g.alloc(12 + len(tf))
	copy(g.ram[tbuf+12:], tf)
	for i := 0; i < n; i++ {
		g.bringUp(rxFeatures)
		for k := 0; k < 4; k++ {
			g.postRx(pool)
		}
		g.post(1, [3]uint64{tbuf, uint64(12 + len(tf)), 0})
		if i%50 == 0 {
			require.NotEmpty(t, g.waitUsed(0, 1), "traffic flows (round %d)", i)
		}
		g.resetWithin(5 * time.Second)
	}
	close(stop)
	wg.Wait()
	assert.Equal(t, fds, openFDs(t), "descriptors leaked")
	// A stopped worker's goroutine exits just after Stop returns: give it a moment.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // a state change we cannot be told about
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), goroutines, "goroutines leaked")
	st := g.dev.Stats()[0]
	assert.NotZero(t, st.RxPackets)
	assert.NotZero(t, st.TxPackets)
}
