package notify

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEventFD(t *testing.T) {
	e, err := NewEventFD()
	require.NoError(t, err)
	defer e.Close()
	n, err := e.Read()
	require.NoError(t, err)
	assert.Zero(t, n, "empty eventfd reads 0 without blocking")
	require.NoError(t, e.Signal())
	require.NoError(t, e.Add(41))
	n, err = e.Read()
	require.NoError(t, err)
	assert.Equal(t, uint64(42), n)
	n, _ = e.Read()
	assert.Zero(t, n, "read resets the counter")
	// The counter saturates below 2^64-1: adding past that is refused, never blocks.
	require.NoError(t, e.Add(^uint64(0)-1))
	assert.Error(t, e.Add(1))
	require.NoError(t, e.Close())
	require.NoError(t, e.Close(), "second close is a no-op")
}

func TestWorkerConfigErrors(t *testing.T) {
	_, err := NewWorker(Config{})
	assert.Error(t, err, "no handler")
	_, err = NewWorker(Config{Handler: func(int, uint64) {}, Mode: 7})
	assert.Error(t, err)
	w, err := NewWorker(Config{Handler: func(int, uint64) {}})
	require.NoError(t, err)
	w.Start()
	e, _ := NewEventFD()
	defer e.Close()
	_, err = w.Add(e)
	assert.Error(t, err, "Add after Start")
	require.NoError(t, w.Stop())
	require.NoError(t, w.Stop())
}

// Every mode accounts for every signal: several producers add to several eventfds
// and the per-source sums seen by the handler equal what was added.
func TestWorkerAccountsEveryKick(t *testing.T) {
	for _, mode := range []Mode{Block, Poll, Adaptive} {
		t.Run(mode.String(), func(t *testing.T) {
			const sources, perSource = 4, 5000
			var got [sources]atomic.Uint64
			done := make(chan struct{})
			var total atomic.Uint64
			var wantTotal uint64
			for s := 0; s < sources; s++ {
				for i := 0; i < perSource; i++ {
					wantTotal += uint64(i%3 + 1)
				}
			}
			w, err := NewWorker(Config{Name: "t", Mode: mode, Spin: 20 * time.Microsecond,
				Handler: func(src int, k uint64) {
					got[src].Add(k)
					if total.Add(k) == wantTotal {
						close(done)
					}
				}})
			require.NoError(t, err)
			evs := make([]*EventFD, sources)
			for i := range evs {
				evs[i], err = NewEventFD()
				require.NoError(t, err)
				defer evs[i].Close()
				idx, err := w.Add(evs[i])
				require.NoError(t, err)
				require.Equal(t, i, idx)
			}
			w.Start()
			var wg sync.WaitGroup
			for s := 0; s < sources; s++ {
				wg.Add(1)
				go func(s int) {
					defer wg.Done()
					for i := 0; i < perSource; i++ {
						if err := evs[s].Add(uint64(i%3 + 1)); err != nil {
							t.Error(err)
							return
						}
					}
				}(s)
			}
			wg.Wait()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatalf("worker saw %d of %d kicks", total.Load(), wantTotal)
			}
			require.NoError(t, w.Stop())
			st := w.Stats()
			assert.Equal(t, wantTotal, st.Kicks)
			for s := 0; s < sources; s++ {
				assert.Equal(t, wantTotal/sources, got[s].Load(), "source %d", s)
			}
			assert.NotZero(t, st.Wakeups)
			assert.LessOrEqual(t, st.Wakeups, st.Kicks, "a wakeup consumes at least one kick")
			if mode == Poll {
				assert.Zero(t, st.Blocks, "busy-poll never sleeps")
			}
		})
	}
}

// Adaptive mode polls while work keeps coming, then arms notifications and blocks;
// a kick after that wakes it and Disarm runs.
func TestWorkerAdaptiveArmsAndBlocks(t *testing.T) {
	var armed, disarmed atomic.Int32
	seen := make(chan uint64, 16)
	w, err := NewWorker(Config{Mode: Adaptive, Spin: 100 * time.Microsecond,
		Handler: func(_ int, k uint64) { seen <- k },
		Arm:     func() bool { armed.Add(1); return false },
		Disarm:  func() { disarmed.Add(1) },
	})
	require.NoError(t, err)
	e, _ := NewEventFD()
	defer e.Close()
	_, err = w.Add(e)
	require.NoError(t, err)
	w.Start()
	defer w.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for w.Stats().Blocks == 0 {
		require.True(t, time.Now().Before(deadline), "adaptive worker never blocked")
		time.Sleep(time.Millisecond) // waiting for a state change we cannot be told about
	}
	assert.Equal(t, int32(1), armed.Load(), "armed once before blocking")
	require.NoError(t, e.Add(3))
	assert.Equal(t, uint64(3), <-seen)
	for disarmed.Load() == 0 {
		require.True(t, time.Now().Before(deadline), "no disarm after wakeup")
		time.Sleep(time.Millisecond)
	}
}

// Arm reporting work keeps the worker polling instead of sleeping.
func TestWorkerArmRace(t *testing.T) {
	var polls atomic.Int32
	calls := atomic.Int32{}
	w, err := NewWorker(Config{Mode: Adaptive, Spin: time.Microsecond,
		Handler: func(int, uint64) {},
		Poll:    func() bool { return polls.Add(1) < 3 },
		Arm:     func() bool { return calls.Add(1) < 5 }, // work "appeared" 4 times
	})
	require.NoError(t, err)
	w.Start()
	deadline := time.Now().Add(10 * time.Second)
	for w.Stats().Blocks == 0 {
		require.True(t, time.Now().Before(deadline))
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, w.Stop())
	assert.Equal(t, int32(5), calls.Load(), "blocked only after Arm found nothing")
	assert.Equal(t, uint64(2), w.Stats().Wakeups, "two poll hits")
}

func TestWorkerStopsPromptlyInEveryMode(t *testing.T) {
	for _, mode := range []Mode{Block, Poll, Adaptive} {
		w, err := NewWorker(Config{Mode: mode, Handler: func(int, uint64) {}})
		require.NoError(t, err)
		w.Start()
		stopped := make(chan error, 1)
		go func() { stopped <- w.Stop() }()
		select {
		case err := <-stopped:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%v worker did not stop", mode)
		}
	}
}

func BenchmarkEventFDSignal(b *testing.B) {
	e, err := NewEventFD()
	require.NoError(b, err)
	defer e.Close()
	for b.Loop() {
		if err := e.Signal(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWorkerWakeup is one kick from another goroutine to the handler and back,
// per waiting mode.
func BenchmarkWorkerWakeup(b *testing.B) {
	for _, mode := range []Mode{Block, Poll, Adaptive} {
		b.Run(mode.String(), func(b *testing.B) {
			ack := make(chan struct{})
			w, err := NewWorker(Config{Mode: mode, Handler: func(int, uint64) { ack <- struct{}{} }})
			require.NoError(b, err)
			e, _ := NewEventFD()
			defer e.Close()
			_, _ = w.Add(e)
			w.Start()
			for b.Loop() {
				_ = e.Signal()
				<-ack
			}
			require.NoError(b, w.Stop())
		})
	}
}
