package kvm

import (
	"encoding/binary"
	"testing"
)

func runPage(reason ExitReason) []byte {
	p := make([]byte, 4096)
	binary.LittleEndian.PutUint32(p[runExitReason:], uint32(reason))
	return p
}

func TestDecodeIO(t *testing.T) {
	p := runPage(ExitIO)
	p[ioDirection] = 1
	p[ioSize] = 2
	binary.LittleEndian.PutUint16(p[ioPort:], 0x3f8)
	binary.LittleEndian.PutUint32(p[ioCount:], 3)
	binary.LittleEndian.PutUint64(p[ioDataOffset:], 4096-6)
	copy(p[4096-6:], "abcdef")
	e, err := decodeExit(p)
	if err != nil {
		t.Fatal(err)
	}
	if !e.IO.Write || e.IO.Port != 0x3f8 || string(e.IO.Data) != "abcdef" {
		t.Errorf("decoded %v data %q", e, e.IO.Data)
	}
	// Data running past the page is refused, including offset overflow.
	binary.LittleEndian.PutUint64(p[ioDataOffset:], 4096-5)
	if _, err := decodeExit(p); err == nil {
		t.Error("IO data past the page accepted")
	}
	binary.LittleEndian.PutUint64(p[ioDataOffset:], ^uint64(0)-2)
	if _, err := decodeExit(p); err == nil {
		t.Error("wrapping IO data offset accepted")
	}
}

func TestDecodeMMIOAndEvents(t *testing.T) {
	p := runPage(ExitMMIO)
	binary.LittleEndian.PutUint64(p[mmioPhysAddr:], 0xfec00000)
	binary.LittleEndian.PutUint32(p[mmioLen:], 4)
	p[mmioIsWrite] = 1
	e, err := decodeExit(p)
	if err != nil || e.MMIO.Addr != 0xfec00000 || !e.MMIO.Write || len(e.MMIO.Data) != 4 {
		t.Errorf("mmio: %v %v", e, err)
	}
	binary.LittleEndian.PutUint32(p[mmioLen:], 9)
	if _, err := decodeExit(p); err == nil {
		t.Error("9-byte MMIO accepted")
	}

	p = runPage(ExitSystemEvent)
	binary.LittleEndian.PutUint32(p[sysEventType:], SystemEventReset)
	binary.LittleEndian.PutUint32(p[sysEventNData:], 1000) // clamped to 16
	e, err = decodeExit(p)
	if err != nil || e.SystemEvent != SystemEventReset || len(e.SystemEventData) != 16 {
		t.Errorf("system event: %v %v", e, err)
	}

	p = runPage(ExitInternalError)
	binary.LittleEndian.PutUint32(p[internalSuberror:], 1)
	binary.LittleEndian.PutUint32(p[internalNData:], 2)
	binary.LittleEndian.PutUint64(p[internalData+8:], 0xabc)
	e, err = decodeExit(p)
	if err != nil || e.Suberror != 1 || len(e.InternalData) != 2 || e.InternalData[1] != 0xabc {
		t.Errorf("internal error: %v %v", e, err)
	}

	if _, err := decodeExit(make([]byte, 100)); err == nil {
		t.Error("short kvm_run page accepted")
	}
	if s := ExitReason(999).String(); s != "EXIT_999" {
		t.Errorf("unknown reason string %q", s)
	}
}

func TestCPUIDCodec(t *testing.T) {
	in := []CPUIDEntry{{Function: 1, EBX: 0x01000800, ECX: 1 << 31}, {Function: 0xb, Index: 1, Flags: CPUIDFlagSignificantIndex, EDX: 3}}
	out, err := decodeCPUID(encodeCPUID(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0] != in[0] || out[1] != in[1] {
		t.Errorf("round trip %+v -> %+v", in, out)
	}
	bad := encodeCPUID(in)
	binary.LittleEndian.PutUint32(bad, 3)
	if _, err := decodeCPUID(bad); err == nil {
		t.Error("entry count beyond buffer accepted")
	}
}

func FuzzDecodeExit(f *testing.F) {
	f.Add(runPage(ExitIO))
	f.Add(runPage(ExitMMIO))
	f.Add(runPage(ExitSystemEvent))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := make([]byte, runPageMinSize)
		copy(p, b)
		e, err := decodeExit(p)
		if err == nil && e.Reason == ExitIO && len(e.IO.Data) != int(e.IO.Size)*int(e.IO.Count) {
			t.Fatalf("IO data length %d", len(e.IO.Data))
		}
	})
}
