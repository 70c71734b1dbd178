package netmap

import (
	"fmt"
	"testing"
)

// BenchmarkPipe moves 60-byte frames master -> slave through the rings: the sender
// writes payload and len into a batch of slots and txsyncs, the receiver rxsyncs and
// reads every frame's first and last byte. One op = one frame.
func BenchmarkPipe(b *testing.B) {
	for _, batch := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			// 4096 slots: the receiver releases a batch only at its next rxsync, so
			// two batches of 1024 must fit.
			m, s, err := NewPipe("bench", "0", PortConfig{TxSlots: 4096})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			defer m.Close()
			txk, rxk := m.TxRing(0), s.RxRing(0)
			tx, rx := m.UserRing(txk), s.UserRing(rxk)
			payload := make([]byte, 60)
			for i := range payload {
				payload[i] = byte(i)
			}
			var sink byte
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(batch, b.N-done)
				h := tx.Head()
				for i := 0; i < n; i++ {
					sl := tx.Slot(h)
					copy(tx.Buf(sl.BufIdx), payload)
					sl.Len, sl.Flags = 60, 0
					tx.SetSlot(h, sl)
					h = tx.Next(h)
				}
				tx.SetHeadCur(h, h)
				if err := txk.Sync(0); err != nil {
					b.Fatal(err)
				}
				if err := rxk.Sync(0); err != nil {
					b.Fatal(err)
				}
				rh, rt := rx.Head(), rx.Tail()
				got := 0
				for ; rh != rt; rh = rx.Next(rh) {
					sl := rx.Slot(rh)
					buf := rx.Buf(sl.BufIdx)
					sink ^= buf[0] ^ buf[sl.Len-1]
					got++
				}
				if got != n {
					b.Fatalf("received %d of %d", got, n)
				}
				rx.SetHeadCur(rh, rh)
				done += n
			}
			b.StopTimer()
			_ = sink
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
		})
	}
}

// BenchmarkEndpointPipe is the same traffic through the backends.Port adapter, which
// copies each frame in and out of the ring.
func BenchmarkEndpointPipe(b *testing.B) {
	for _, batch := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			m, s, err := NewPipe("bench", "1", PortConfig{TxSlots: 4096})
			if err != nil {
				b.Fatal(err)
			}
			a, _ := NewEndpoint(m, true)
			defer a.Close()
			c, _ := NewEndpoint(s, true)
			defer c.Close()
			frames := make([][]byte, batch)
			bufs := make([][]byte, batch)
			lens := make([]int, batch)
			for i := range frames {
				frames[i] = make([]byte, 60)
				bufs[i] = make([]byte, 2048)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(batch, b.N-done)
				if k, err := a.Send(frames[:n]); k != n || err != nil {
					b.Fatalf("sent %d of %d: %v", k, n, err)
				}
				if k, err := c.Recv(bufs[:n], lens[:n]); k != n || err != nil {
					b.Fatalf("received %d of %d: %v", k, n, err)
				}
				done += n
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
		})
	}
}

// BenchmarkTxScan is the switch's read side: a TX sync that scans 60-byte frames with
// TxScan in batches of 64 frags and completes them. One op = one frame.
func BenchmarkTxScan(b *testing.B) {
	p, err := NewPort(PortConfig{Name: "scan", TxSlots: 1024})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	k := p.TxRing(0)
	r := p.UserRing(k)
	for i := uint32(0); i < r.NumSlots(); i++ {
		s := r.Slot(i)
		s.Len = 60
		r.SetSlot(i, s)
	}
	frags := make([]Frag, MaxFrags)
	var sum int
	k.SetSync(func(k *Kring, _ SyncFlags) error {
		pos := k.HwCur()
		for {
			n, next := k.TxScan(pos, frags)
			if next == pos {
				break
			}
			for _, f := range frags[:n] {
				sum += len(f.Data)
			}
			pos = next
		}
		k.TxDone(pos)
		return nil
	})
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(1023, b.N-done)
		r.Advance(uint32(n))
		if err := k.Sync(0); err != nil {
			b.Fatal(err)
		}
		done += n
	}
	b.StopTimer()
	if sum != 60*b.N {
		b.Fatalf("scanned %d bytes, want %d", sum, 60*b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
}
