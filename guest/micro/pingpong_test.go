package micro

import (
	"bytes"
	"testing"
)

func TestPingEncodingsMatchGNUAs(t *testing.T) {
	a := New(0)
	a.Rdtsc()
	a.Or(RCX, RBX)
	a.Or(RAX, RDX)
	got, err := a.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	want := gas(t, `
rdtsc
shl rdx, 32
or rax, rdx
or rcx, rbx
or rax, rdx
`)
	if !bytes.Equal(got, want) {
		t.Errorf("encoding differs from GNU as:\n got % x\nwant % x", got, want)
	}
}

func TestPtnetPingSpecChecked(t *testing.T) {
	good := PtnetPingSpec{
		TX:      PtnetRing{Slots: 0xc000_0100, NumSlots: 1024, Atok: 0x110000, Ktoa: 0x111000, Kick: 0xc100_0080},
		RX:      PtnetRing{Slots: 0xc000_4100, NumSlots: 1024, Atok: 0x110040, Ktoa: 0x111040, Kick: 0xc100_0084},
		BufBase: 0xc080_0000, BufShift: 11, NumBufs: 4096, FrameLen: 60, SeqOff: 22,
		Rounds: 100, Times: 0x800000, Counters: 0x100000}
	code, err := PtnetPingPong(0x10000, good)
	if err != nil || len(code) == 0 {
		t.Fatalf("good spec: %d bytes, %v", len(code), err)
	}
	for name, v := range map[string]uint64{"tx slots": good.TX.Slots, "rx slots": good.RX.Slots, "tx kick": good.TX.Kick,
		"rx kick": good.RX.Kick, "tx atok": good.TX.Atok, "rx ktoa": good.RX.Ktoa, "times": good.Times, "ready": ReadyAddr, "done": DoneAddr} {
		if !imm32(code, v) {
			t.Errorf("%s %#x not in the program", name, v)
		}
	}
	if n := bytes.Count(code, []byte{0x0f, 0x31}); n < 3 {
		t.Errorf("%d rdtsc, want the start, each ping, each pong and the end", n)
	}
	for name, mod := range map[string]func(*PtnetPingSpec){
		"one tx slot":         func(s *PtnetPingSpec) { s.TX.NumSlots = 1 },
		"one rx slot":         func(s *PtnetPingSpec) { s.RX.NumSlots = 1 },
		"no rounds":           func(s *PtnetPingSpec) { s.Rounds = 0 },
		"rounds past 32 bits": func(s *PtnetPingSpec) { s.Rounds = 1 << 32 },
		"no times":            func(s *PtnetPingSpec) { s.Times = 0 },
		"no counters":         func(s *PtnetPingSpec) { s.Counters = 0 },
		"no sequence":         func(s *PtnetPingSpec) { s.SeqOff = 0 },
		"sequence past":       func(s *PtnetPingSpec) { s.SeqOff = 2045 },
		"no buffers":          func(s *PtnetPingSpec) { s.NumBufs = 0 },
		"no frame":            func(s *PtnetPingSpec) { s.FrameLen = 0 },
	} {
		s := good
		mod(&s)
		if _, err := PtnetPingPong(0x10000, s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestVirtqPingSpecChecked(t *testing.T) {
	good := VirtqPingSpec{
		TX:   VirtqRing{Avail: 0x201000, Used: 0x202000, Doorbell: 0xc000_3004, Queue: 1},
		RX:   VirtqRing{Avail: 0x205000, Used: 0x206000, Doorbell: 0xc000_3000, Queue: 0},
		Size: 256, EventIdx: true, TxBuf0: 0x400000, RxBuf0: 0x600000, Stride: 2048, SeqOff: 34,
		Rounds: 100, Times: 0x800000, Counters: 0x100000}
	code, err := VirtqPingPong(0x10000, good)
	if err != nil || len(code) == 0 {
		t.Fatalf("good spec: %d bytes, %v", len(code), err)
	}
	for name, v := range map[string]uint64{"tx avail": good.TX.Avail, "rx used": good.RX.Used, "tx doorbell": good.TX.Doorbell,
		"rx doorbell": good.RX.Doorbell, "tx buffers": good.TxBuf0, "rx buffers": good.RxBuf0, "times": good.Times} {
		if !imm32(code, v) {
			t.Errorf("%s %#x not in the program", name, v)
		}
	}
	for name, mod := range map[string]func(*VirtqPingSpec){
		"size not a power of two": func(s *VirtqPingSpec) { s.Size = 200 },
		"no rounds":               func(s *VirtqPingSpec) { s.Rounds = 0 },
		"no times":                func(s *VirtqPingSpec) { s.Times = 0 },
		"no counters":             func(s *VirtqPingSpec) { s.Counters = 0 },
		"stride not a power of 2": func(s *VirtqPingSpec) { s.Stride = 1536 },
		"no sequence":             func(s *VirtqPingSpec) { s.SeqOff = 0 },
		"sequence past":           func(s *VirtqPingSpec) { s.SeqOff = 2045 },
	} {
		s := good
		mod(&s)
		if _, err := VirtqPingPong(0x10000, s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
