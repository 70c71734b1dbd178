package notify

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func socketpair(t testing.TB) (a, b int) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return fds[0], fds[1]
}

// readAll reads fd until EAGAIN.
func readAll(fd int) (string, error) {
	var out []byte
	var b [64]byte
	for {
		n, err := unix.Read(fd, b[:])
		if errors.Is(err, unix.EAGAIN) {
			return string(out), nil
		}
		if err != nil {
			return string(out), err
		}
		if n == 0 {
			return string(out), errors.New("peer closed")
		}
		out = append(out, b[:n]...)
	}
}

func recvTimeout[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// A readiness source fires once per arrival burst and never for data that was
// already pending when the handler last ran (edge, not level); data arriving while
// the handler is busy gives exactly one more event, so it is never lost.
func TestWorkerFDEdgeTriggered(t *testing.T) {
	for _, mode := range []Mode{Block, Poll, Adaptive} {
		t.Run(mode.String(), func(t *testing.T) {
			dev, peer := socketpair(t)
			barrier, err := NewEventFD()
			require.NoError(t, err)
			defer barrier.Close()
			var fdSrc, barSrc, calls int
			reads := make(chan string, 8)
			barriers := make(chan struct{}, 8)
			busy, hold := make(chan struct{}, 1), make(chan struct{})
			w, err := NewWorker(Config{Name: "fd", Mode: mode, Spin: 20 * time.Microsecond,
				Handler: func(src int, k uint64) {
					if src == barSrc {
						barriers <- struct{}{}
						return
					}
					if src != fdSrc || k != 1 {
						t.Errorf("handler(%d, %d): want source %d with kicks 1", src, k, fdSrc)
					}
					calls++
					if calls == 1 {
						reads <- "" // leave the data pending
						return
					}
					s, err := readAll(dev)
					if err != nil {
						t.Error(err)
					}
					reads <- s
					if calls == 2 {
						busy <- struct{}{}
						<-hold // the test writes more now
					}
				}})
			require.NoError(t, err)
			barSrc, err = w.Add(barrier)
			require.NoError(t, err)
			fdSrc, err = w.AddFD(dev)
			require.NoError(t, err)
			require.Equal(t, 1, fdSrc, "indexes are shared with Add")
			w.Start()
			stopped := false
			defer func() {
				if !stopped {
					select {
					case <-hold:
					default:
						close(hold)
					}
					w.Stop()
				}
			}()
			roundTrip := func() {
				require.NoError(t, barrier.Signal())
				recvTimeout(t, barriers, "barrier")
			}

			_, err = unix.Write(peer, []byte("a"))
			require.NoError(t, err)
			assert.Equal(t, "", recvTimeout(t, reads, "first event"))
			roundTrip() // level-triggered would have fired again by now

			_, err = unix.Write(peer, []byte("b"))
			require.NoError(t, err)
			assert.Equal(t, "ab", recvTimeout(t, reads, "second event"), "pending data plus the new arrival")
			recvTimeout(t, busy, "busy handler")
			for _, s := range []string{"c", "d"} {
				_, err = unix.Write(peer, []byte(s))
				require.NoError(t, err)
			}
			close(hold)
			assert.Equal(t, "cd", recvTimeout(t, reads, "event for data that arrived while busy"))
			roundTrip()
			stopped = true
			require.NoError(t, w.Stop())
			assert.Equal(t, 3, calls, "one event per burst")
			assert.Empty(t, reads)
			st := w.Stats()
			assert.Equal(t, uint64(3), st.Ready)
			assert.Equal(t, uint64(2), st.Kicks, "readiness is not counted as kicks")
			if mode == Poll {
				assert.Zero(t, st.Blocks)
			}
		})
	}
}

func TestWorkerAddFDErrors(t *testing.T) {
	w, err := NewWorker(Config{Name: "t", Handler: func(int, uint64) {}})
	require.NoError(t, err)
	_, err = w.AddFD(-1)
	assert.ErrorContains(t, err, "invalid descriptor")

	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK))
	unix.Close(p[0])
	unix.Close(p[1])
	_, err = w.AddFD(p[0])
	assert.ErrorIs(t, err, unix.EBADF, "closed descriptor")

	f, err := os.Create(filepath.Join(t.TempDir(), "plain"))
	require.NoError(t, err)
	defer f.Close()
	_, err = w.AddFD(int(f.Fd()))
	assert.ErrorIs(t, err, unix.EPERM, "a regular file cannot be waited on")

	a, _ := socketpair(t)
	idx, err := w.AddFD(a)
	require.NoError(t, err)
	assert.Equal(t, 0, idx, "failed adds take no index")
	_, err = w.AddFD(a)
	assert.ErrorIs(t, err, unix.EEXIST, "the same descriptor twice")

	w.Start()
	_, b := socketpair(t)
	_, err = w.AddFD(b)
	assert.ErrorContains(t, err, "AddFD after Start")
	require.NoError(t, w.Stop())
}

// Init runs once, before any event is handled: work pending before Start is seen
// there, and what was signalled before Start is still delivered afterwards.
func TestWorkerInit(t *testing.T) {
	for _, mode := range []Mode{Block, Poll, Adaptive} {
		t.Run(mode.String(), func(t *testing.T) {
			var order []string
			got := make(chan struct{})
			e, err := NewEventFD()
			require.NoError(t, err)
			defer e.Close()
			w, err := NewWorker(Config{Mode: mode,
				Init:    func() { order = append(order, "init") },
				Handler: func(int, uint64) { order = append(order, "kick"); close(got) }})
			require.NoError(t, err)
			_, err = w.Add(e)
			require.NoError(t, err)
			require.NoError(t, e.Signal())
			w.Start()
			recvTimeout(t, got, "kick")
			require.NoError(t, w.Stop())
			assert.Equal(t, []string{"init", "kick"}, order)
		})
	}
}

// fdWatcher is the route AddFD replaces: a goroutine waits edge-triggered on fd and
// signals an eventfd the worker waits on.
type fdWatcher struct {
	epfd int
	stop *EventFD
	done chan struct{}
}

func newFDWatcher(b *testing.B, fd int, signal *EventFD) *fdWatcher {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	require.NoError(b, err)
	stop, err := NewEventFD()
	require.NoError(b, err)
	require.NoError(b, unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET}))
	require.NoError(b, unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stop.FD(), &unix.EpollEvent{Events: unix.EPOLLIN, Fd: 1}))
	w := &fdWatcher{epfd: epfd, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		ev := make([]unix.EpollEvent, 2)
		for {
			n, err := unix.EpollWait(epfd, ev, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			for _, e := range ev[:n] {
				if e.Fd == 1 {
					return
				}
				_ = signal.Signal()
			}
		}
	}()
	return w
}

func (w *fdWatcher) close() {
	_ = w.stop.Signal()
	<-w.done
	unix.Close(w.epfd)
	w.stop.Close()
}

// BenchmarkFDWakeup is one byte written to a socket until the worker's handler has
// read it and answered, with the socket watched by the worker itself (addfd) or by a
// separate goroutine that signals an eventfd the worker waits on (watcher).
func BenchmarkFDWakeup(b *testing.B) {
	for _, mode := range []Mode{Block, Poll, Adaptive} {
		for _, route := range []string{"addfd", "watcher"} {
			b.Run(mode.String()+"/"+route, func(b *testing.B) {
				dev, peer := socketpair(b)
				ack := make(chan struct{})
				var buf [64]byte
				w, err := NewWorker(Config{Mode: mode, Handler: func(int, uint64) {
					for {
						if _, err := unix.Read(dev, buf[:]); err != nil {
							break
						}
					}
					ack <- struct{}{}
				}})
				require.NoError(b, err)
				if route == "addfd" {
					_, err = w.AddFD(dev)
					require.NoError(b, err)
				} else {
					e, err := NewEventFD()
					require.NoError(b, err)
					defer e.Close()
					_, err = w.Add(e)
					require.NoError(b, err)
					defer newFDWatcher(b, dev, e).close()
				}
				w.Start()
				one := []byte{1}
				for b.Loop() {
					if _, err := unix.Write(peer, one); err != nil {
						b.Fatal(err)
					}
					<-ack
				}
				require.NoError(b, w.Stop())
			})
		}
	}
}
