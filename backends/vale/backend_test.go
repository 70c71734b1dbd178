package vale

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
)

// fakeBackend is a backends.Port with frames queued by the test (Recv) and frames
// taken (Send); it takes at most sendCap frames per Send when sendCap > 0.
type fakeBackend struct {
	mu      sync.Mutex
	name    string
	in      [][]byte
	out     [][]byte
	sendCap int
	efd     int // -1: no readiness fd
	got     chan struct{}
}

var _ backends.Port = (*fakeBackend)(nil)

func newFake(t *testing.T, name string, withFD bool) *fakeBackend {
	f := &fakeBackend{name: name, efd: -1, got: make(chan struct{}, 1)}
	if withFD {
		fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		require.NoError(t, err)
		f.efd = fd
		t.Cleanup(func() { unix.Close(fd) })
	}
	return f
}

func (f *fakeBackend) Name() string { return f.name }
func (f *fakeBackend) push(frames ...[]byte) {
	f.mu.Lock()
	f.in = append(f.in, frames...)
	f.mu.Unlock()
	if f.efd >= 0 {
		one := [8]byte{1}
		unix.Write(f.efd, one[:])
	}
}
func (f *fakeBackend) Recv(bufs [][]byte, lens []int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.efd >= 0 {
		var b [8]byte
		unix.Read(f.efd, b[:])
	}
	n := 0
	for n < len(bufs) && len(f.in) > 0 {
		lens[n] = copy(bufs[n], f.in[0])
		f.in = f.in[1:]
		n++
	}
	if len(f.in) > 0 && f.efd >= 0 {
		one := [8]byte{1}
		unix.Write(f.efd, one[:])
	}
	return n, nil
}
func (f *fakeBackend) Send(frames [][]byte) (int, error) {
	f.mu.Lock()
	n := len(frames)
	if f.sendCap > 0 {
		n = min(n, f.sendCap)
	}
	for _, fr := range frames[:n] {
		f.out = append(f.out, append([]byte(nil), fr...))
	}
	f.mu.Unlock()
	select {
	case f.got <- struct{}{}:
	default:
	}
	return n, nil
}
func (f *fakeBackend) taken() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.out...)
}
func (f *fakeBackend) ReadyFD() int { return f.efd }
func (f *fakeBackend) Close() error { return nil }

func TestBackendPortPoll(t *testing.T) {
	s, err := New("vale2")
	require.NoError(t, err)
	fx, fy := newFake(t, "x", false), newFake(t, "y", false)
	x, err := s.AttachBackend("x", fx, BackendOptions{Slots: 64})
	require.NoError(t, err)
	defer x.Close()
	y, err := s.AttachBackend("y", fy, BackendOptions{Slots: 64})
	require.NoError(t, err)
	defer y.Close()
	native, err := s.NewPort("n", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer native.Detach()
	nu := newUser(t, native)

	fx.push(eth(bcastMAC, mac(0x1), 60, 1), eth(mac(0x2), mac(0x1), 1514, 2))
	in, out, err := x.Poll()
	require.NoError(t, err)
	assert.Equal(t, 2, in)
	assert.Equal(t, 0, out)
	_, out, err = y.Poll()
	require.NoError(t, err)
	assert.Equal(t, 2, out)
	assert.Equal(t, []uint32{1, 2}, tags(fy.taken()))
	assert.Equal(t, eth(mac(0x2), mac(0x1), 1514, 2), fy.taken()[1])
	assert.Equal(t, []uint32{1, 2}, tags(nu.recv()))

	// A long frame from a native port arrives at the backend as one frame.
	long := eth(mac(0x1), mac(0x9), 4000, 3)
	nu.queueChain(long[:2000], long[2000:])
	require.NoError(t, native.TxSync(0))
	_, out, err = x.Poll()
	require.NoError(t, err)
	assert.Equal(t, 1, out)
	assert.Equal(t, [][]byte{long}, fx.taken())

	// A backend that takes fewer frames than offered: the rest are dropped, counted.
	fy.sendCap = 2
	for i := 0; i < 5; i++ {
		nu.send(eth(bcastMAC, mac(0x9), 60, uint32(10+i)))
	}
	_, out, err = y.Poll()
	require.NoError(t, err)
	assert.Equal(t, 5, out)
	assert.Len(t, fy.taken(), 4)
	assert.Equal(t, uint64(3), y.Stats().SendDropped)
	_, out, _ = y.Poll()
	assert.Equal(t, 0, out, "dropped frames were not released")

	require.NoError(t, x.Close())
	assert.Nil(t, s.PortByName("x"))
	require.NoError(t, x.Close(), "second Close is a no-op")
	_, _, err = x.Poll()
	require.Error(t, err, "Poll after Close must not touch freed rings")
}

// TestBackendPortPump runs two pumps and a pipe: frames written by an application
// into one end of a netmap pipe reach a fake backend through the switch.
func TestBackendPortPump(t *testing.T) {
	s, err := New("vale3")
	require.NoError(t, err)
	master, slave, err := netmap.NewPipe("app", "1", netmap.PortConfig{TxSlots: 128})
	require.NoError(t, err)
	app, err := netmap.NewEndpoint(master, true)
	require.NoError(t, err)
	defer app.Close()
	pipeEnd, err := netmap.NewEndpoint(slave, true)
	require.NoError(t, err)
	defer pipeEnd.Close()

	pb, err := s.AttachBackend("pipe", pipeEnd, BackendOptions{})
	require.NoError(t, err)
	defer pb.Close()
	fy := newFake(t, "y", true)
	y, err := s.AttachBackend("y", fy, BackendOptions{})
	require.NoError(t, err)
	defer y.Close()
	require.NoError(t, pb.Start())
	require.NoError(t, y.Start())
	require.Error(t, y.Start())

	const n = 300
	var frames [][]byte
	for i := 0; i < n; i++ {
		frames = append(frames, eth(bcastMAC, mac(0x1), 60+i%100, uint32(i)))
	}
	for sent := 0; sent < n; {
		k, err := app.Send(frames[sent:min(sent+50, n)])
		require.NoError(t, err)
		sent += k
		if k == 0 {
			runtimeGosched()
		}
	}
	deadline := time.After(10 * time.Second)
	for len(fy.taken()) < n {
		select {
		case <-fy.got:
		case <-deadline:
			t.Fatalf("backend got %d of %d frames; counters %+v", len(fy.taken()), n, y.Port().Counters())
		}
	}
	got := fy.taken()
	for i := range got {
		require.Equal(t, frames[i], got[i], "frame %d", i)
	}

	// And back: the backend's frames reach the application through the pipe.
	fy.push(eth(mac(0x1), mac(0x2), 60, 7))
	bufs, lens := [][]byte{make([]byte, 2048)}, []int{0}
	var pfd = []unix.PollFd{{Fd: int32(app.ReadyFD()), Events: unix.POLLIN}}
	for {
		k, err := app.Recv(bufs, lens)
		require.NoError(t, err)
		if k == 1 {
			break
		}
		_, err = unix.Poll(pfd, 10000)
		require.NoError(t, err)
		require.NotZero(t, pfd[0].Revents, "no frame within 10 s")
	}
	assert.Equal(t, eth(mac(0x1), mac(0x2), 60, 7), bufs[0][:lens[0]])
}
