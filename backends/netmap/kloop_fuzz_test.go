package netmap

import (
	"encoding/binary"
	"testing"
)

// FuzzKloop feeds random CSB values, slot contents and peer activity into the host
// loop's per-ring runs (TX and RX of a pipe end). Whatever the app writes, a run
// must return (bounded), never panic, and leave published and kernel state inside
// the ring.
func FuzzKloop(f *testing.F) {
	f.Add([]byte{0, 3, 0, 3, 0, 2, 1})
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 2, 0})
	f.Add([]byte{3, 5, 2, 1, 0x20, 0, 60, 0, 2, 0, 4, 3, 3, 1})
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff, 2, 1, 0, 7, 0, 7, 3, 1})
	f.Add([]byte{4, 6, 6, 3, 1, 0, 2, 0, 2, 3, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		rg := newStepRig(t, 8)
		num := rg.num
		nbufs := rg.m.Region().NumBufs()
		next := func(n int) []byte {
			if len(data) < n {
				b := make([]byte, n)
				copy(b, data)
				data = nil
				return b
			}
			b := data[:n]
			data = data[n:]
			return b
		}
		// An index: mostly inside or just outside the ring, sometimes anything.
		idx := func() uint32 {
			b := next(1)[0]
			if b&0x80 != 0 {
				return binary.LittleEndian.Uint32(next(4))
			}
			return uint32(b) % (2 * num)
		}
		scribbled := false
		for ops := 0; len(data) > 0 && ops < 64; ops++ {
			op := next(1)[0]
			ring := int(op>>4) & 1
			switch op % 8 {
			case 0: // the app writes head/cur
				rg.csb.SetHeadCur(ring, idx(), idx())
			case 1: // the app writes a TX slot: buf_idx near the pool ends, len, flags
				b := next(5)
				bi := uint32(b[0])
				switch b[1] % 4 {
				case 1:
					bi = nbufs - 1 + bi%4
				case 2:
					bi = ^uint32(0) - bi
				case 3:
					bi = rg.utx.Slot(uint32(b[2]) % num).BufIdx
				}
				rg.utx.SetSlot(uint32(b[2])%num, Slot{BufIdx: bi, Len: binary.LittleEndian.Uint16(b[3:]), Flags: uint16(b[4]) & (NSMoreFrag | NSBufChanged)})
			case 2, 3: // a host-loop run
				r := rg.l.rings[ring]
				rg.l.runRing(r, op&0x40 == 0)
				// The loop rewrites ktoa only when its values change: after the
				// app scribbled there it may keep what the app wrote.
				if r.pubCur != ^uint32(0) && !scribbled {
					if rg.csb.HwCur(r.i) >= num || rg.csb.HwTail(r.i) >= num {
						t.Fatalf("ring %d published hwcur %d hwtail %d", ring, rg.csb.HwCur(r.i), rg.csb.HwTail(r.i))
					}
				}
			case 4: // the peer receives (possibly with a bad head) and releases
				k := rg.s.RxRing(0)
				_ = k.Sync(0)
				h := idx()
				rg.srx.SetHeadCur(h, h)
				_ = k.Sync(0)
			case 5: // the peer sends n frames into our RX ring
				n := int(next(1)[0]) % int(num)
				h := rg.stx.Head() % num
				for i := 0; i < n; i++ {
					sl := rg.stx.Slot(h)
					sl.Len, sl.Flags = 60, 0
					rg.stx.SetSlot(h, sl)
					h = rg.stx.Next(h)
				}
				rg.stx.SetHeadCur(h, h)
				_ = rg.s.TxRing(0).Sync(0)
			case 6: // flags the loop reads
				b := next(2)
				rg.csb.SetSyncFlags(ring, SyncFlags(b[0]))
				rg.csb.SetApplNeedKick(ring, uint32(b[1]&1))
			case 7: // the app scribbles on ktoa (it may: it is its own memory)
				rg.csb.SetHwCurTail(ring, idx(), idx())
				scribbled = true
				rg.csb.SetKernNeedKick(ring, uint32(next(1)[0]))
			}
			for _, k := range []*Kring{rg.m.TxRing(0), rg.m.RxRing(0)} {
				st := k.State()
				if st.HwCur >= num || st.HwTail >= num || st.RHead >= num || st.RCur >= num || st.RTail >= num {
					t.Fatalf("%s: kernel state outside the ring: %+v", k.Name(), st)
				}
			}
		}
	})
}
