package netmap

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// pipeModel is the pipe TX sync written the plain way (measure each frame, then swap
// its slots one by one with whole-slot reads and writes): the reference the
// optimised pipeTxSync must match byte for byte.
type pipeModel struct {
	ts, rs            []byte // slot arrays (modified in place)
	tn, rn            uint32
	hwcur, end, rtail uint32 // TX kring
	rxHwcur, rxHwtail uint32 // RX kring (no leases)
	nbufs, bufSize    uint32
	dropped, bad      uint64
}

func (m *pipeModel) slot(b []byte, i uint32) Slot   { return getSlot(b, uint64(i)*SlotSize) }
func (m *pipeModel) put(b []byte, i uint32, s Slot) { putSlot(b, uint64(i)*SlotSize, s) }
func (m *pipeModel) valid(idx uint32) bool          { return idx >= ReservedBufs && idx < m.nbufs }
func nextIn(i, n uint32) uint32                     { return (i + 1) % n }
func (m *pipeModel) run() (hwcur, rxHwtail uint32) {
	space := m.rn - 1 - distSlots(m.rxHwcur, m.rxHwtail, m.rn)
	t, r, end := m.hwcur, m.rxHwtail, m.end
	for t != end {
		n, p, complete := uint32(0), t, false
		for p != end {
			n++
			fl := m.slot(m.ts, p).Flags
			p = nextIn(p, m.tn)
			if fl&NSMoreFrag == 0 {
				complete = true
				break
			}
		}
		if !complete {
			if end == m.rtail || n >= m.rn-1 {
				m.dropped++
				t = p
			}
			break
		}
		if n > space {
			if n > m.rn-1 {
				m.dropped++
				t = p
				continue
			}
			break
		}
		for ; t != p; t = nextIn(t, m.tn) {
			ts, rs := m.slot(m.ts, t), m.slot(m.rs, r)
			if m.valid(ts.BufIdx) && m.valid(rs.BufIdx) && uint32(ts.Len) <= m.bufSize {
				ts.BufIdx, rs.BufIdx = rs.BufIdx, ts.BufIdx
				rs.Len, rs.Ptr = ts.Len, ts.Ptr
				rs.Flags = ts.Flags | NSBufChanged
				ts.Flags = NSBufChanged
				m.put(m.ts, t, ts)
			} else {
				m.bad++
				rs.Len, rs.Flags = 0, ts.Flags&NSMoreFrag
			}
			m.put(m.rs, r, rs)
			r = nextIn(r, m.rn)
		}
		space -= n
	}
	return t, r
}

// checkPipeAgainstModel drives a pipe with random slot contents (bad buffer indices,
// oversized lengths, MOREFRAG chains, open chains at head, a receiver that releases
// some of what it got) and compares every TX sync with the model.
func checkPipeAgainstModel(t *testing.T, seed uint64, slots, rxSlots, steps int) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	m, s, err := NewPipe("p", "1", PortConfig{TxSlots: slots, RxSlots: rxSlots})
	require.NoError(t, err)
	defer func() { m.Close(); s.Close() }()
	tk, rk := m.TxRing(0), s.RxRing(0)
	tx, rx := m.UserRing(tk), s.UserRing(rk)
	reg := m.Region()
	nbufs, bufSize := reg.NumBufs(), reg.BufSize()
	randBuf := func() uint32 {
		switch rng.IntN(10) {
		case 0:
			return uint32(rng.IntN(2)) // reserved
		case 1:
			return nbufs + uint32(rng.IntN(3))
		default:
			return ReservedBufs + uint32(rng.IntN(int(nbufs-ReservedBufs)))
		}
	}
	for step := 0; step < steps; step++ {
		// The sender fills some of the slots it owns.
		h, tail := tx.Head(), tx.Tail()
		own := distSlots(h, tail, uint32(slots))
		k := uint32(0)
		if own > 0 {
			k = uint32(rng.IntN(int(own) + 1))
		}
		for i, p := uint32(0), h; i < k; i, p = i+1, tx.Next(p) {
			sl := Slot{BufIdx: randBuf(), Len: uint16(rng.IntN(int(bufSize) + 2)), Ptr: rng.Uint64()}
			if rng.IntN(4) == 0 {
				sl.Flags = NSMoreFrag
			}
			if rng.IntN(8) == 0 {
				sl.BufIdx = tx.Slot(p).BufIdx // keep a good one now and then
			}
			tx.SetSlot(p, sl)
		}
		head := (h + k) % uint32(slots)
		tx.SetHeadCur(head, head)
		// The receiver scribbles over a released slot now and then (its right).
		if rng.IntN(3) == 0 {
			p := rx.Head()
			for i := rng.IntN(rxSlots); i > 0; i-- {
				p = rx.Next(p)
			}
			if distSlots(rx.Head(), p, uint32(rxSlots)) < distSlots(rx.Head(), rx.Tail(), uint32(rxSlots)) {
				// inside [head, tail): the receiver's own slot
				sl := rx.Slot(p)
				sl.BufIdx = randBuf()
				rx.SetSlot(p, sl)
			}
		}

		st, rst := tk.State(), rk.State()
		model := &pipeModel{
			ts: append([]byte(nil), tk.slots()...), rs: append([]byte(nil), rk.slots()...),
			tn: tk.num, rn: rk.num, hwcur: st.HwCur, end: head, rtail: st.RTail,
			rxHwcur: rst.HwCur, rxHwtail: rst.HwTail, nbufs: nbufs, bufSize: bufSize,
		}
		wantCur, wantTail := model.run()
		d0, b0 := tk.Stats().Dropped, tk.Stats().BadSlots
		require.NoError(t, tk.Sync(0), "step %d", step)
		require.True(t, bytes.Equal(model.ts, tk.slots()), "step %d: TX slots differ from the model", step)
		require.True(t, bytes.Equal(model.rs, rk.slots()), "step %d: RX slots differ from the model", step)
		require.Equal(t, wantCur, tk.State().HwCur, "step %d: TX hwcur", step)
		require.Equal(t, wantTail, rk.State().HwTail, "step %d: RX hwtail", step)
		require.Equal(t, rk.State().HwTail, rk.State().HwLease, "step %d: no lease left", step)
		require.Equal(t, model.dropped, tk.Stats().Dropped-d0, "step %d: dropped", step)
		require.Equal(t, model.bad, tk.Stats().BadSlots-b0, "step %d: bad slots", step)

		// The receiver takes what arrived and releases some of it.
		require.NoError(t, rk.Sync(0))
		got := distSlots(rx.Head(), rx.Tail(), uint32(rxSlots))
		if got > 0 {
			rel := (rx.Head() + uint32(rng.IntN(int(got)+1))) % uint32(rxSlots)
			rx.SetHeadCur(rel, rel)
			require.NoError(t, rk.Sync(0))
		}
	}
}

func TestPipeMatchesModel(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		for _, sz := range [][2]int{{8, 8}, {64, 64}, {16, 5}, {5, 16}} {
			checkPipeAgainstModel(t, seed, sz[0], sz[1], 300)
		}
	}
}

func FuzzPipeMatchesModel(f *testing.F) {
	f.Add(uint64(1), uint8(8), uint8(8))
	f.Add(uint64(7), uint8(33), uint8(4))
	f.Fuzz(func(t *testing.T, seed uint64, txSlots, rxSlots uint8) {
		checkPipeAgainstModel(t, seed, int(txSlots)%120+MinSlots, int(rxSlots)%120+MinSlots, 50)
	})
}

// The model's helpers must agree with the ring's own arithmetic.
func TestPipeModelSlotCodec(t *testing.T) {
	b := make([]byte, 2*SlotSize)
	m := &pipeModel{}
	s := Slot{BufIdx: 0x01020304, Len: 0x0506, Flags: 0x0708, Ptr: 0x1112131415161718}
	m.put(b, 1, s)
	require.Equal(t, s, m.slot(b, 1))
	require.Equal(t, uint32(0x01020304), binary.LittleEndian.Uint32(b[SlotSize:]))
}
