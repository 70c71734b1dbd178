package netmap

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// smallRegion is a region just big enough for nports ring pairs of slots each, so a
// fuzz iteration does not map netmap's 8 MB private minimum. The ports hold it.
func smallRegion(t *testing.T, nrings, slots int) *Region {
	r, err := NewRegion(RegionConfig{IfSize: 256, IfNum: uint32(nrings), RingSize: uint32(RingHeaderSize + SlotSize*slots),
		RingNum: uint32(2 * nrings), BufSize: 2048, BufNum: uint32(2*nrings*slots + 8)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// byteSrc hands out fuzz bytes; zeros when exhausted.
type byteSrc struct{ b []byte }

func (s *byteSrc) u8() uint8 {
	if len(s.b) == 0 {
		return 0
	}
	v := s.b[0]
	s.b = s.b[1:]
	return v
}

func (s *byteSrc) u16() uint16 { return uint16(s.u8()) | uint16(s.u8())<<8 }
func (s *byteSrc) u32() uint32 { return uint32(s.u16()) | uint32(s.u16())<<16 }

// idx returns a ring index that is usually in range and sometimes wildly out of it.
func (s *byteSrc) idx(n uint32) uint32 {
	v := s.u8()
	switch v >> 6 {
	case 3:
		return s.u32()
	default:
		return uint32(v) % (n + 2)
	}
}

// checkKring asserts the kernel-side invariants that must hold whatever the user wrote.
func checkKring(t *testing.T, k *Kring) {
	t.Helper()
	st := k.State()
	n := k.NumSlots()
	for _, v := range []uint32{st.HwCur, st.HwTail, st.HwLease, st.RHead, st.RCur, st.RTail} {
		if v >= n {
			t.Fatalf("%s: index out of range: %+v (n=%d)", k.Name(), st, n)
		}
	}
	if k.Dir() == TX {
		if st.HwTail != k.prev(st.HwCur) {
			t.Fatalf("%s: hwtail %d not behind hwcur %d", k.Name(), st.HwTail, st.HwCur)
		}
		if !k.within(st.HwCur, st.RHead, st.RTail) {
			t.Fatalf("%s: rhead outside [hwcur, rtail]: %+v", k.Name(), st)
		}
	} else if !k.within(st.HwCur, st.HwTail, st.HwLease) {
		t.Fatalf("%s: hwtail outside [hwcur, hwlease]: %+v", k.Name(), st)
	}
	if k.Dir() == RX && k.dist(st.HwCur, st.HwLease) > n-1 {
		t.Fatalf("%s: leased past hwcur: %+v", k.Name(), st)
	}
}

// FuzzKringSync plays a hostile ring user: random head/cur/tail and slot contents,
// interleaved with txsync/rxsync, CSB syncs and RX leases.
func FuzzKringSync(f *testing.F) {
	f.Add([]byte{5, 0, 3, 3, 2, 0, 9, 9, 2, 4, 3, 1, 3})
	f.Add([]byte{0, 1, 0, 200, 7, 7, 7, 7, 2, 3, 6, 255, 255, 255, 255, 2})
	f.Add([]byte{30, 4, 10, 5, 3, 4, 2, 1, 3, 5, 1, 1})
	f.Fuzz(fuzzKringSync)
}

func fuzzKringSync(t *testing.T, data []byte) {
	{
		src := &byteSrc{b: data}
		slots := 2 + int(src.u8()%30)
		p, err := NewPort(PortConfig{Name: "fz", TxSlots: slots, RxSlots: slots, ExtraBufs: 1, Region: smallRegion(t, 2, slots)})
		if err != nil {
			t.Fatal(err)
		}
		var lease Lease
		txk, rxk := p.TxRing(0), p.RxRing(0)
		// Close waits for outstanding leases: end ours first, also when a check fails.
		defer func() {
			rxk.RxComplete(lease, 0)
			p.Close()
		}()
		var syncErr string // a failure seen inside the sync function (lock held)
		tx, rx := p.UserRing(txk), p.UserRing(rxk)
		frags := make([]Frag, 4)
		txk.SetSync(func(k *Kring, _ SyncFlags) error {
			pos := k.HwCur()
			for i := 0; ; i++ {
				if i > slots+1 {
					syncErr = "TxScan does not make progress"
					break
				}
				nf, next := k.TxScan(pos, frags)
				if next == pos {
					break
				}
				for _, fr := range frags[:nf] {
					if !k.Region().ValidBuf(fr.BufIdx) || len(fr.Data) != int(fr.Len) || uint32(fr.Len) > k.Region().BufSize() {
						syncErr = fmt.Sprintf("bad frag handed out: %+v", fr)
					}
				}
				if nf > 0 && frags[nf-1].Flags&NSMoreFrag != 0 {
					syncErr = "batch ends inside a frame"
				}
				pos = next
			}
			k.TxDone(pos)
			return nil
		})
		for len(src.b) > 0 && syncErr == "" {
			ring, k := tx, txk
			op := src.u8()
			if op&1 != 0 {
				ring, k = rx, rxk
			}
			n := k.NumSlots()
			switch (op >> 1) % 7 {
			case 0: // user writes head/cur/tail
				ring.SetHeadCur(src.idx(n), src.idx(n))
				if src.u8()&1 != 0 {
					store32(ring.mem, ring.off+RingTailOff, src.idx(n))
				}
			case 1: // user writes a slot
				i := src.u32()
				ring.SetSlot(i, Slot{BufIdx: src.u32() % (p.Region().NumBufs() + 4), Len: src.u16(), Flags: src.u16()})
			case 2: // well-behaved advance
				ring.Advance(uint32(src.u8()) % (ring.Space() + 1))
			case 3:
				err := k.Sync(SyncFlags(src.u8()))
				if err != nil && !errors.Is(err, ErrRingReinit) {
					t.Fatal(err)
				}
				if ring.Tail() != k.State().HwTail {
					t.Fatalf("tail %d != hwtail %d after sync", ring.Tail(), k.State().HwTail)
				}
				if err != nil && (ring.Head() != k.State().HwCur || ring.Cur() != ring.Head()) {
					t.Fatalf("reinit left head %d cur %d, hwcur %d", ring.Head(), ring.Cur(), k.State().HwCur)
				}
			case 4:
				_, _, err := k.SyncCSB(src.idx(n), src.idx(n), 0)
				if err != nil && !errors.Is(err, ErrRingReinit) {
					t.Fatal(err)
				}
			case 5: // switch side: lease RX slots and fill them
				if lease.N == 0 {
					lease = rxk.RxReserve(uint32(src.u8() % 8))
					for i := uint32(0); i < lease.N; i++ {
						rxk.RxFill(rxk.add(lease.Start, i), make([]byte, src.u16()%3000), uint16(src.u8()))
					}
				} else {
					rxk.RxComplete(lease, uint32(src.u8()%10))
					lease = Lease{}
				}
			case 6: // user-side helpers on whatever is there
				_ = ring.Space()
				_ = ring.Empty()
				_ = ring.TxPending()
				_ = ring.SlotBuf(src.u32())
				_ = ring.Buf(src.u32())
			}
			checkKring(t, txk)
			checkKring(t, rxk)
		}
		if syncErr != "" {
			t.Fatal(syncErr)
		}
	}
}

// FuzzPipe drives a pipe pair with well-behaved users (buffers must be conserved) and,
// when the input asks, hostile slot writes (then only safety is checked).
func FuzzPipe(f *testing.F) {
	f.Add([]byte{6, 0, 3, 1, 2, 3, 4, 5, 6, 7})
	f.Add([]byte{1, 8, 0, 9, 1, 2, 2, 0, 0, 7, 7})
	f.Fuzz(func(t *testing.T, data []byte) {
		src := &byteSrc{b: data}
		slots := 2 + int(src.u8()%14)
		m, s, err := NewPipe("fz", "0", PortConfig{TxSlots: slots, Region: smallRegion(t, 4, slots)})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		defer m.Close()
		ports := [2]*Port{m, s}
		// Fingerprint of the multiset of valid buffer indices in all slots.
		type fp struct{ n, sum, sq uint64 }
		bufs := func() fp {
			var f fp
			for _, p := range ports {
				for _, k := range p.Krings() {
					for i := uint32(0); i < k.NumSlots(); i++ {
						if b := uint64(k.SlotAt(i).BufIdx); m.Region().ValidBuf(uint32(b)) {
							f.n++
							f.sum += b
							f.sq += b * b
						}
					}
				}
			}
			return f
		}
		before := bufs()
		hostile := false
		for len(src.b) > 0 {
			op := src.u8()
			p := ports[op&1]
			txk, rxk := p.TxRing(0), p.RxRing(0)
			tx, rx := p.UserRing(txk), p.UserRing(rxk)
			switch (op >> 1) % 5 {
			case 0: // send a few frames, some multi-slot
				h := tx.Head()
				space := tx.Space()
				nfr := src.u8() % 4
				for i := uint8(0); i < nfr && space > 0; i++ {
					nfrag := uint32(1 + src.u8()%3)
					nfrag = min(nfrag, space)
					for j := uint32(0); j < nfrag; j++ {
						sl := tx.Slot(h)
						sl.Len = src.u16() % 2049
						sl.Flags = 0
						if j+1 < nfrag {
							sl.Flags = NSMoreFrag
						}
						tx.SetSlot(h, sl)
						h = tx.Next(h)
					}
					space -= nfrag
				}
				tx.SetHeadCur(h, h)
			case 1:
				_ = txk.Sync(0)
			case 2:
				_ = rxk.Sync(0)
				rx.Advance(uint32(src.u8()) % (rx.Space() + 1))
			case 3: // hostile
				hostile = true
				r := []*Ring{tx, rx}[src.u8()&1]
				r.SetSlot(src.u32(), Slot{BufIdx: src.u32(), Len: src.u16(), Flags: src.u16()})
				if src.u8()&1 != 0 {
					r.SetHeadCur(src.idx(r.NumSlots()), src.idx(r.NumSlots()))
				}
			case 4:
				_ = rxk.Sync(0)
			}
			for _, p := range ports {
				for _, k := range p.Krings() {
					checkKring(t, k)
				}
			}
			if !hostile {
				if after := bufs(); after != before {
					t.Fatalf("buffers not conserved")
				}
			}
		}
	})
}

// FuzzOpenIf treats region bytes as hostile (a guest-side driver reading memory a
// host, or another process, controls): opening the netmap_if and rings and using the
// ring helpers must not panic.
func FuzzOpenIf(f *testing.F) {
	p, err := NewPort(PortConfig{Name: "seed", TxSlots: 4, RxSlots: 4})
	if err != nil {
		f.Fatal(err)
	}
	seed := append([]byte(nil), p.Region().Bytes()[:p.Region().PoolsInfo().BufPoolOffset+4096]...)
	p.Close()
	f.Add(seed, uint16(0))
	f.Add([]byte{1, 2, 3}, uint16(1))
	f.Fuzz(func(t *testing.T, mem []byte, nifp uint16) {
		if len(mem)%8 != 0 {
			mem = mem[:len(mem)&^7]
		}
		// store32 needs 4-byte alignment of the backing array: copy into a fresh slice.
		m := make([]byte, len(mem))
		copy(m, mem)
		fi, err := OpenIf(m, uint64(nifp))
		if err != nil {
			return
		}
		_ = fi.Name()
		fi.SetBufsHead(fi.BufsHead() + 1)
		for i := 0; i < 3; i++ {
			for _, open := range []func(int) (*Ring, error){fi.TxRing, fi.RxRing} {
				r, err := open(i)
				if err != nil {
					continue
				}
				_ = r.Space()
				r.Advance(3)
				_ = r.SlotBuf(r.Head())
				_ = r.Buf(0xffffffff)
				r.SetSlot(7, Slot{BufIdx: 1})
			}
		}
	})
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"vale0:1", "vale:x", "valeA:b{3", "p}1@conf:slots=64", "netmap:eth0@conf:rings=2,host-rings=1@7",
		"x@share=vale0:1", "vale0:", "a{", "@", "vale0:1@conf:slots=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseName(s)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if n.Full != s || len(s) > MaxNameLen {
			t.Fatalf("parsed %+v from %q", n, s)
		}
		if n.Pipe != (n.Kind == KindPipeMaster || n.Kind == KindPipeSlave) || n.Pipe && n.PipeID == "" {
			t.Fatalf("pipe fields inconsistent: %+v", n)
		}
		c := n.Conf
		if c.TxRings > MaxRings || c.TxSlots > MaxSlots || c.HostRings > 1 || (c.TxSlots != 0 && c.TxSlots < MinSlots) {
			t.Fatalf("conf out of range: %+v", c)
		}
		var cfg PortConfig
		c.Apply(&cfg)
		if _, err := cfg.normalize(); err != nil {
			t.Fatalf("accepted conf gives an invalid port: %v", err)
		}
	})
}
