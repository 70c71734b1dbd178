package virtionet

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/notify"
)

var modes = []notify.Mode{notify.Block, notify.Poll, notify.Adaptive}

func withMode(m notify.Mode) func(*Config) { return func(c *Config) { c.Mode = m } }

// rxFeatures keeps one 2048-byte buffer enough for any frame.
const rxFeatures = allFeatures &^ (FGuestTSO4 | FGuestTSO6 | FGuestUFO)

// rxPool is one fixed 2048-byte receive buffer per descriptor, so a buffer can be
// posted again as soon as its used entry is seen.
type rxPool [qsize]uint64

func (g *guest) newRxPool() *rxPool {
	var p rxPool
	for i := range p {
		p[i] = g.alloc(2048)
	}
	return &p
}

// postRx posts the pool buffer of the next free descriptor on queue 0.
func (g *guest) postRx(p *rxPool) { g.post(0, [3]uint64{p[g.next[0]], 2048, 1}) }

func seqFrame(g *guest, seq uint32) []byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], seq)
	return append(make([]byte, 12), ethFrame(g.dev.MAC(), string(b[:]))...)
}

// frameSeq is the sequence number in the frame a used entry points at.
func (g *guest) frameSeq(p *rxPool, u usedElem) uint32 {
	require.Equal(g.t, uint32(12+14+4), u.len)
	return binary.BigEndian.Uint32(g.ram[p[u.id]+12+14:])
}

// hostSend writes one frame to the port, waiting for socket room.
func (g *guest) hostSend(f []byte) {
	for {
		_, err := unix.Write(g.host, f)
		if !errors.Is(err, unix.EAGAIN) {
			require.NoError(g.t, err)
			return
		}
		pfd := []unix.PollFd{{Fd: int32(g.host), Events: unix.POLLOUT}}
		_, err = unix.Poll(pfd, 5000)
		require.NoError(g.t, err)
	}
}

// TestReceiveNoBuffersThenBuffers: frames arrive while the guest has no receive
// buffers, so the worker stops; the backend will not signal again (edge-triggered),
// so the buffers' kicks alone must make the worker resume draining the port.
func TestReceiveNoBuffersThenBuffers(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			g := newGuestN(t, 0, 1, withMode(mode))
			g.bringUp(rxFeatures)
			pool := g.newRxPool()
			// The worker's first look at the queues finds no buffers; wait for it so
			// that the count below is the frames' doing.
			deadline := time.Now().Add(5 * time.Second)
			for g.dev.Stats()[0].RxNoBuffers == 0 {
				require.True(t, time.Now().Before(deadline), "no first look at the queues")
				time.Sleep(time.Millisecond) // a state change we cannot be told about
			}
			base := g.dev.Stats()[0].RxNoBuffers
			for i := uint32(0); i < 3; i++ {
				g.hostSend(seqFrame(g, i))
			}
			for g.dev.Stats()[0].RxNoBuffers == base {
				require.True(t, time.Now().Before(deadline), "worker never looked for buffers")
				time.Sleep(time.Millisecond) // a state change we cannot be told about
			}
			assert.Zero(t, g.dev.Stats()[0].RxPackets)
			g.postRx(pool)
			u := g.waitUsed(0, 1)
			require.Len(t, u, 1, "one buffer, one frame")
			assert.Equal(t, uint32(0), g.frameSeq(pool, u[0]))
			g.postRx(pool)
			g.postRx(pool)
			u = g.waitUsed(0, 2)
			require.Len(t, u, 2)
			assert.Equal(t, uint32(1), g.frameSeq(pool, u[0]))
			assert.Equal(t, uint32(2), g.frameSeq(pool, u[1]))
			// Drained: the next arrival is a new edge.
			g.postRx(pool)
			g.hostSend(seqFrame(g, 3))
			u = g.waitUsed(0, 1)
			require.Len(t, u, 1)
			assert.Equal(t, uint32(3), g.frameSeq(pool, u[0]))
			st := g.dev.Stats()[0]
			assert.Equal(t, uint64(4), st.RxPackets)
			assert.Zero(t, st.RxDropped)
		})
	}
}

// TestReceiveBurstWhileBusy: a writer keeps the port busy while the worker fills a
// small ring and the guest recycles buffers; no frame is lost or reordered, so an
// arrival during a drain never goes unnoticed.
func TestReceiveBurstWhileBusy(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			const frames = 2000
			g := newGuestN(t, 0, 1, withMode(mode))
			g.bringUp(rxFeatures)
			pool := g.newRxPool()
			for i := 0; i < qsize; i++ {
				g.postRx(pool)
			}
			wrote := make(chan error, 1)
			go func() {
				for i := uint32(0); i < frames; i++ {
					f := seqFrame(g, i)
					for {
						_, err := unix.Write(g.host, f)
						if errors.Is(err, unix.EAGAIN) {
							pfd := []unix.PollFd{{Fd: int32(g.host), Events: unix.POLLOUT}}
							_, _ = unix.Poll(pfd, 100)
							continue
						}
						if err != nil {
							wrote <- err
							return
						}
						break
					}
				}
				wrote <- nil
			}()
			next := uint32(0)
			for next < frames {
				for _, u := range g.waitUsed(0, 1) {
					require.Equal(t, next, g.frameSeq(pool, u))
					next++
					g.postRx(pool)
				}
			}
			require.NoError(t, <-wrote)
			st := g.dev.Stats()[0]
			assert.Equal(t, uint64(frames), st.RxPackets)
			assert.Zero(t, st.RxDropped)
		})
	}
}

// BenchmarkReceive is one frame from the backend socket to a guest used entry and
// interrupt: the port's readiness wakeup, the copy and the interrupt, per mode. The
// "guest" is a goroutine woken through a channel, so on an idle machine much of the
// figure is waking it on another CPU, which a real vCPU (irqfd) does not pay.
func BenchmarkReceive(b *testing.B) {
	for _, mode := range modes {
		b.Run(mode.String(), func(b *testing.B) {
			g := newGuestN(b, 0, 1, withMode(mode))
			g.bringUp(rxFeatures)
			pool := g.newRxPool()
			for i := 0; i < qsize/2; i++ {
				g.postRx(pool)
			}
			f := seqFrame(g, 0)
			for b.Loop() {
				g.hostSend(f)
				for range g.waitUsed(0, 1) {
					g.postRx(pool)
				}
			}
			assert.Zero(b, g.dev.Stats()[0].RxDropped)
		})
	}
}
