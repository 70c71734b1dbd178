package vale

import (
	"fmt"
	"sync/atomic"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// Port is a switch port: a netmap port whose HW TX rings forward into the switch and
// whose HW RX rings receive from it. Ring i of a source delivers to RX ring
// i mod (destination RX rings), broadcasts included.
//
// The port's user (an application, a ptnet guest through its host loop, a
// BackendPort pump) drives the rings through netmap: fill TX slots, advance head,
// then TxSync (or Kring.Sync / Kring.SyncCSB from a ptnet host loop); the forwarding
// pass runs inside that sync, in the caller's goroutine. Received frames appear in
// [head, tail) of the RX rings after RxSync; the RX kring's notify function (set with
// netmap.Kring.SetNotify) runs when the switch delivers.
type Port struct {
	sw      *Switch
	idx     int
	name    string
	np      *netmap.Port
	own     bool
	bufSize int
	fwd     []*fwdState // per HW TX ring, used under that ring's kring lock
	mon     []monitor   // guarded by sw.mu; replaced, never modified in place

	c counters
}

// Index is the port's index in the switch (0..MaxPorts-1).
func (p *Port) Index() int { return p.idx }

// Name is the port's name within the switch ("Y" of "valeX:Y").
func (p *Port) Name() string { return p.name }

// Switch is the switch the port belongs (or belonged) to.
func (p *Port) Switch() *Switch { return p.sw }

// Netmap is the underlying netmap port: its Region (memfd, pools info) is what a ptnet
// device maps into a guest, NifpOffset its netmap_if, Krings its rings.
func (p *Port) Netmap() *netmap.Port { return p.np }

// TxSync syncs TX ring i (head/cur from the netmap_ring): frames in [hwcur, head) are
// forwarded now, in this goroutine. A corrupt head/cur reinitialises the ring and
// returns an error wrapping netmap.ErrRingReinit; the switch is unaffected.
func (p *Port) TxSync(i int) error {
	k := p.np.TxRing(i)
	if k == nil {
		return errNoRing(p, "tx", i)
	}
	return k.Sync(netmap.ForceReclaim)
}

// RxSync syncs RX ring i: slots the user released ([hwcur, head)) go back to the
// switch, and tail moves over everything delivered since.
func (p *Port) RxSync(i int) error {
	k := p.np.RxRing(i)
	if k == nil {
		return errNoRing(p, "rx", i)
	}
	return k.Sync(netmap.ForceRead)
}

// Counters are a port's statistics. TX is what the port sent into the switch, RX what
// the switch delivered to it. Drops are counted on the port whose ring saw them: a
// frame dropped for lack of room is an RX drop of the destination.
type Counters struct {
	TxFrames, TxBytes uint64
	RxFrames, RxBytes uint64

	DropShort   uint64 // sent frames shorter than an Ethernet header
	DropSelf    uint64 // the lookup sent the frame back to its source
	DropLookup  uint64 // the lookup returned Drop (or an invalid result)
	DropNoPort  uint64 // the lookup named an index with no port attached
	DropFrags   uint64 // MOREFRAG chain longer than netmap.MaxFrags
	DropNoSpace uint64 // delivered frames that found the RX ring full
	DropTooBig  uint64 // delivered frames with a fragment larger than our buffers

	BadSlots      uint64 // slots with a bad buffer index or length (TX frames dropped, RX slots zeroed)
	RingReinits   uint64 // syncs whose head/cur failed the checks
	MonitorErrors uint64
}

// Drops is the sum of every drop counter.
func (c Counters) Drops() uint64 {
	return c.DropShort + c.DropSelf + c.DropLookup + c.DropNoPort + c.DropFrags + c.DropNoSpace + c.DropTooBig
}

type counters struct {
	txFrames, txBytes, rxFrames, rxBytes           atomic.Uint64
	dropShort, dropSelf, dropLookup, dropNoPort    atomic.Uint64
	dropFrags, dropNoSpace, dropTooBig, rxBadSlots atomic.Uint64
	monitorErrors                                  atomic.Uint64
}

// Counters returns a snapshot (each field read atomically; the set is not a single
// instant). Ring-level counts (bad TX slots, reinits) come from the netmap krings.
func (p *Port) Counters() Counters {
	c := Counters{
		TxFrames: p.c.txFrames.Load(), TxBytes: p.c.txBytes.Load(),
		RxFrames: p.c.rxFrames.Load(), RxBytes: p.c.rxBytes.Load(),
		DropShort: p.c.dropShort.Load(), DropSelf: p.c.dropSelf.Load(),
		DropLookup: p.c.dropLookup.Load(), DropNoPort: p.c.dropNoPort.Load(),
		DropFrags: p.c.dropFrags.Load(), DropNoSpace: p.c.dropNoSpace.Load(),
		DropTooBig: p.c.dropTooBig.Load(), BadSlots: p.c.rxBadSlots.Load(),
		MonitorErrors: p.c.monitorErrors.Load(),
	}
	for _, k := range p.np.Krings() {
		st := k.Stats()
		c.BadSlots += st.BadSlots
		c.RingReinits += st.Reinits
		if k.Dir() == netmap.TX {
			// A switch TX kring drops only chains too long for a batch or left
			// unfinished with the ring full.
			c.DropFrags += st.Dropped
		}
	}
	return c
}

func errNoRing(p *Port, dir string, i int) error {
	return fmt.Errorf("vale: %s:%s: no %s ring %d", p.sw.name, p.name, dir, i)
}
