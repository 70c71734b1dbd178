package netmap

import (
	"errors"
	"time"
)

// DriverConfig describes the app/guest side of a CSB-driven port.
type DriverConfig struct {
	Mem  []byte // the port's region as the app maps it (BAR1, or the memfd)
	Nifp uint64 // netmap_if offset in Mem (ptnet NIFP_OFS)
	CSB  *CSB
	// Kick writes the doorbell of CSB ring i.
	Kick func(ring int) error
	// Wait blocks until ring i's interrupt (false on timeout); nil: poll.
	Wait func(ring int, timeout time.Duration) (bool, error)
}

// DriverRingStats are one driver ring's counters.
type DriverRingStats struct {
	Syncs      uint64 // Sync calls
	Kicks      uint64 // doorbell writes
	Waits      uint64 // times Wait blocked in Config.Wait
	Interrupts uint64 // Config.Wait calls that returned true
	Reinits    uint64 // bad head/cur from the ring's user: ring reinitialised
}

// Driver is the app side of a port whose host loop runs over a CSB.
type Driver struct {
	cfg    DriverConfig
	tx, rx []*DriverRing
}

// DriverRing is one ring of a Driver.
type DriverRing struct {
	d    *Driver
	idx  int
	ring *Ring
}

// NewDriver opens the netmap_if and rings in cfg.Mem.
func NewDriver(cfg DriverConfig) (*Driver, error) {
	return nil, errors.New("netmap: driver: not implemented yet")
}

// NumTx and NumRx are the HW ring counts.
func (d *Driver) NumTx() int { return len(d.tx) }
func (d *Driver) NumRx() int { return len(d.rx) }

// TxRing and RxRing return ring i, or nil.
func (d *Driver) TxRing(i int) *DriverRing {
	if i < 0 || i >= len(d.tx) {
		return nil
	}
	return d.tx[i]
}

func (d *Driver) RxRing(i int) *DriverRing {
	if i < 0 || i >= len(d.rx) {
		return nil
	}
	return d.rx[i]
}

// Ring is the netmap user view.
func (r *DriverRing) Ring() *Ring { return r.ring }

// Index is the CSB ring index.
func (r *DriverRing) Index() int { return r.idx }

// Sync is a non-blocking txsync/rxsync over the CSB.
func (r *DriverRing) Sync(flags SyncFlags) error { return errors.New("not implemented") }

// Wait blocks until the ring has work for its user or timeout.
func (r *DriverRing) Wait(timeout time.Duration) (bool, error) { return false, errors.New("not implemented") }

// Stats returns the counters.
func (r *DriverRing) Stats() DriverRingStats { return DriverRingStats{} }
