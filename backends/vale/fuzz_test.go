package vale

import (
	"encoding/binary"
	"testing"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// FuzzForward lets the fuzzer play a hostile port user (a guest through ptnet): it
// writes TX slots (buffer index, length, flags), frame headers and head/cur, and
// corrupts RX slots. The switch must not panic, must keep its rings consistent and
// must deliver only whole, in-bounds frames.
func FuzzForward(f *testing.F) {
	seed := make([]byte, 0, 64)
	for i := 0; i < 8; i++ {
		seed = append(seed, byte(i), 0, 60, 0, 0, 0, 0xff, 1)
	}
	f.Add(seed, uint16(8), uint16(8))
	f.Add([]byte{0, 0, 0x20, 0x00, 0x20, 0, 0, 0, 1, 0, 10, 0, 0, 0, 0, 0}, uint16(2), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, head, cur uint16) {
		s, err := New("vale0")
		if err != nil {
			t.Fatal(err)
		}
		const slots = 32
		var ps []*Port
		for _, n := range []string{"a", "b", "c"} {
			p, err := s.NewPort(n, netmap.PortConfig{TxSlots: slots, RxSlots: slots, BufSize: 256})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Detach()
			ps = append(ps, p)
		}
		a, b := newUser(t, ps[0]), newUser(t, ps[1])
		// b corrupts one of its free RX slots.
		if len(data) > 0 {
			pos := uint32(data[0]) % slots
			sl := b.rx.Slot(pos)
			sl.BufIdx ^= uint32(data[0]) << 10
			b.rx.SetSlot(pos, sl)
		}
		// a writes 8 bytes per slot: buf_idx tweak, len, flags, dst MAC selector.
		r := a.tx
		for i := 0; i+8 <= len(data) && i/8 < slots; i += 8 {
			pos := uint32(i / 8)
			sl := r.Slot(pos)
			if data[i]&0x80 != 0 {
				sl.BufIdx = binary.LittleEndian.Uint32(data[i : i+4])
			}
			sl.Len = binary.LittleEndian.Uint16(data[i+2:])
			sl.Flags = binary.LittleEndian.Uint16(data[i+4:])
			if buf := r.Buf(sl.BufIdx); len(buf) >= 14 {
				dst := bcastMAC
				switch data[i+6] % 4 {
				case 1:
					dst = mac(0xb)
				case 2:
					dst = mac(0xa)
				case 3:
					dst = mac(data[i+7])
				}
				copy(buf, eth(dst, mac(data[i+7]%3+0xa), 14, 0))
			}
			r.SetSlot(pos, sl)
		}
		r.SetHeadCur(uint32(head), uint32(cur))
		_ = ps[0].TxSync(0)
		_ = ps[0].TxSync(0)
		// b reads whatever arrived: every slot in [head, tail) must be in bounds.
		if err := ps[1].RxSync(0); err != nil {
			t.Fatalf("rx sync of an untouched header: %v", err)
		}
		h, tail := b.rx.Head(), b.rx.Tail()
		if h >= slots || tail >= slots {
			t.Fatalf("rx head %d tail %d out of range", h, tail)
		}
		delivered := uint64(0)
		for ; h != tail; h = b.rx.Next(h) {
			sl := b.rx.Slot(h)
			if int(sl.Len) > 256 {
				t.Fatalf("slot %d len %d above the buffer size", h, sl.Len)
			}
			if sl.Flags&netmap.NSMoreFrag == 0 {
				delivered++
			}
		}
		c := ps[1].Counters()
		if c.RxFrames != delivered {
			t.Fatalf("counted %d frames, ring holds %d", c.RxFrames, delivered)
		}
		// The switch still forwards afterwards.
		a.tx.SetHeadCur(a.tx.Head(), a.tx.Head())
		ps[2].TxSync(0)
		u := newUser(t, ps[2])
		u.send(eth(bcastMAC, mac(0xc), 60, 1))
		if got := a.recv(); len(got) == 0 || tags(got[len(got)-1:])[0] != 1 {
			t.Fatalf("switch stopped forwarding to a: %d frames", len(got))
		}
	})
}
