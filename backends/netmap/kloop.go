package netmap

import (
	"errors"
	"time"

	"github.com/ptvmm/ptvmm/notify"
)

// KloopConfig describes a host loop (netmap's sync kloop, SPECS 3.7) for a port's
// rings driven through a CSB.
type KloopConfig struct {
	Name  string
	Port  *Port             // HW TX rings then HW RX rings are CSB rings 0..n-1
	CSB   *CSB              // NumRings() == Port.NumTxRings()+Port.NumRxRings()
	Kicks []*notify.EventFD // per ring: the app's doorbell (an ioeventfd's eventfd)
	Irqs  []*notify.EventFD // per ring: written to interrupt the app (an irqfd's eventfd); nil entry = never
	Mode  notify.Mode       // Block (default), Adaptive, Poll
	Spin  time.Duration     // adaptive window (notify.DefaultSpin if zero)
	Logf  func(format string, args ...any)
}

// KloopStats are one ring's host-loop counters (monotonic).
type KloopStats struct {
	Syncs      uint64 // SyncCSB calls
	Wakeups    uint64 // times the ring was run because of a kick or a backend notification
	Kicks      uint64 // doorbell counts read
	Notifies   uint64 // backend notifications (RX frames arrived, TX room appeared)
	Interrupts uint64 // interrupts sent
	Reinits    uint64 // bad CSB head/cur: ring reinitialised
	Errors     uint64 // other sync errors
}

// Kloop is a running host loop.
type Kloop struct {
	cfg KloopConfig
}

// StartKloop starts the host loop. It does not InitCSB (the device does on CREATE).
func StartKloop(cfg KloopConfig) (*Kloop, error) {
	return nil, errors.New("netmap: kloop: not implemented yet")
}

// Stop stops the loop; idempotent; returns when every goroutine is gone.
func (l *Kloop) Stop() error { return nil }

// Stats returns per-ring counters, CSB ring order.
func (l *Kloop) Stats() []KloopStats { return nil }
