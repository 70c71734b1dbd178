package netmap

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/notify"
)

const testWait = 10 * time.Second

func startLocal(t testing.TB, p *Port, mode notify.Mode) *Local {
	t.Helper()
	l, err := StartLocal(p, mode)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

func klPipe(t testing.TB, slots int) (m, s *Port) {
	t.Helper()
	m, s, err := NewPipe("kl", "0", PortConfig{TxSlots: slots})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

// sendSeq writes up to n frames of size bytes carrying sequence numbers from *seq
// into the free slots of a driver TX ring, advances head/cur and syncs. It returns
// how many it wrote. Safe in any goroutine.
func sendSeq(r *DriverRing, n, size int, seq *uint32) (int, error) {
	ring := r.Ring()
	h := ring.Head()
	k := min(n, int(ring.Space()))
	for i := 0; i < k; i++ {
		sl := ring.Slot(h)
		b := ring.Buf(sl.BufIdx)
		binary.LittleEndian.PutUint32(b, *seq)
		*seq++
		sl.Len, sl.Flags = uint16(size), 0
		ring.SetSlot(h, sl)
		h = ring.Next(h)
	}
	ring.SetHeadCur(h, h)
	return k, r.Sync(0)
}

// sendAll sends n sequenced frames, waiting for room when the ring is full. Safe in
// any goroutine.
func sendAll(r *DriverRing, n, batch, size int) error {
	var seq uint32
	for sent := 0; sent < n; {
		ok, err := r.Wait(testWait)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("no TX room within %v after %d frames", testWait, sent)
		}
		k, err := sendSeq(r, min(batch, n-sent), size, &seq)
		if err != nil {
			return err
		}
		sent += k
	}
	return nil
}

// recvSeq consumes every unread frame of a driver RX ring, checking the sequence
// numbers continue from *next.
func recvSeq(t testing.TB, r *DriverRing, next *uint32) int {
	ring := r.Ring()
	h, tl := ring.Head(), ring.Tail()
	n := 0
	for ; h != tl; h = ring.Next(h) {
		sl := ring.Slot(h)
		b := ring.Buf(sl.BufIdx)
		require.NotNil(t, b)
		require.GreaterOrEqual(t, int(sl.Len), 4)
		require.Equal(t, *next, binary.LittleEndian.Uint32(b), "frame out of order")
		*next++
		n++
	}
	ring.SetHeadCur(h, h)
	return n
}

// TestKloopPipeNoLoss sends frames through a pipe whose both ends are driven by host
// loops and drivers: TX into the loop on one end, RX out of the loop on the other.
// Pipes have flow control: every frame arrives, in order.
func TestKloopPipeNoLoss(t *testing.T) {
	const n = 100000
	m, s := klPipe(t, 256)
	lm := startLocal(t, m, notify.Block)
	ls := startLocal(t, s, notify.Block)
	tx, rx := lm.Driver.TxRing(0), ls.Driver.RxRing(0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		assert.NoError(t, sendAll(tx, n, 64, 60))
	}()
	var next uint32
	for got := 0; got < n; {
		ok, err := rx.Wait(testWait)
		require.NoError(t, err)
		require.True(t, ok, "no frame within %v after %d", testWait, got)
		got += recvSeq(t, rx, &next)
	}
	<-done
	assert.Equal(t, uint32(n), next)
	assert.Zero(t, m.TxRing(0).Stats().Dropped)
	assert.Zero(t, m.TxRing(0).Stats().BadSlots)
	for _, st := range append(lm.Loop.Stats(), ls.Loop.Stats()...) {
		assert.Zero(t, st.Reinits)
		assert.Zero(t, st.Errors)
	}
	t.Logf("tx %+v rx %+v; loop tx %+v rx %+v", tx.Stats(), rx.Stats(), lm.Loop.Stats()[0], ls.Loop.Stats()[1])
}

// TestKloopPingPong bounces one frame between two drivers across a pipe, each side
// waiting for its interrupt.
func TestKloopPingPong(t *testing.T) {
	const rounds = 2000
	m, s := klPipe(t, 64)
	a := startLocal(t, m, notify.Block)
	b := startLocal(t, s, notify.Block)
	done := make(chan struct{})
	go func() { // the echo side
		defer close(done)
		rx, tx := b.Driver.RxRing(0), b.Driver.TxRing(0)
		for i := 0; i < rounds; i++ {
			ok, err := rx.Wait(testWait)
			if !assert.NoError(t, err) || !assert.True(t, ok) {
				return
			}
			r := rx.Ring()
			h := r.Head()
			v := binary.LittleEndian.Uint32(r.SlotBuf(h))
			r.Advance(1)
			seq := v + 1000000
			ok, err = tx.Wait(testWait)
			if !assert.NoError(t, err) || !assert.True(t, ok) {
				return
			}
			if _, err := sendSeq(tx, 1, 60, &seq); !assert.NoError(t, err) {
				return
			}
		}
	}()
	rx, tx := a.Driver.RxRing(0), a.Driver.TxRing(0)
	start := time.Now()
	for i := uint32(0); i < rounds; i++ {
		seq := i
		ok, err := tx.Wait(testWait)
		require.NoError(t, err)
		require.True(t, ok)
		k, err := sendSeq(tx, 1, 60, &seq)
		require.NoError(t, err)
		require.Equal(t, 1, k)
		ok, err = rx.Wait(testWait)
		require.NoError(t, err)
		require.True(t, ok, "no echo for round %d", i)
		next := i + 1000000
		require.Equal(t, 1, recvSeq(t, rx, &next))
	}
	<-done
	rtt := time.Since(start) / rounds
	t.Logf("ping-pong: %v per round trip; a tx %+v rx %+v", rtt, tx.Stats(), rx.Stats())
	// Every round trip blocks on both rings: interrupts must have been used.
	assert.Positive(t, rx.Stats().Interrupts)
}

// TestKloopIdleNoWakeups: once traffic stops, a Block-mode loop sleeps in epoll: no
// wakeups, no syncs, no CPU over an idle interval.
func TestKloopIdleNoWakeups(t *testing.T) {
	m, s := klPipe(t, 64)
	a := startLocal(t, m, notify.Block)
	b := startLocal(t, s, notify.Block)
	require.NoError(t, sendAll(a.Driver.TxRing(0), 100, 16, 60))
	var next uint32
	rx := b.Driver.RxRing(0)
	for got := 0; got < 100; {
		ok, err := rx.Wait(testWait)
		require.NoError(t, err)
		require.True(t, ok)
		got += recvSeq(t, rx, &next)
	}
	require.NoError(t, rx.Sync(0)) // release, so nothing is left to do
	// Let both loops finish the last kicks and notifications: wait until their
	// counters stop moving over a short window, then measure the idle interval.
	snap := func() any {
		return []any{a.Loop.Totals().Worker, b.Loop.Totals().Worker, a.Loop.Stats(), b.Loop.Stats()}
	}
	for i, prev := 0, snap(); i < 50; i++ {
		time.Sleep(20 * time.Millisecond)
		cur := snap()
		if assert.ObjectsAreEqual(prev, cur) {
			break
		}
		prev = cur
	}
	before := []KloopTotals{a.Loop.Totals(), b.Loop.Totals()}
	beforeRings := [][]KloopStats{a.Loop.Stats(), b.Loop.Stats()}
	time.Sleep(300 * time.Millisecond) // the idle interval being measured
	after := []KloopTotals{a.Loop.Totals(), b.Loop.Totals()}
	afterRings := [][]KloopStats{a.Loop.Stats(), b.Loop.Stats()}
	for i := range before {
		assert.Equal(t, before[i].Worker, after[i].Worker, "worker %d woke while idle", i)
		assert.Equal(t, beforeRings[i], afterRings[i], "rings of loop %d ran while idle", i)
		assert.Less(t, after[i].CPU-before[i].CPU, 2*time.Millisecond, "loop %d used CPU while idle", i)
		t.Logf("loop %d: idle CPU %v, total %v, worker %+v", i, after[i].CPU-before[i].CPU, after[i].CPU, after[i].Worker)
	}
}

// TestKloopStopDuringTraffic stops both loops while frames flow; Stop returns and
// every goroutine of the loops is gone.
func TestKloopStopDuringTraffic(t *testing.T) {
	base := runtime.NumGoroutine()
	m, s := klPipe(t, 256)
	a, err := StartLocal(m, notify.Block)
	require.NoError(t, err)
	b, err := StartLocal(s, notify.Adaptive)
	require.NoError(t, err)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // sender: keeps the pipe full
		defer close(done)
		tx := a.Driver.TxRing(0)
		var seq uint32
		for {
			select {
			case <-stop:
				return
			default:
			}
			if ok, _ := tx.Wait(time.Millisecond); ok {
				_, _ = sendSeq(tx, 64, 60, &seq)
			}
		}
	}()
	rx := b.Driver.RxRing(0)
	var next uint32
	for got := 0; got < 20000; {
		ok, err := rx.Wait(testWait)
		require.NoError(t, err)
		require.True(t, ok)
		got += recvSeq(t, rx, &next)
	}
	stopped := make(chan struct{})
	go func() {
		assert.NoError(t, a.Loop.Stop())
		assert.NoError(t, b.Loop.Stop())
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(testWait):
		t.Fatal("Stop did not return during traffic")
	}
	close(stop) // the sender times out in Wait now that nobody serves the ring
	<-done
	require.NoError(t, a.Close(), "Stop is idempotent")
	require.NoError(t, b.Close())
	deadline := time.Now().Add(testWait)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), base, "goroutines left behind")
}

// TestKloopModes runs the pipe transfer with the loops polling (Poll) and adaptive.
func TestKloopModes(t *testing.T) {
	for _, mode := range []notify.Mode{notify.Adaptive, notify.Poll} {
		t.Run(mode.String(), func(t *testing.T) {
			const n = 20000
			m, s := klPipe(t, 256)
			a := startLocal(t, m, mode)
			b := startLocal(t, s, notify.Block)
			done := make(chan struct{})
			go func() {
				defer close(done)
				assert.NoError(t, sendAll(a.Driver.TxRing(0), n, 64, 60))
			}()
			rx := b.Driver.RxRing(0)
			var next uint32
			for got := 0; got < n; {
				ok, err := rx.Wait(testWait)
				require.NoError(t, err)
				require.True(t, ok)
				got += recvSeq(t, rx, &next)
			}
			<-done
			if mode == notify.Poll {
				assert.Zero(t, a.Driver.TxRing(0).Stats().Kicks, "a polling loop never asks for kicks")
			}
		})
	}
}

func TestStartKloopRejects(t *testing.T) {
	m, _ := klPipe(t, 64)
	mem := make([]byte, 256)
	csb, err := NewCSB(mem[:128], mem[128:], 2)
	require.NoError(t, err)
	e, err := notify.NewEventFD()
	require.NoError(t, err)
	defer e.Close()
	_, err = StartKloop(KloopConfig{Port: m, CSB: csb, Kicks: []*notify.EventFD{e}})
	assert.ErrorContains(t, err, "1 kick eventfds for 2 rings")
	_, err = StartKloop(KloopConfig{Port: m, CSB: csb, Kicks: []*notify.EventFD{e, nil}})
	assert.ErrorContains(t, err, "no kick eventfd")
	csb3, err := NewCSB(make([]byte, 192), make([]byte, 192), 3)
	require.NoError(t, err)
	_, err = StartKloop(KloopConfig{Port: m, CSB: csb3, Kicks: []*notify.EventFD{e, e, e}})
	assert.ErrorContains(t, err, "1+1 rings, csb 3")
	l, err := StartKloop(KloopConfig{Port: m, CSB: csb, Kicks: []*notify.EventFD{nil, nil}, Mode: notify.Poll})
	require.NoError(t, err, "Poll mode needs no doorbells")
	require.NoError(t, l.Stop())
}
