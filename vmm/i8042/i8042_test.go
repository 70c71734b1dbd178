package i8042

import "testing"

type resets struct{ n int }

func (r *resets) fn() { r.n++ }

func out(c *Controller, port uint64, v byte) { c.Write(port-DataPort, []byte{v}) }
func in(c *Controller, port uint64) byte {
	b := []byte{0}
	c.Read(port-DataPort, b)
	return b[0]
}

func TestResetCommand(t *testing.T) {
	var r resets
	c := New(r.fn)
	// Linux's kb_wait: the input buffer (status bit 1) must read empty.
	if in(c, CommandPort)&0x02 != 0 {
		t.Fatal("input buffer reported full")
	}
	out(c, CommandPort, CmdReset)
	if r.n != 1 {
		t.Fatalf("0xFE to port 0x64: %d resets, want 1", r.n)
	}
	out(c, CommandPort, 0xFF) // pulse no lines: not a reset
	if r.n != 1 {
		t.Errorf("0xFF caused a reset")
	}
}

func TestResetThroughOutputPort(t *testing.T) {
	var r resets
	c := New(r.fn)
	out(c, CommandPort, CmdWriteOutPort)
	out(c, DataPort, 0x03) // reset line stays high
	if r.n != 0 {
		t.Fatal("output port 0x03 reset the machine")
	}
	out(c, CommandPort, CmdWriteOutPort)
	out(c, DataPort, 0x02)
	if r.n != 1 {
		t.Errorf("output port bit 0 cleared: %d resets, want 1", r.n)
	}
	// A data byte with no command pending is not a reset.
	out(c, DataPort, 0x00)
	if r.n != 1 {
		t.Errorf("stray data byte reset the machine")
	}
}

func TestProbeCommands(t *testing.T) {
	c := New(nil)
	out(c, CommandPort, CmdSelfTest)
	if in(c, CommandPort)&StatusOutputFull == 0 || in(c, DataPort) != 0x55 {
		t.Error("self test did not answer 0x55")
	}
	if in(c, CommandPort)&StatusOutputFull != 0 {
		t.Error("output buffer full after reading the answer")
	}
	out(c, CommandPort, CmdWriteConfig)
	out(c, DataPort, 0x47)
	out(c, CommandPort, CmdReadConfig)
	if got := in(c, DataPort); got != 0x47 {
		t.Errorf("config byte read back %#x", got)
	}
	out(c, CommandPort, CmdWriteAuxOut)
	out(c, DataPort, 0x5A)
	if got := in(c, DataPort); got != 0x5A {
		t.Errorf("aux loopback returned %#x", got)
	}
}

func TestOutputQueueBounded(t *testing.T) {
	c := New(nil)
	for i := 0; i < 1000; i++ {
		out(c, CommandPort, CmdSelfTest)
	}
	c.mu.Lock()
	n := len(c.out)
	c.mu.Unlock()
	if n > 16 {
		t.Errorf("%d queued replies", n)
	}
}

func FuzzController(f *testing.F) {
	f.Add([]byte{0x64, CmdWriteOutPort, 0x60, 0x00})
	f.Add([]byte{0x64, CmdReset})
	f.Fuzz(func(t *testing.T, ops []byte) {
		c := New(nil)
		for i := 0; i+1 < len(ops); i += 2 {
			port := uint64(ops[i] % Size)
			if ops[i]&0x80 != 0 {
				c.Read(port, make([]byte, 1+int(ops[i+1]%8)))
			} else {
				c.Write(port, []byte{ops[i+1]})
			}
		}
	})
}
