package uart

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

type irqRec struct {
	mu     sync.Mutex
	levels []bool
}

func (r *irqRec) set(l bool) {
	r.mu.Lock()
	r.levels = append(r.levels, l)
	r.mu.Unlock()
}

func (r *irqRec) last() (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.levels) == 0 {
		return false, 0
	}
	return r.levels[len(r.levels)-1], len(r.levels)
}

func rd(u *UART, off uint64) byte {
	b := []byte{0xAA}
	u.Read(off, b)
	return b[0]
}

func wr(u *UART, off uint64, v byte) { u.Write(off, []byte{v}) }

func TestTransmit(t *testing.T) {
	var out bytes.Buffer
	u := New(&out, nil)
	for _, c := range []byte("hi\n") {
		if rd(u, RegLSR)&LSRTHRE == 0 {
			t.Fatal("THR not empty before write")
		}
		wr(u, RegData, c)
	}
	if out.String() != "hi\n" {
		t.Errorf("console got %q", out.String())
	}
}

func TestDLABAndDivisor(t *testing.T) {
	var out bytes.Buffer
	u := New(&out, nil)
	wr(u, RegIER, 0x05)
	wr(u, RegLCR, LCRDLAB|0x03)
	wr(u, RegData, 0x01) // DLL: 115200 baud
	wr(u, RegIER, 0x00)  // DLM
	if rd(u, RegData) != 0x01 || rd(u, RegIER) != 0x00 {
		t.Error("divisor latch did not read back")
	}
	wr(u, RegLCR, 0x03)
	if rd(u, RegIER) != 0x05 {
		t.Errorf("IER clobbered by DLM write: %#x", rd(u, RegIER))
	}
	if rd(u, RegLCR) != 0x03 {
		t.Error("LCR did not read back")
	}
	if out.Len() != 0 {
		t.Errorf("divisor write reached the console: %q", out.String())
	}
}

func TestScratch(t *testing.T) {
	u := New(nil, nil)
	for _, v := range []byte{0x55, 0xAA, 0x00} {
		wr(u, RegScratch, v)
		if got := rd(u, RegScratch); got != v {
			t.Errorf("scratch %#x read back %#x", v, got)
		}
	}
}

func TestTHREInterrupt(t *testing.T) {
	var irq irqRec
	u := New(nil, irq.set)
	if rd(u, RegIIR)&IIRNoInt == 0 {
		t.Fatal("interrupt pending at reset")
	}
	wr(u, RegIER, IERTHRE)
	if l, _ := irq.last(); !l {
		t.Fatal("enabling THRE interrupt with THR empty did not raise the line")
	}
	if id := rd(u, RegIIR) & iirIDMask; id != IIRTHRE {
		t.Fatalf("IIR = %#x, want THRE", id)
	}
	// Reading IIR cleared the THRE condition.
	if l, _ := irq.last(); l {
		t.Error("line still high after IIR read cleared THRE")
	}
	if rd(u, RegIIR)&IIRNoInt == 0 {
		t.Error("THRE still pending after IIR read")
	}
	// A write makes THR empty again: a fresh low-to-high edge.
	_, before := irq.last()
	wr(u, RegData, 'x')
	l, after := irq.last()
	if !l || after <= before {
		t.Errorf("THR write: line %v after %d transitions (was %d)", l, after, before)
	}
	wr(u, RegIER, 0)
	if l, _ := irq.last(); l {
		t.Error("line high with interrupts disabled")
	}
}

func TestReceiveInterrupt(t *testing.T) {
	var irq irqRec
	u := New(nil, irq.set)
	wr(u, RegIER, IERRxData)
	if n := u.Input([]byte("ab")); n != 2 {
		t.Fatalf("Input took %d", n)
	}
	if l, _ := irq.last(); !l {
		t.Fatal("received data did not raise the line")
	}
	if rd(u, RegLSR)&LSRDataReady == 0 {
		t.Fatal("LSR.DR clear with data waiting")
	}
	if id := rd(u, RegIIR) & iirIDMask; id != IIRRxData {
		t.Fatalf("IIR = %#x, want RX data", id)
	}
	if rd(u, RegData) != 'a' || rd(u, RegData) != 'b' {
		t.Fatal("bytes received out of order")
	}
	if rd(u, RegLSR)&LSRDataReady != 0 {
		t.Error("LSR.DR set with FIFO empty")
	}
	if l, _ := irq.last(); l {
		t.Error("line high after FIFO drained")
	}
}

func TestRxPriorityOverTHRE(t *testing.T) {
	u := New(nil, nil)
	wr(u, RegIER, IERRxData|IERTHRE)
	u.Input([]byte{1})
	if id := rd(u, RegIIR) & iirIDMask; id != IIRRxData {
		t.Errorf("IIR = %#x, want RX data first", id)
	}
	rd(u, RegData)
	if id := rd(u, RegIIR) & iirIDMask; id != IIRTHRE {
		t.Errorf("IIR = %#x after drain, want THRE", id)
	}
}

func TestFIFOControl(t *testing.T) {
	u := New(nil, nil)
	if rd(u, RegIIR)&IIRFIFOs != 0 {
		t.Error("FIFO bits set before FCR enable")
	}
	wr(u, RegIIR, FCREnable)
	if rd(u, RegIIR)&IIRFIFOs != IIRFIFOs {
		t.Error("16550A FIFO bits not reported")
	}
	u.Input([]byte("xyz"))
	wr(u, RegIIR, FCREnable|FCRClearRx)
	if rd(u, RegLSR)&LSRDataReady != 0 {
		t.Error("FCR clear left data in the receive FIFO")
	}
}

// TestLoopback is the check Linux's 8250 autoconfig does, plus data loopback.
func TestLoopback(t *testing.T) {
	var out bytes.Buffer
	var irq irqRec
	u := New(&out, irq.set)
	wr(u, RegMCR, MCRLoop|MCRRTS|MCROut2)
	if got := rd(u, RegMSR) & 0xF0; got != MSRCTS|MSRDCD {
		t.Errorf("loopback MSR = %#x, want 0x90", got)
	}
	wr(u, RegMCR, MCRLoop|MCRDTR|MCROut1)
	if got := rd(u, RegMSR) & 0xF0; got != MSRDSR|MSRRI {
		t.Errorf("loopback MSR = %#x, want 0x60", got)
	}
	if rd(u, RegMCR) != MCRLoop|MCRDTR|MCROut1 {
		t.Error("MCR did not read back")
	}
	wr(u, RegIER, IERRxData)
	wr(u, RegData, 'q')
	if out.Len() != 0 {
		t.Errorf("loopback byte reached the console: %q", out.String())
	}
	if rd(u, RegLSR)&LSRDataReady == 0 || rd(u, RegData) != 'q' {
		t.Error("loopback byte not received")
	}
	if l, n := irq.last(); l {
		t.Errorf("interrupt line raised in loopback (%d transitions)", n)
	}
	wr(u, RegMCR, 0)
	if rd(u, RegMSR)&0xF0 != MSRDCD|MSRDSR|MSRCTS {
		t.Error("MSR without loopback should show a connected terminal")
	}
}

func TestOverrunOnLoopbackFlood(t *testing.T) {
	u := New(nil, nil)
	wr(u, RegMCR, MCRLoop)
	for i := 0; i < RxCapacity+1; i++ {
		wr(u, RegData, byte(i))
	}
	if rd(u, RegLSR)&LSROverrun == 0 {
		t.Error("overrun not reported")
	}
	if rd(u, RegLSR)&LSROverrun != 0 {
		t.Error("overrun not cleared by LSR read")
	}
}

func TestInputBlocksUntilDrainedOrClosed(t *testing.T) {
	u := New(nil, nil)
	big := make([]byte, RxCapacity+10)
	done := make(chan int)
	go func() { done <- u.Input(big) }()
	// Drain 10 bytes once the FIFO is full; Input then finishes.
	drained := 0
	for drained < 10 {
		if rd(u, RegLSR)&LSRDataReady != 0 {
			u.mu.Lock()
			full := len(u.rx) == RxCapacity
			u.mu.Unlock()
			if full {
				rd(u, RegData)
				drained++
			}
		}
		select {
		case n := <-done:
			if n != len(big) {
				t.Fatalf("Input returned %d", n)
			}
			return
		default:
		}
	}
	if n := <-done; n != len(big) {
		t.Fatalf("Input returned %d", n)
	}

	// Close releases a blocked Input.
	u2 := New(nil, nil)
	go func() { done <- u2.Input(big) }()
	u2.Close()
	if n := <-done; n > RxCapacity {
		t.Errorf("closed Input accepted %d", n)
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	f.n++
	return 0, errors.New("console gone")
}

func TestConsoleErrorDoesNotStopGuest(t *testing.T) {
	fw := &failWriter{}
	u := New(fw, nil)
	wr(u, RegData, 'a')
	wr(u, RegData, 'b')
	if u.OutputError() == nil || fw.n != 1 {
		t.Errorf("error %v after %d writes; want one failed write remembered", u.OutputError(), fw.n)
	}
	if rd(u, RegLSR)&LSRTHRE == 0 {
		t.Error("THR stuck after console error")
	}
}

func TestCopyInput(t *testing.T) {
	u := New(nil, nil)
	if err := u.CopyInput(strings.NewReader("hello")); err != io.EOF {
		t.Fatalf("CopyInput: %v", err)
	}
	var got []byte
	for rd(u, RegLSR)&LSRDataReady != 0 {
		got = append(got, rd(u, RegData))
	}
	if string(got) != "hello" {
		t.Errorf("received %q", got)
	}
}

func TestWideAndOutOfRangeAccess(t *testing.T) {
	u := New(nil, nil)
	d := []byte{1, 2, 3, 4}
	u.Read(RegLSR, d)
	if d[0]&LSRTHRE == 0 || d[1] != 0 || d[3] != 0 {
		t.Errorf("wide LSR read = %x", d)
	}
	u.Read(99, d)
	u.Write(99, d)
	u.Read(0, nil)
	u.Write(0, nil)
}

func BenchmarkTransmit(b *testing.B) {
	u := New(io.Discard, func(bool) {})
	wr(u, RegIER, IERTHRE)
	c := []byte{'x'}
	for b.Loop() {
		u.Write(RegData, c)
	}
}

// FuzzRegisters drives the registers with arbitrary guest accesses and host input; the
// UART must not panic, keep the receive FIFO bounded and keep the interrupt line
// consistent with IIR.
func FuzzRegisters(f *testing.F) {
	f.Add([]byte{0x11, 0x02, 0x10, 'a', 0x92, 0x00, 0x14, 0x10, 0x10, 'b', 0x95, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var irq irqRec
		u := New(io.Discard, irq.set)
		for i := 0; i+1 < len(ops); i += 2 {
			op, v := ops[i], ops[i+1]
			off := uint64(op & 7)
			switch op >> 6 {
			case 0:
				u.Write(off, []byte{v})
			case 1:
				u.mu.Lock()
				full := len(u.rx) >= RxCapacity
				u.mu.Unlock()
				if !full { // Input would block until the guest reads
					u.Input([]byte{v})
				}
			default:
				u.Read(off, make([]byte, 1+int(v%8)))
			}
			u.mu.Lock()
			n, level, loop := len(u.rx), u.level, u.mcr&MCRLoop != 0
			want := u.pending() != IIRNoInt && !loop
			u.mu.Unlock()
			if n > RxCapacity {
				t.Fatalf("receive FIFO holds %d bytes", n)
			}
			if level != want {
				t.Fatalf("line %v, pending condition %v", level, want)
			}
		}
	})
}
