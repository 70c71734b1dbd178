package netmap

import (
	"errors"
	"fmt"
)

// CSB entry layout (SPECS 3.4): one 64-byte entry per ring, TX rings first, then RX
// rings, in each of two arrays: atok (application/guest writes, host reads) and ktoa
// (host writes, application/guest reads).
const (
	CSBEntrySize = 64

	// nm_csb_atok
	CSBHeadOff         = 0  // u32 head
	CSBCurOff          = 4  // u32 cur
	CSBApplNeedKickOff = 8  // u32 appl_need_kick: the app wants interrupts
	CSBSyncFlagsOff    = 12 // u32 sync_flags (NAF_*)

	// nm_csb_ktoa
	CSBHwCurOff        = 0 // u32 hwcur
	CSBHwTailOff       = 4 // u32 hwtail
	CSBKernNeedKickOff = 8 // u32 kern_need_kick: the host wants kicks
	// CSBKickGenOff is a ptvmm extension in the ktoa padding (SPECS 3.4 pad[13]),
	// which netmap's guests never read: a host loop writes a new non-zero value
	// here before each kern_need_kick = 1, so a driver can tell "the host has not
	// asked again since my kick" from "it ran and asked again", and skip the
	// repeated kicks netmap's guests send while the host wakes up. 0 = the host
	// does not provide it (a driver then kicks as netmap's guest does).
	CSBKickGenOff = 12

	// MaxCSBRings bounds the rings of one CSB: the Linux ptnet driver refuses more
	// than 64, and 64 entries fill one page per array.
	MaxCSBRings = 64
)

// CSB is a ptnet CSB: the atok array (app/guest writes) and the ktoa array (host
// writes), each at least CSBEntrySize*nrings bytes, shared with a peer that is not
// trusted. Every field access is a 32-bit atomic (sequentially consistent in Go: a
// store is a full barrier, which is what netmap's mb() between a need_kick store and
// the re-read needs). Values read are whatever the peer wrote: callers check them.
//
// Concurrency: any method from any goroutine. By protocol the app side writes only
// atok (SetHeadCur, SetApplNeedKick, SetSyncFlags) and the host side only ktoa
// (SetHwCurTail, SetKernNeedKick); InitCSB writes both while the loop is stopped.
type CSB struct {
	atok, ktoa []byte
	n          int
}

// NewCSB makes a CSB over atok and ktoa for nrings rings. Both slices must hold
// nrings entries and start 4-byte aligned (netmap asks for 64: a ptnet guest gives
// page-aligned arrays). The slices stay owned by the caller and must stay mapped
// while the CSB is in use.
func NewCSB(atok, ktoa []byte, nrings int) (*CSB, error) {
	if nrings < 1 || nrings > MaxCSBRings {
		return nil, fmt.Errorf("netmap: csb: %d rings, want 1..%d", nrings, MaxCSBRings)
	}
	need := nrings * CSBEntrySize
	if len(atok) < need || len(ktoa) < need {
		return nil, fmt.Errorf("netmap: csb: %d rings need %d bytes per array, have atok %d ktoa %d", nrings, need, len(atok), len(ktoa))
	}
	if !aligned4(atok) || !aligned4(ktoa) {
		return nil, errors.New("netmap: csb: arrays must be 4-byte aligned")
	}
	return &CSB{atok: atok[:need:need], ktoa: ktoa[:need:need], n: nrings}, nil
}

// NumRings is the number of ring entries.
func (c *CSB) NumRings() int { return c.n }

func (c *CSB) off(i int, field uint64) uint64 {
	return uint64(i)*CSBEntrySize + field // i checked by the slice bound in load32/store32
}

// atok side (the host reads, the app writes).

// Head loads atok[i].head.
func (c *CSB) Head(i int) uint32 { return load32(c.atok, c.off(i, CSBHeadOff)) }

// Cur loads atok[i].cur.
func (c *CSB) Cur(i int) uint32 { return load32(c.atok, c.off(i, CSBCurOff)) }

// ApplNeedKick loads atok[i].appl_need_kick (non-zero: the app wants interrupts).
func (c *CSB) ApplNeedKick(i int) uint32 { return load32(c.atok, c.off(i, CSBApplNeedKickOff)) }

// SyncFlags loads atok[i].sync_flags.
func (c *CSB) SyncFlags(i int) SyncFlags { return SyncFlags(load32(c.atok, c.off(i, CSBSyncFlagsOff))) }

// ReadAtok is the host's read of an atok entry in the order of SPECS 3.6: head, then
// cur, then sync_flags (each load is ordered after the previous one).
func (c *CSB) ReadAtok(i int) (head, cur uint32, flags SyncFlags) {
	head = c.Head(i)
	cur = c.Cur(i)
	flags = c.SyncFlags(i)
	return
}

// SetHeadCur is the app's write of (cur, head): cur first, then head, so a host that
// sees the new head also sees the cur that goes with it (SPECS 3.6). Slot writes made
// before the call are visible to a host that loads head afterwards.
func (c *CSB) SetHeadCur(i int, head, cur uint32) {
	store32(c.atok, c.off(i, CSBCurOff), cur)
	store32(c.atok, c.off(i, CSBHeadOff), head)
}

// SetHead and SetCur store one atok field (tests, attack cases).
func (c *CSB) SetHead(i int, v uint32) { store32(c.atok, c.off(i, CSBHeadOff), v) }
func (c *CSB) SetCur(i int, v uint32)  { store32(c.atok, c.off(i, CSBCurOff), v) }

// SetApplNeedKick stores atok[i].appl_need_kick (a full barrier).
func (c *CSB) SetApplNeedKick(i int, v uint32) { store32(c.atok, c.off(i, CSBApplNeedKickOff), v) }

// SetSyncFlags stores atok[i].sync_flags.
func (c *CSB) SetSyncFlags(i int, f SyncFlags) {
	store32(c.atok, c.off(i, CSBSyncFlagsOff), uint32(f))
}

// ktoa side (the host writes, the app reads).

// HwCur loads ktoa[i].hwcur.
func (c *CSB) HwCur(i int) uint32 { return load32(c.ktoa, c.off(i, CSBHwCurOff)) }

// HwTail loads ktoa[i].hwtail.
func (c *CSB) HwTail(i int) uint32 { return load32(c.ktoa, c.off(i, CSBHwTailOff)) }

// KernNeedKick loads ktoa[i].kern_need_kick (non-zero: the host wants kicks).
func (c *CSB) KernNeedKick(i int) uint32 { return load32(c.ktoa, c.off(i, CSBKernNeedKickOff)) }

// ReadKtoa is the app's read of a ktoa entry in the order of SPECS 3.6: hwtail, then
// hwcur. Slots the host published before hwtail are visible after the call.
func (c *CSB) ReadKtoa(i int) (hwcur, hwtail uint32) {
	hwtail = c.HwTail(i)
	hwcur = c.HwCur(i)
	return
}

// SetHwCurTail is the host's write: hwcur, then hwtail (SPECS 3.6), after the slot
// and buffer writes of the sync.
func (c *CSB) SetHwCurTail(i int, hwcur, hwtail uint32) {
	store32(c.ktoa, c.off(i, CSBHwCurOff), hwcur)
	store32(c.ktoa, c.off(i, CSBHwTailOff), hwtail)
}

// SetKernNeedKick stores ktoa[i].kern_need_kick (a full barrier).
func (c *CSB) SetKernNeedKick(i int, v uint32) {
	store32(c.ktoa, c.off(i, CSBKernNeedKickOff), v)
}

// KickGen loads ktoa[i]'s kick generation (CSBKickGenOff; 0: not provided).
func (c *CSB) KickGen(i int) uint32 { return load32(c.ktoa, c.off(i, CSBKickGenOff)) }

// SetKickGen stores ktoa[i]'s kick generation: the host, before each
// SetKernNeedKick(i, 1), with a value it never used on that CSB before.
func (c *CSB) SetKickGen(i int, v uint32) { store32(c.ktoa, c.off(i, CSBKickGenOff), v) }

// InitCSB writes the CSB from the krings' state, as ptnet's PTCTL CREATE must (SPECS
// 3.8): per ring atok head = cur = hwcur, ktoa hwcur and hwtail, kern_need_kick = 1
// (with kick generation 0: a driver kicks until the host loop writes one);
// appl_need_kick and sync_flags stay as the guest wrote them. TX slots still pending
// in the backend from a previous session are taken back (Kring.TxRetract), so the
// state published is a consistent one. CSB rings are the port's
// HW TX rings 0..ntx-1, then its HW RX rings. Call with the port's host loop stopped.
func InitCSB(p *Port, c *CSB) error {
	ks, err := csbKrings(p, c)
	if err != nil {
		return err
	}
	for i, k := range ks {
		if k.Dir() == TX {
			// Slots a previous session gave but the backend never took (a full
			// pipe peer) are taken back: the new session starts from hwcur and
			// must not meet a kring whose rhead is ahead of the head we publish.
			k.TxRetract()
		}
		st := k.State()
		// Reading the ring later must see a consistent pair: publish ktoa first,
		// then atok (the guest loads both after PTCTL returns).
		c.SetHwCurTail(i, st.HwCur, st.HwTail)
		c.SetKickGen(i, 0)
		c.SetKernNeedKick(i, 1)
		c.SetHeadCur(i, st.HwCur, st.HwCur)
	}
	return nil
}

// csbKrings lists the port's HW TX then HW RX krings, checking they match the CSB.
func csbKrings(p *Port, c *CSB) ([]*Kring, error) {
	if p == nil || c == nil {
		return nil, errors.New("netmap: csb: nil port or csb")
	}
	ntx, nrx := p.NumTxRings(), p.NumRxRings()
	if ntx+nrx != c.NumRings() {
		return nil, fmt.Errorf("netmap: csb: port %s has %d+%d rings, csb %d", p.Name(), ntx, nrx, c.NumRings())
	}
	ks := make([]*Kring, 0, ntx+nrx)
	for i := 0; i < ntx; i++ {
		ks = append(ks, p.TxRing(i))
	}
	for i := 0; i < nrx; i++ {
		ks = append(ks, p.RxRing(i))
	}
	for _, k := range ks {
		if k == nil {
			return nil, fmt.Errorf("netmap: csb: port %s is closed", p.Name())
		}
	}
	return ks, nil
}
