package vale

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
)

// Attacks on a BackendPort's rings by a peer sharing its region, and a backend that
// never runs dry. Each failed before the fix it names.

// TestBackendEgressTailPastRing: while the backend port's egress runs, a peer keeps
// writing a tail past the end of its RX ring and empty NS_MOREFRAG slots. Egress takes
// tail from the kernel state and bounds its walk, so every Poll returns. (Before, a
// tail read back from the header after the peer's store made the walk never end.)
func TestBackendEgressTailPastRing(t *testing.T) {
	s, err := New("vale9")
	require.NoError(t, err)
	fy := newFake(t, "y", false)
	y, err := s.AttachBackend("y", fy, BackendOptions{Slots: 64})
	require.NoError(t, err)
	defer y.Close()
	native, err := s.NewPort("n", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer native.Detach()
	nu := newUser(t, native)
	for i := 0; i < 8; i++ {
		nu.send(eth(bcastMAC, mac(1), 60, uint32(i)))
	}
	mem := y.port.Netmap().Region().Bytes()
	rx, off := y.rx, y.rxk.Offset()
	stop, started := make(chan struct{}), make(chan struct{})
	var rounds atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the hostile peer
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i := uint32(0); i < rx.NumSlots(); i++ {
				sl := rx.Slot(i)
				sl.Len, sl.Flags = 0, netmap.NSMoreFrag
				rx.SetSlot(i, sl)
			}
			poke32(mem, off+netmap.RingTailOff, rx.NumSlots()+3)
			if rounds.Add(1) == 1 {
				close(started)
			}
		}
	}()
	<-started
	var calls atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for calls.Load() < 50000 || rounds.Load() < 2000 {
			_, _, _ = y.Poll()
			calls.Add(1)
			if calls.Load()%64 == 0 {
				nu.send(eth(bcastMAC, mac(1), 60, 0)) // keep frames coming
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		close(stop)
		t.Fatalf("Poll did not return (call %d) with the peer writing tail past the ring", calls.Load()+1)
	}
	close(stop)
	wg.Wait()
}

// endless is a backend that always has frames: a busy TAP or a flooding peer.
type endless struct{ frame []byte }

func (e *endless) Name() string                      { return "endless" }
func (e *endless) Send(frames [][]byte) (int, error) { return len(frames), nil }
func (e *endless) ReadyFD() int                      { return -1 }
func (e *endless) Close() error                      { return nil }
func (e *endless) Recv(bufs [][]byte, lens []int) (int, error) {
	for i := range bufs {
		lens[i] = copy(bufs[i], e.frame)
	}
	return len(bufs), nil
}

var _ backends.Port = (*endless)(nil)

// TestBackendPumpStopsUnderLoad: a backend that never runs dry cannot keep Close
// waiting: the pump looks at its stop event between bounded rounds. (Before: it
// polled for as long as frames moved, and Close never returned.)
func TestBackendPumpStopsUnderLoad(t *testing.T) {
	s, err := New("vale10")
	require.NoError(t, err)
	b, err := s.AttachBackend("e", &endless{frame: eth(bcastMAC, mac(3), 60, 1)}, BackendOptions{Slots: 64})
	require.NoError(t, err)
	require.NoError(t, b.Start())
	deadline := time.Now().Add(5 * time.Second)
	for b.Port().Counters().TxFrames == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // a state change we cannot be told about
	}
	require.NotZero(t, b.Port().Counters().TxFrames, "the pump never ran")
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked: the pump never looked at its stop event")
	}
}

// TestBackendIngressIgnoresCorruptHead: a peer moves the backend port's TX head and
// cur over slots it filled with frames of its own. Ingress takes its position from the
// kernel state, so only the backend's frame enters the switch.
func TestBackendIngressIgnoresCorruptHead(t *testing.T) {
	s, err := New("vale11")
	require.NoError(t, err)
	fx := newFake(t, "x", false)
	x, err := s.AttachBackend("x", fx, BackendOptions{Slots: 64})
	require.NoError(t, err)
	defer x.Close()
	native, err := s.NewPort("n", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer native.Detach()
	nu := newUser(t, native)
	for i := uint32(0); i < 3; i++ { // the peer's frames, then head and cur past them
		sl := x.tx.Slot(i)
		f := eth(bcastMAC, mac(7), 60, 100+i)
		copy(x.tx.Buf(sl.BufIdx), f)
		sl.Len, sl.Flags = uint16(len(f)), 0
		x.tx.SetSlot(i, sl)
	}
	x.tx.SetHeadCur(3, 3)
	fx.push(eth(bcastMAC, mac(1), 60, 1))
	in, _, err := x.Poll()
	require.NoError(t, err)
	assert.Equal(t, 1, in)
	assert.Equal(t, []uint32{1}, tags(nu.recv()), "only the backend's frame")
}

// TestBackendEgressBadSlot: a frame whose slot a peer pointed at no valid buffer is
// dropped and counted, its slot released, and the next frame flows.
func TestBackendEgressBadSlot(t *testing.T) {
	s, err := New("vale12")
	require.NoError(t, err)
	fy := newFake(t, "y", false)
	y, err := s.AttachBackend("y", fy, BackendOptions{Slots: 64})
	require.NoError(t, err)
	defer y.Close()
	native, err := s.NewPort("n", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer native.Detach()
	nu := newUser(t, native)
	nu.send(eth(bcastMAC, mac(1), 60, 1), eth(bcastMAC, mac(1), 60, 2))
	require.NoError(t, y.rxk.Sync(netmap.ForceRead))
	sl := y.rx.Slot(0)
	keep := sl.BufIdx
	sl.BufIdx = 0xffffffff
	y.rx.SetSlot(0, sl)
	_, out, err := y.Poll()
	require.NoError(t, err)
	assert.Equal(t, 1, out)
	assert.Equal(t, []uint32{2}, tags(fy.taken()))
	assert.Equal(t, uint64(1), y.Stats().BadFrames)
	sl.BufIdx = keep // repair for Detach, which frees the ring's buffers
	y.rx.SetSlot(0, sl)
	nu.send(eth(bcastMAC, mac(1), 60, 3))
	_, out, err = y.Poll()
	require.NoError(t, err)
	assert.Equal(t, 1, out)
	assert.Equal(t, []uint32{2, 3}, tags(fy.taken()))
}
