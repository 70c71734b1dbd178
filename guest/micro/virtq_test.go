package micro

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// gas assembles src (Intel syntax, 64-bit) with GNU as and returns the .text bytes;
// it skips t when the tools are missing.
func gas(t *testing.T, src string) []byte {
	t.Helper()
	as, err := exec.LookPath("as")
	if err != nil {
		t.Skip("GNU as not installed; encodings not cross-checked")
	}
	objcopy, err := exec.LookPath("objcopy")
	if err != nil {
		t.Skip("objcopy not installed")
	}
	dir := t.TempDir()
	s, o, b := filepath.Join(dir, "s.s"), filepath.Join(dir, "s.o"), filepath.Join(dir, "s.bin")
	if err := os.WriteFile(s, []byte(".intel_syntax noprefix\n.code64\n"+src), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(as, "--64", "-o", o, s).CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	if out, err := exec.Command(objcopy, "-O", "binary", "-j", ".text", o, b).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, out)
	}
	want, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return want
}

func TestVirtqEncodingsMatchGNUAs(t *testing.T) {
	a := New(0)
	a.Store16(RBX, 2, RSI)
	a.Store16(RDX, 4, RAX)
	a.Store16(RBP, 0, RCX)
	a.Load16(RAX, RBX, 2)
	a.Load16(RCX, RSI, 0x2004)
	a.Sub(RCX, RAX)
	a.Add(RDX, RBX)
	a.AndImm32(RCX, 0xffff)
	a.AndImm32(RAX, 1)
	a.Mfence()
	got, err := a.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	want := gas(t, `
mov word ptr [rbx+2], si
mov word ptr [rdx+4], ax
mov word ptr [rbp+0], cx
movzx eax, word ptr [rbx+2]
movzx ecx, word ptr [rsi+0x2004]
sub rcx, rax
add rdx, rbx
and ecx, 0xffff
and eax, 1
mfence
`)
	if !bytes.Equal(got, want) {
		t.Errorf("encoding differs from GNU as:\n got % x\nwant % x", got, want)
	}
}

func TestVirtqTXSpecChecked(t *testing.T) {
	good := VirtqTXSpec{Avail: 0x200000, Used: 0x201000, Size: 256, Batch: 32, Frames: 64,
		Doorbell: 0xc000_3004, Queue: 1, EventIdx: true, Buf0: 0x400000, Stride: 2048, SeqOff: 60,
		Credit: 0x100100, Counters: 0x100000}
	if code, err := VirtqTX(0x10000, good); err != nil || len(code) == 0 {
		t.Fatalf("good spec: %d bytes, %v", len(code), err)
	}
	for name, mod := range map[string]func(*VirtqTXSpec){
		"size not a power of two":  func(s *VirtqTXSpec) { s.Size = 200 },
		"batch above size":         func(s *VirtqTXSpec) { s.Batch = 512 },
		"zero batch":               func(s *VirtqTXSpec) { s.Batch = 0 },
		"frames not whole batches": func(s *VirtqTXSpec) { s.Frames = 65 },
		"no counters":              func(s *VirtqTXSpec) { s.Counters = 0 },
	} {
		s := good
		mod(&s)
		if _, err := VirtqTX(0x10000, s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
