package micro

import (
	"bytes"
	"testing"
)

func TestPtnetEncodingsMatchGNUAs(t *testing.T) {
	a := New(0)
	a.Shl(RDX, 4)
	a.Shl(RAX, 11)
	a.Shl(RCX, 1)
	a.Test32(RAX)
	a.Test32(RDI)
	a.Load32(RDI, RBX, 0)
	a.Store32(RAX, 60, RSI)
	a.Store32(RBX, 12, RAX)
	got, err := a.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	want := gas(t, `
shl rdx, 4
shl rax, 11
shl rcx, 1
test eax, eax
test edi, edi
mov edi, dword ptr [rbx]
mov dword ptr [rax+60], esi
mov dword ptr [rbx+12], eax
`)
	if !bytes.Equal(got, want) {
		t.Errorf("encoding differs from GNU as:\n got % x\nwant % x", got, want)
	}
}

func TestPtnetTXSpecChecked(t *testing.T) {
	good := PtnetTXSpec{Slots: 0xc000_0100, NumSlots: 1024, BufBase: 0xc080_0000, BufShift: 11,
		Atok: 0x110000, Ktoa: 0x111000, Kick: 0xc100_0080, Batch: 64, Frames: 128, FrameLen: 60,
		SeqOff: 42, Credit: 0x100100, Counters: 0x100000}
	code, err := PtnetTX(0x10000, good)
	if err != nil || len(code) == 0 {
		t.Fatalf("good spec: %d bytes, %v", len(code), err)
	}
	// The addresses the guest touches are in the code as immediates.
	for name, v := range map[string]uint64{"slots": good.Slots, "kick": good.Kick, "atok": good.Atok, "ktoa": good.Ktoa} {
		imm := []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
		if !bytes.Contains(code, imm) {
			t.Errorf("%s address %#x not in the program", name, v)
		}
	}
	for name, mod := range map[string]func(*PtnetTXSpec){
		"one slot":                 func(s *PtnetTXSpec) { s.NumSlots = 1 },
		"batch fills the ring":     func(s *PtnetTXSpec) { s.Batch = 1024 },
		"zero batch":               func(s *PtnetTXSpec) { s.Batch = 0 },
		"frames not whole batches": func(s *PtnetTXSpec) { s.Frames = 129 },
		"no counters":              func(s *PtnetTXSpec) { s.Counters = 0 },
		"no frame length":          func(s *PtnetTXSpec) { s.FrameLen = 0 },
		"sequence past the buffer": func(s *PtnetTXSpec) { s.SeqOff = 2046 },
		"huge buffers":             func(s *PtnetTXSpec) { s.BufShift = 40 },
	} {
		s := good
		mod(&s)
		if _, err := PtnetTX(0x10000, s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
