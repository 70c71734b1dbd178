package micro

import (
	"bytes"
	"testing"
)

// sample emits one of each instruction form; gasSample is the same in GNU as syntax.
func sample(a *Asm) {
	a.MovImm(RAX, 0x12345678)
	a.MovImm(RBX, 0xfee0_00b0)
	a.MovImm(RCX, 0x1_0000_0000)
	a.MovImm(RDI, 0xffff_ffff_ffff_fff0)
	a.Mov(RDX, RSI)
	a.Store32(RBX, 0, RAX)
	a.Store32(RDI, 8, RCX)
	a.Store32(RBP, 0, RAX)
	a.Store32(RSI, 0x1000, RDX)
	a.Store64(RDI, -8, RAX)
	a.Load32(RAX, RBX, 0)
	a.Load64(RCX, RSI, 16)
	a.LockInc64(RBX, 0)
	a.Inc(RDI)
	a.Dec(RCX)
	a.AddImm(RSI, -4)
	a.Cmp(RAX, RCX)
	a.Out8()
	a.Out16()
	a.Out32()
	a.In8()
	a.In16()
	a.In32()
	a.Push(RBX)
	a.Pop(RBP)
	a.Hlt()
	a.Sti()
	a.Cli()
	a.Pause()
	a.Iretq()
	a.Int(0x60)
}

const gasSample = `
mov eax, 0x12345678
mov ebx, 0xfee000b0
movabs rcx, 0x100000000
movabs rdi, 0xfffffffffffffff0
mov rdx, rsi
mov dword ptr [rbx], eax
mov dword ptr [rdi+8], ecx
mov dword ptr [rbp+0], eax
mov dword ptr [rsi+0x1000], edx
mov qword ptr [rdi-8], rax
mov eax, dword ptr [rbx]
mov rcx, qword ptr [rsi+16]
lock inc qword ptr [rbx]
inc rdi
dec rcx
add rsi, -4
cmp rax, rcx
out dx, al
out dx, ax
out dx, eax
in al, dx
in ax, dx
in eax, dx
push rbx
pop rbp
hlt
sti
cli
pause
iretq
int 0x60
`

func TestEncodingMatchesGNUAs(t *testing.T) {
	want := gas(t, gasSample)
	a := New(0)
	sample(a)
	got, err := a.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("encoding differs from GNU as:\n got % x\nwant % x", got, want)
	}
}

func TestJumps(t *testing.T) {
	a := New(0x10000)
	top := a.Here()
	a.Dec(RCX)         // 3 bytes
	a.J(NotEqual, top) // 0f 85 rel32: target -3-6 = -9
	fwd := a.NewLabel()
	a.Jmp(fwd) // e9 rel32 = 1 (skip the hlt)
	a.Hlt()
	a.Bind(fwd)
	got, err := a.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0x48, 0xff, 0xc9, 0x0f, 0x85, 0xf7, 0xff, 0xff, 0xff, 0xe9, 0x01, 0, 0, 0, 0xf4}
	if !bytes.Equal(got, want) {
		t.Errorf("got % x want % x", got, want)
	}
	if a.Addr(fwd) != 0x10000+15 {
		t.Errorf("label address %#x", a.Addr(fwd))
	}
	b := New(0)
	b.Jmp(b.NewLabel())
	if _, err := b.Assemble(); err == nil {
		t.Error("unbound label accepted")
	}
	c := New(0)
	c.Store32(RSP, 0, RAX)
	if _, err := c.Assemble(); err == nil {
		t.Error("RSP base accepted")
	}
}

func TestPrograms(t *testing.T) {
	for name, f := range map[string]func() ([]byte, error){
		"doorbells-mmio": func() ([]byte, error) { return Doorbells(0x10000, 10, 0xd000_0000, false, 1) },
		"doorbells-pio":  func() ([]byte, error) { return Doorbells(0x10000, 10, 0x6000, true, 1) },
		"configdump":     func() ([]byte, error) { return ConfigDump(0x10000, 1, 16, 0x100000) },
		"touser": func() ([]byte, error) {
			a := New(0x10000)
			a.ToUser(0x20, 0x18, true)
			a.Halt()
			return a.Assemble()
		},
	} {
		code, err := f()
		if err != nil || len(code) == 0 {
			t.Errorf("%s: %d bytes, %v", name, len(code), err)
		}
	}
	// The doorbell loop body is exactly store/out + dec + jnz.
	code, _ := Doorbells(0, 1, 0xd000_0000, false, 1)
	if !bytes.Contains(code, []byte{0x89, 0x03, 0x48, 0xff, 0xc9, 0x0f, 0x85, 0xf5, 0xff, 0xff, 0xff}) {
		t.Errorf("MMIO doorbell loop not found in % x", code)
	}
}

func TestToUserPatchesReturnAddress(t *testing.T) {
	a := New(0x10000)
	a.ToUser(0x20, 0x18, true)
	after := a.Here()
	code, err := a.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	// mov ebx, imm32 holding the return RIP precedes the final push rbx; iretq.
	n := len(code)
	if !bytes.Equal(code[n-3:], []byte{0x53, 0x48, 0xcf}) || code[n-8] != 0xbb {
		t.Fatalf("unexpected tail % x", code[n-8:])
	}
	rip := uint64(code[n-7]) | uint64(code[n-6])<<8 | uint64(code[n-5])<<16 | uint64(code[n-4])<<24
	if rip != a.Addr(after) {
		t.Errorf("return RIP %#x, want %#x", rip, a.Addr(after))
	}
	b := New(0x1_0000_0000)
	b.ToUser(0x20, 0x18, false)
	if _, err := b.Assemble(); err == nil {
		t.Error("return address above 4 GiB accepted")
	}
}
