package micro

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestRXEncodingsMatchGNUAs(t *testing.T) {
	a := New(0)
	a.AddMem64(RBP, RXBytes, RAX)
	a.AddMem64(RBX, 0, RCX)
	a.AddMem64(RDI, 0x1000, RDX)
	a.Shl(RDX, 3)
	a.CmpMem32Imm(RAX, 14, 0x67767470)
	a.CmpMem32Imm(RDX, 0, 5)
	a.CmpImm(RBX, 12)
	a.CmpImm(RCX, 1000)
	got, err := a.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	want := gas(t, `
add qword ptr [rbp+32], rax
add qword ptr [rbx], rcx
add qword ptr [rdi+0x1000], rdx
shl rdx, 3
cmp dword ptr [rax+14], 0x67767470
cmp dword ptr [rdx], 5
cmp rbx, 12
cmp rcx, 1000
`)
	if !bytes.Equal(got, want) {
		t.Errorf("encoding differs from GNU as:\n got % x\nwant % x", got, want)
	}
}

// imm32 says whether code holds v as a 32-bit immediate.
func imm32(code []byte, v uint64) bool {
	return bytes.Contains(code, binary.LittleEndian.AppendUint32(nil, uint32(v)))
}

func TestPtnetRXSpecChecked(t *testing.T) {
	good := PtnetRXSpec{Slots: 0xc000_4100, NumSlots: 1024, BufBase: 0xc080_0000, BufShift: 11, NumBufs: 4096,
		Atok: 0x110040, Ktoa: 0x111040, Kick: 0xc100_0084, Batch: 256, Frames: 1000, SeqOff: 22,
		Feed: 0x100080, FeedKick: 0xfebf_f010, Counters: 0x100000}
	code, err := PtnetRX(0x10000, good)
	if err != nil || len(code) == 0 {
		t.Fatalf("good spec: %d bytes, %v", len(code), err)
	}
	for name, v := range map[string]uint64{"slots": good.Slots, "kick": good.Kick, "atok": good.Atok, "ktoa": good.Ktoa,
		"buffers": good.BufBase, "feed": good.Feed, "feed doorbell": good.FeedKick, "frames": good.Frames} {
		if !imm32(code, v) {
			t.Errorf("%s %#x not in the program", name, v)
		}
	}
	// Without a sequence check the buffers are never read, without a far end it is
	// never kicked.
	plain := good
	plain.SeqOff, plain.Feed, plain.FeedKick = 0, 0, 0
	code, err = PtnetRX(0x10000, plain)
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]uint64{"buffers": good.BufBase, "feed": good.Feed, "feed doorbell": good.FeedKick} {
		if imm32(code, v) {
			t.Errorf("%s %#x in a program that does not use it", name, v)
		}
	}
	for name, mod := range map[string]func(*PtnetRXSpec){
		"one slot":                  func(s *PtnetRXSpec) { s.NumSlots = 1 },
		"batch fills the ring":      func(s *PtnetRXSpec) { s.Batch = 1024 },
		"zero batch":                func(s *PtnetRXSpec) { s.Batch = 0 },
		"no frames":                 func(s *PtnetRXSpec) { s.Frames = 0 },
		"frames past 32 bits":       func(s *PtnetRXSpec) { s.Frames = 1 << 32 },
		"no counters":               func(s *PtnetRXSpec) { s.Counters = 0 },
		"sequence past the buffer":  func(s *PtnetRXSpec) { s.SeqOff = 2046 },
		"sequence without buffers":  func(s *PtnetRXSpec) { s.NumBufs = 0 },
		"huge buffers":              func(s *PtnetRXSpec) { s.BufShift = 40 },
		"feed without a doorbell":   func(s *PtnetRXSpec) { s.FeedKick = 0 },
		"doorbell without its flag": func(s *PtnetRXSpec) { s.Feed = 0 },
	} {
		s := good
		mod(&s)
		if _, err := PtnetRX(0x10000, s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestVirtqRXSpecChecked(t *testing.T) {
	good := VirtqRXSpec{Avail: 0x204000 + 0x1000, Used: 0x204000 + 0x2000, Size: 256, Batch: 64, Frames: 1000,
		Doorbell: 0xc000_3000, Queue: 0, EventIdx: true, Buf0: 0x600000, Stride: 2048, SeqOff: 34, HdrLen: 12,
		Feed: 0x100080, FeedKick: 0xfebf_f010, Counters: 0x100000}
	code, err := VirtqRX(0x10000, good)
	if err != nil || len(code) == 0 {
		t.Fatalf("good spec: %d bytes, %v", len(code), err)
	}
	for name, v := range map[string]uint64{"avail": good.Avail, "used": good.Used, "doorbell": good.Doorbell,
		"buffers": good.Buf0, "feed": good.Feed, "feed doorbell": good.FeedKick} {
		if !imm32(code, v) {
			t.Errorf("%s %#x not in the program", name, v)
		}
	}
	// The kick decision reads avail_event (after the used ring) with EVENT_IDX, and
	// used.flags without.
	avEvent := binary.LittleEndian.AppendUint32([]byte{0x0f, 0xb7, 0x83}, 4+8*256) // movzx eax, word [rbx+0x804]
	if !bytes.Contains(code, avEvent) {
		t.Error("EVENT_IDX: avail_event never read")
	}
	noEv := good
	noEv.EventIdx = false
	code, err = VirtqRX(0x10000, noEv)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(code, avEvent) {
		t.Error("without EVENT_IDX: avail_event read")
	}
	for name, mod := range map[string]func(*VirtqRXSpec){
		"size not a power of two":  func(s *VirtqRXSpec) { s.Size = 200 },
		"size too big":             func(s *VirtqRXSpec) { s.Size = 0 },
		"batch above size":         func(s *VirtqRXSpec) { s.Batch = 512 },
		"zero batch":               func(s *VirtqRXSpec) { s.Batch = 0 },
		"no frames":                func(s *VirtqRXSpec) { s.Frames = 0 },
		"no counters":              func(s *VirtqRXSpec) { s.Counters = 0 },
		"stride not a power of 2":  func(s *VirtqRXSpec) { s.Stride = 1500 },
		"sequence past the buffer": func(s *VirtqRXSpec) { s.SeqOff = 2045 },
		"feed without a doorbell":  func(s *VirtqRXSpec) { s.FeedKick = 0 },
	} {
		s := good
		mod(&s)
		if _, err := VirtqRX(0x10000, s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
