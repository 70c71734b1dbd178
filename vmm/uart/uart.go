package uart

import (
	"io"
	"sync"
)

// Register offsets from the base port.
const (
	RegData    = 0 // RBR (read), THR (write); DLL when LCR.DLAB
	RegIER     = 1 // DLM when LCR.DLAB
	RegIIR     = 2 // IIR (read), FCR (write)
	RegLCR     = 3
	RegMCR     = 4
	RegLSR     = 5
	RegMSR     = 6
	RegScratch = 7

	// Size is the number of ports a UART occupies.
	Size = 8
)

// Register bits.
const (
	IERRxData  = 1 << 0 // received data available
	IERTHRE    = 1 << 1 // transmitter holding register empty
	IERLineSt  = 1 << 2
	IERModemSt = 1 << 3

	IIRNoInt  = 0x01
	IIRTHRE   = 0x02
	IIRRxData = 0x04
	IIRFIFOs  = 0xC0 // FIFOs enabled (16550A)
	iirIDMask = 0x0F

	FCREnable  = 1 << 0
	FCRClearRx = 1 << 1

	LCRDLAB = 1 << 7

	MCRDTR  = 1 << 0
	MCRRTS  = 1 << 1
	MCROut1 = 1 << 2
	MCROut2 = 1 << 3
	MCRLoop = 1 << 4

	LSRDataReady = 1 << 0
	LSROverrun   = 1 << 1
	LSRTHRE      = 1 << 5
	LSRTEMT      = 1 << 6

	MSRCTS = 1 << 4
	MSRDSR = 1 << 5
	MSRRI  = 1 << 6
	MSRDCD = 1 << 7
)

// RxCapacity is how many received bytes wait for the guest before Input blocks.
const RxCapacity = 4096

// UART is one 16550A. Use New.
type UART struct {
	mu   sync.Mutex
	room *sync.Cond // signalled when the guest drains the receive FIFO or on Close

	out io.Writer
	irq func(level bool)

	ier, lcr, mcr, scratch, fcr byte
	dll, dlm                    byte
	overrun                     bool
	thrPending                  bool // THR-empty interrupt condition, cleared by IIR read or THR write
	rx                          []byte
	level                       bool // last level reported to irq
	closed                      bool
	outErr                      error
}

// New returns a UART writing transmitted bytes to out (nil: discard) and reporting
// its interrupt line level to irq (nil: no interrupt).
func New(out io.Writer, irq func(level bool)) *UART {
	if out == nil {
		out = io.Discard
	}
	if irq == nil {
		irq = func(bool) {}
	}
	u := &UART{out: out, irq: irq, dll: 0x0C} // 9600 baud, as after a BIOS
	u.room = sync.NewCond(&u.mu)
	return u
}

// Read handles a guest read at base+off (bus.Device). Only the first byte of data is
// meaningful; wider accesses read zeros above it.
func (u *UART) Read(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	clear(data)
	u.mu.Lock()
	defer u.mu.Unlock()
	data[0] = u.readReg(off)
	u.update()
}

// Write handles a guest write at base+off (bus.Device); only data[0] is used.
func (u *UART) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.writeReg(off, data[0])
	u.update()
}

func (u *UART) readReg(off uint64) byte {
	switch off {
	case RegData:
		if u.lcr&LCRDLAB != 0 {
			return u.dll
		}
		if len(u.rx) == 0 {
			return 0
		}
		b := u.rx[0]
		u.rx = u.rx[1:]
		if len(u.rx) == 0 {
			u.rx = nil // let the backing array go
		}
		u.room.Broadcast()
		return b
	case RegIER:
		if u.lcr&LCRDLAB != 0 {
			return u.dlm
		}
		return u.ier
	case RegIIR:
		id := u.pending()
		if id == IIRTHRE {
			// Reading IIR with THRE as the source clears it (8250 semantics).
			u.thrPending = false
		}
		if u.fcr&FCREnable != 0 {
			id |= IIRFIFOs
		}
		return id
	case RegLCR:
		return u.lcr
	case RegMCR:
		return u.mcr
	case RegLSR:
		v := byte(LSRTHRE | LSRTEMT)
		if len(u.rx) > 0 {
			v |= LSRDataReady
		}
		if u.overrun {
			v |= LSROverrun
			u.overrun = false // cleared by reading LSR
		}
		return v
	case RegMSR:
		if u.mcr&MCRLoop != 0 {
			// Loopback wires the modem control outputs to the status inputs.
			var v byte
			if u.mcr&MCRDTR != 0 {
				v |= MSRDSR
			}
			if u.mcr&MCRRTS != 0 {
				v |= MSRCTS
			}
			if u.mcr&MCROut1 != 0 {
				v |= MSRRI
			}
			if u.mcr&MCROut2 != 0 {
				v |= MSRDCD
			}
			return v
		}
		return MSRDCD | MSRDSR | MSRCTS // a connected terminal
	case RegScratch:
		return u.scratch
	}
	return 0
}

func (u *UART) writeReg(off uint64, v byte) {
	switch off {
	case RegData:
		if u.lcr&LCRDLAB != 0 {
			u.dll = v
			return
		}
		u.thrPending = false
		if u.mcr&MCRLoop != 0 {
			u.pushRx([]byte{v})
		} else if u.outErr == nil {
			// A failing console must not stop the guest; remember and drop.
			_, u.outErr = u.out.Write([]byte{v})
		}
		// The byte is sent at once: THR is empty again. Drop the line first so the
		// new condition is a fresh edge.
		u.update()
		u.thrPending = true
	case RegIER:
		if u.lcr&LCRDLAB != 0 {
			u.dlm = v
			return
		}
		old := u.ier
		u.ier = v & 0x0F
		if (old^u.ier)&IERTHRE != 0 {
			// Enabling the THRE interrupt with THR empty raises it at once.
			u.thrPending = u.ier&IERTHRE != 0
		}
	case RegIIR: // FCR
		if v&FCRClearRx != 0 {
			u.rx = nil
			u.room.Broadcast()
		}
		u.fcr = v & FCREnable
	case RegLCR:
		u.lcr = v
	case RegMCR:
		u.mcr = v & 0x1F
	case RegLSR, RegMSR:
		// Read-only on a 16550; writes are for factory test and are ignored.
	case RegScratch:
		u.scratch = v
	}
}

// pending returns the IIR identification of the highest-priority condition.
func (u *UART) pending() byte {
	if u.ier&IERRxData != 0 && len(u.rx) > 0 {
		return IIRRxData
	}
	if u.ier&IERTHRE != 0 && u.thrPending {
		return IIRTHRE
	}
	return IIRNoInt
}

// update reports the interrupt line if it changed. In loopback the output is
// disconnected from the interrupt controller, as on real hardware.
func (u *UART) update() {
	level := u.pending() != IIRNoInt && u.mcr&MCRLoop == 0
	if level != u.level {
		u.level = level
		u.irq(level)
	}
}

func (u *UART) pushRx(b []byte) int {
	n := min(len(b), RxCapacity-len(u.rx))
	if n < len(b) {
		u.overrun = true
	}
	u.rx = append(u.rx, b[:n]...)
	return n
}

// Input queues bytes for the guest to receive, blocking while the receive FIFO is
// full. It returns early with the count accepted if the UART is closed.
func (u *UART) Input(b []byte) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	done := 0
	for done < len(b) && !u.closed {
		if len(u.rx) >= RxCapacity {
			u.room.Wait()
			continue
		}
		n := min(len(b)-done, RxCapacity-len(u.rx))
		u.rx = append(u.rx, b[done:done+n]...)
		done += n
		u.update()
	}
	return done
}

// Close wakes Input callers; later input is dropped.
func (u *UART) Close() {
	u.mu.Lock()
	u.closed = true
	u.room.Broadcast()
	u.mu.Unlock()
}

// OutputError is the first error the console writer returned, if any.
func (u *UART) OutputError() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.outErr
}

// CopyInput feeds r into the UART until r fails or the UART is closed. Run it on its
// own goroutine; it returns the read error (io.EOF at end of input).
func (u *UART) CopyInput(r io.Reader) error {
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		if n > 0 && u.Input(buf[:n]) < n {
			return nil // closed
		}
		if err != nil {
			return err
		}
	}
}
