package notify

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Mode is how a Worker waits for work.
type Mode int

const (
	// Block sleeps in epoll_wait until an eventfd fires.
	Block Mode = iota
	// Poll never sleeps: it checks the eventfds (epoll_wait with timeout 0) and calls
	// Config.Poll in a loop, burning its CPU for the lowest latency.
	Poll
	// Adaptive polls for Config.Spin after the last work found, then calls
	// Config.Arm to re-enable notifications and blocks.
	Adaptive
)

func (m Mode) String() string {
	switch m {
	case Block:
		return "block"
	case Poll:
		return "poll"
	case Adaptive:
		return "adaptive"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// DefaultSpin is the adaptive polling window when Config.Spin is zero.
const DefaultSpin = 50 * time.Microsecond

// Config describes a Worker. Every hook runs on the worker's own locked OS thread.
type Config struct {
	Name string
	Mode Mode
	// Spin bounds adaptive polling after the last work found (DefaultSpin if zero).
	Spin time.Duration
	// Handler runs when source src (the index Add or AddFD returned) fired: for an
	// eventfd source, kicks > 0 is how often it was signalled since the last call; for
	// a readiness source (AddFD), kicks is always 1 and means "became readable at
	// least once since the last call". Required.
	Handler func(src int, kicks uint64)
	// Init, if set, runs once before the worker first waits. Work that arrived before
	// the sources were watched (a kick sent before its eventfd was bound, data that
	// was already pending on a readiness source) may produce no event: look here.
	Init func()
	// Poll, if set, runs every polling iteration (Poll and Adaptive modes) and once after
	// every wakeup in Block mode; it reports whether it found work without a kick (for
	// example new slots published by a guest that was told not to kick).
	Poll func() bool
	// Arm, if set, runs in Adaptive mode before blocking: it re-enables notifications
	// (asks the guest to kick again) and reports whether work appeared meanwhile, in
	// which case the worker keeps polling instead of blocking.
	Arm func() bool
	// Disarm, if set, runs in Adaptive mode when the worker wakes from blocking and
	// starts polling again (tell the guest kicks are not needed).
	Disarm func()
}

// Stats are a Worker's counters. Each is monotonic.
type Stats struct {
	Wakeups    uint64 // times the worker found work after waiting (a kick, readiness or a poll hit)
	Kicks      uint64 // sum of eventfd counts read from the Add sources
	Ready      uint64 // readiness events from the AddFD sources (they carry no count)
	Interrupts uint64 // interrupts raised through Worker.Raise
	Blocks     uint64 // times the worker went to sleep in epoll_wait
}

// Worker is the host-side equivalent of a netmap kthread: one goroutine locked to its
// OS thread, waiting on its eventfds and running Config.Handler.
//
// Concurrency: Add and AddFD are called before Start, from one goroutine. Start and
// Stop are called once each. Stats may be called from any goroutine at any time.
// Raise is meant for the handler but is safe from any goroutine.
type Worker struct {
	cfg     Config
	srcs    []*EventFD // nil: an AddFD readiness source
	epfd    int
	stopfd  *EventFD
	stopped atomic.Bool
	started bool
	done    chan struct{}
	err     error
	once    sync.Once

	wakeups, kicks, ready, interrupts, blocks atomic.Uint64
}

// NewWorker validates cfg and creates the epoll instance.
func NewWorker(cfg Config) (*Worker, error) {
	if cfg.Handler == nil {
		return nil, errors.New("notify: worker needs a Handler")
	}
	if cfg.Mode < Block || cfg.Mode > Adaptive {
		return nil, fmt.Errorf("notify: worker %q: unknown mode %d", cfg.Name, cfg.Mode)
	}
	if cfg.Spin <= 0 {
		cfg.Spin = DefaultSpin
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("notify: worker %q: epoll_create: %w", cfg.Name, err)
	}
	stop, err := NewEventFD()
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	w := &Worker{cfg: cfg, epfd: epfd, stopfd: stop, done: make(chan struct{})}
	if err := w.watch(stop.FD(), -1, unix.EPOLLIN); err != nil {
		w.closeFDs()
		return nil, err
	}
	return w, nil
}

func (w *Worker) watch(fd int, tag int32, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: tag}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("notify: worker %q: epoll add fd %d: %w", w.cfg.Name, fd, err)
	}
	return nil
}

// Add makes e a source of the worker and returns its index for the Handler.
// The worker does not own e.
func (w *Worker) Add(e *EventFD) (int, error) {
	if w.started {
		return 0, fmt.Errorf("notify: worker %q: Add after Start", w.cfg.Name)
	}
	idx := len(w.srcs)
	if err := w.watch(e.FD(), int32(idx), unix.EPOLLIN); err != nil {
		return 0, err
	}
	w.srcs = append(w.srcs, e)
	return idx, nil
}

// AddFD makes fd an edge-triggered readiness source (EPOLLIN|EPOLLET) of the worker
// and returns its index for the Handler, which then runs with kicks == 1 after data
// arrives on fd (arrivals before it gets to run make one call) or fd reports an error
// or hangup. The worker neither reads nor closes fd; fd must stay open until Stop
// returns.
//
// Edge-triggered means no new event comes for data that was already pending when the
// Handler last ran: the Handler must consume until EAGAIN, or, if it stops early (no
// room for the data), remember that and resume when something else wakes it.
// Readiness at the time of AddFD may or may not be reported; use Config.Init.
func (w *Worker) AddFD(fd int) (int, error) {
	if w.started {
		return 0, fmt.Errorf("notify: worker %q: AddFD after Start", w.cfg.Name)
	}
	if fd < 0 {
		return 0, fmt.Errorf("notify: worker %q: AddFD: invalid descriptor %d", w.cfg.Name, fd)
	}
	idx := len(w.srcs)
	if err := w.watch(fd, int32(idx), unix.EPOLLIN|unix.EPOLLET); err != nil {
		return 0, err
	}
	w.srcs = append(w.srcs, nil)
	return idx, nil
}

// Start launches the worker goroutine.
func (w *Worker) Start() {
	w.started = true
	go w.run()
}

// Stop asks the worker to finish, waits for it and releases its descriptors. It returns
// the error that ended the loop, if any. Safe to call more than once.
func (w *Worker) Stop() error {
	w.once.Do(func() {
		w.stopped.Store(true)
		if w.started {
			_ = w.stopfd.Signal()
			<-w.done
		}
		w.closeFDs()
	})
	return w.err
}

func (w *Worker) closeFDs() {
	unix.Close(w.epfd)
	w.stopfd.Close()
}

// Stats returns a snapshot of the counters.
func (w *Worker) Stats() Stats {
	return Stats{
		Wakeups:    w.wakeups.Load(),
		Kicks:      w.kicks.Load(),
		Ready:      w.ready.Load(),
		Interrupts: w.interrupts.Load(),
		Blocks:     w.blocks.Load(),
	}
}

// Raise fires an interrupt and counts it.
func (w *Worker) Raise(i *Interrupt) error {
	if err := i.Fire(); err != nil {
		return err
	}
	w.interrupts.Add(1)
	return nil
}

func (w *Worker) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(w.done)
	events := make([]unix.EpollEvent, len(w.srcs)+1)
	if w.cfg.Init != nil {
		w.cfg.Init()
	}
	var err error
	switch w.cfg.Mode {
	case Block:
		err = w.runWait(events, -1)
	case Poll:
		err = w.runWait(events, 0)
	case Adaptive:
		err = w.runAdaptive(events)
	}
	w.err = err
}

// drain waits up to timeout ms (0: don't wait, -1: forever) and handles every source that
// fired. It reports whether any kick or readiness was found and whether stop was
// requested.
func (w *Worker) drain(events []unix.EpollEvent, timeout int) (work, stop bool, err error) {
	n, err := unix.EpollWait(w.epfd, events, timeout)
	if err == unix.EINTR {
		return false, w.stopped.Load(), nil
	}
	if err != nil {
		return false, true, fmt.Errorf("notify: worker %q: epoll_wait: %w", w.cfg.Name, err)
	}
	for _, ev := range events[:n] {
		if ev.Fd < 0 {
			stop = true
			continue
		}
		src := w.srcs[ev.Fd]
		if src == nil {
			work = true
			w.ready.Add(1)
			w.cfg.Handler(int(ev.Fd), 1)
			continue
		}
		k, err := src.Read()
		if err != nil {
			return work, true, fmt.Errorf("notify: worker %q: source %d: %w", w.cfg.Name, ev.Fd, err)
		}
		if k == 0 {
			continue
		}
		work = true
		w.kicks.Add(k)
		w.cfg.Handler(int(ev.Fd), k)
	}
	return work, stop || w.stopped.Load(), nil
}

func (w *Worker) poll() bool {
	return w.cfg.Poll != nil && w.cfg.Poll()
}

// runWait waits in epoll with timeout: -1 blocks (counted in blocks), 0 busy-polls.
func (w *Worker) runWait(events []unix.EpollEvent, timeout int) error {
	for {
		if timeout < 0 {
			w.blocks.Add(1)
		}
		work, stop, err := w.drain(events, timeout)
		if err != nil || stop {
			return err
		}
		if w.poll() {
			work = true
		}
		if work {
			w.wakeups.Add(1)
		}
	}
}

func (w *Worker) runAdaptive(events []unix.EpollEvent) error {
	last := time.Now()
	for {
		work, stop, err := w.drain(events, 0)
		if err != nil || stop {
			return err
		}
		if w.poll() {
			work = true
		}
		if work {
			w.wakeups.Add(1)
			last = time.Now()
			continue
		}
		if time.Since(last) < w.cfg.Spin {
			continue
		}
		// Idle for a full window: ask for notifications, then sleep unless work
		// slipped in between the last poll and arming.
		if w.cfg.Arm != nil && w.cfg.Arm() {
			last = time.Now()
			continue
		}
		w.blocks.Add(1)
		work, stop, err = w.drain(events, -1)
		if err != nil || stop {
			return err
		}
		if w.cfg.Disarm != nil {
			w.cfg.Disarm()
		}
		if w.poll() {
			work = true
		}
		if work {
			w.wakeups.Add(1)
		}
		last = time.Now()
	}
}
