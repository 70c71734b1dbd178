package i8042

import "sync"

// Ports relative to the window the device is registered at (DataPort).
const (
	DataPort    = 0x60
	CommandPort = 0x64
	// Size is the window from DataPort through CommandPort; port 0x61 inside it is
	// claimed by KVM's in-kernel PIT (speaker) before it reaches here.
	Size = CommandPort - DataPort + 1
)

// Commands written to CommandPort.
const (
	CmdReadConfig    = 0x20
	CmdWriteConfig   = 0x60
	CmdDisableAux    = 0xA7
	CmdEnableAux     = 0xA8
	CmdTestAux       = 0xA9
	CmdSelfTest      = 0xAA
	CmdTestKbd       = 0xAB
	CmdDisableKbd    = 0xAD
	CmdEnableKbd     = 0xAE
	CmdReadOutPort   = 0xD0
	CmdWriteOutPort  = 0xD1
	CmdWriteAuxOut   = 0xD3
	CmdWriteAux      = 0xD4
	CmdPulseResetLow = 0xF0 // 0xF0-0xFF pulse output lines; bit 0 clear pulses reset
	CmdReset         = 0xFE
)

// Status register bits.
const (
	StatusOutputFull = 1 << 0
	StatusSystemFlag = 1 << 2
	StatusCommand    = 1 << 3 // last write was to the command port
)

// Controller is the i8042. Use New.
type Controller struct {
	mu      sync.Mutex
	reset   func()
	out     []byte // bytes waiting at the data port
	config  byte
	outPort byte
	pending byte // command waiting for its data byte, or 0
	lastCmd bool
}

// New returns a controller that calls reset (once per request, with no lock held)
// when the guest asks for a system reset.
func New(reset func()) *Controller {
	if reset == nil {
		reset = func() {}
	}
	// Config: keyboard and aux clocks disabled, system flag set; output port: A20 on,
	// reset line high (inactive).
	return &Controller{reset: reset, config: 0x30 | StatusSystemFlag, outPort: 0x03}
}

// Read handles a guest read at DataPort+off (bus.Device).
func (c *Controller) Read(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	clear(data)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch off {
	case 0:
		if len(c.out) > 0 {
			data[0] = c.out[0]
			c.out = c.out[1:]
		}
	case CommandPort - DataPort:
		s := byte(StatusSystemFlag)
		if len(c.out) > 0 {
			s |= StatusOutputFull
		}
		if c.lastCmd {
			s |= StatusCommand
		}
		data[0] = s
	default:
		data[0] = 0xFF
	}
}

// Write handles a guest write at DataPort+off (bus.Device).
func (c *Controller) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	c.mu.Lock()
	var doReset bool
	switch off {
	case 0:
		c.lastCmd = false
		doReset = c.writeData(v)
	case CommandPort - DataPort:
		c.lastCmd = true
		doReset = c.command(v)
	}
	c.mu.Unlock()
	if doReset {
		c.reset()
	}
}

func (c *Controller) reply(b byte) {
	if len(c.out) < 16 { // a guest that never reads cannot grow this
		c.out = append(c.out, b)
	}
}

func (c *Controller) command(v byte) (reset bool) {
	c.pending = 0
	switch {
	case v == CmdReadConfig:
		c.reply(c.config)
	case v == CmdWriteConfig, v == CmdWriteOutPort, v == CmdWriteAuxOut, v == CmdWriteAux:
		c.pending = v
	case v == CmdSelfTest:
		c.reply(0x55)
	case v == CmdTestKbd, v == CmdTestAux:
		c.reply(0x00)
	case v == CmdReadOutPort:
		c.reply(c.outPort)
	case v >= CmdPulseResetLow:
		// Pulse output lines whose bits are clear; bit 0 is the CPU reset line.
		return v&1 == 0
	}
	return false
}

func (c *Controller) writeData(v byte) (reset bool) {
	cmd := c.pending
	c.pending = 0
	switch cmd {
	case CmdWriteConfig:
		c.config = v
	case CmdWriteOutPort:
		c.outPort = v
		return v&1 == 0 // driving the reset line low resets the CPU
	case CmdWriteAuxOut:
		c.reply(v) // echoed as if from the mouse
	}
	// Bytes for the absent keyboard or mouse are dropped.
	return false
}
