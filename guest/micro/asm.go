package micro

import (
	"encoding/binary"
	"fmt"
)

// Reg is one of the eight legacy 64-bit general registers (no REX.R/B needed).
type Reg uint8

const (
	RAX Reg = iota
	RCX
	RDX
	RBX
	RSP
	RBP
	RSI
	RDI
)

// Label is a position in the code, resolved when the program is assembled.
type Label int

// Cond is a condition for Jcc.
type Cond uint8

const (
	Below      Cond = 0x2 // unsigned <
	AboveEqual Cond = 0x3 // unsigned >=
	Equal      Cond = 0x4
	NotEqual   Cond = 0x5
)

// Asm assembles a flat code blob that will be loaded at Base.
type Asm struct {
	Base   uint64
	buf    []byte
	labels []int // offset, -1 while unbound
	fixups []fixup
	// patches are 32-bit absolute label addresses (Base + offset) in immediates.
	patches []patch
	err     error
}

type patch struct {
	at    int
	label Label
}

type fixup struct {
	at    int // offset of the rel32
	label Label
}

// New starts a program to be loaded at base.
func New(base uint64) *Asm { return &Asm{Base: base} }

func (a *Asm) emit(b ...byte) { a.buf = append(a.buf, b...) }

func (a *Asm) imm32(v uint32) { a.buf = binary.LittleEndian.AppendUint32(a.buf, v) }

func (a *Asm) fail(format string, args ...any) {
	if a.err == nil {
		a.err = fmt.Errorf("micro: "+format, args...)
	}
}

// NewLabel makes an unbound label.
func (a *Asm) NewLabel() Label {
	a.labels = append(a.labels, -1)
	return Label(len(a.labels) - 1)
}

// Bind places l at the current position.
func (a *Asm) Bind(l Label) { a.labels[l] = len(a.buf) }

// Here makes a label bound at the current position.
func (a *Asm) Here() Label {
	l := a.NewLabel()
	a.Bind(l)
	return l
}

// Addr is the guest address of a bound label (valid after Bind).
func (a *Asm) Addr(l Label) uint64 { return a.Base + uint64(a.labels[l]) }

// Assemble resolves labels and returns the code.
func (a *Asm) Assemble() ([]byte, error) {
	if a.err != nil {
		return nil, a.err
	}
	out := append([]byte(nil), a.buf...)
	for _, f := range a.fixups {
		t := a.labels[f.label]
		if t < 0 {
			return nil, fmt.Errorf("micro: label %d never bound", f.label)
		}
		binary.LittleEndian.PutUint32(out[f.at:], uint32(int32(t-(f.at+4))))
	}
	for _, p := range a.patches {
		addr := a.Base + uint64(a.labels[p.label])
		if addr > 0xffffffff {
			return nil, fmt.Errorf("micro: label address %#x does not fit an imm32", addr)
		}
		binary.LittleEndian.PutUint32(out[p.at:], uint32(addr))
	}
	return out, nil
}

// modrm encodes a [base+disp] operand with reg field.
func (a *Asm) modrm(reg byte, base Reg, disp int32) {
	switch {
	case base == RSP:
		a.fail("RSP as a base needs a SIB byte; not supported")
	case disp == 0 && base != RBP:
		a.emit(reg<<3 | byte(base))
	case disp >= -128 && disp <= 127:
		a.emit(0x40|reg<<3|byte(base), byte(int8(disp)))
	default:
		a.emit(0x80 | reg<<3 | byte(base))
		a.imm32(uint32(disp))
	}
}

// MovImm loads a 64-bit immediate (movabs; mov r32 when it fits, zero-extending).
func (a *Asm) MovImm(r Reg, v uint64) {
	if v <= 0xffffffff {
		a.emit(0xb8 + byte(r))
		a.imm32(uint32(v))
		return
	}
	a.emit(0x48, 0xb8+byte(r))
	a.buf = binary.LittleEndian.AppendUint64(a.buf, v)
}

// Mov copies src to dst (64-bit).
func (a *Asm) Mov(dst, src Reg) { a.emit(0x48, 0x89, 0xc0|byte(src)<<3|byte(dst)) }

// Store32 is mov dword [base+disp], src.
func (a *Asm) Store32(base Reg, disp int32, src Reg) {
	a.emit(0x89)
	a.modrm(byte(src), base, disp)
}

// Store64 is mov qword [base+disp], src.
func (a *Asm) Store64(base Reg, disp int32, src Reg) {
	a.emit(0x48, 0x89)
	a.modrm(byte(src), base, disp)
}

// Load32 is mov dst32, dword [base+disp] (zero-extends).
func (a *Asm) Load32(dst, base Reg, disp int32) {
	a.emit(0x8b)
	a.modrm(byte(dst), base, disp)
}

// Load64 is mov dst, qword [base+disp].
func (a *Asm) Load64(dst, base Reg, disp int32) {
	a.emit(0x48, 0x8b)
	a.modrm(byte(dst), base, disp)
}

// LockInc64 is lock inc qword [base+disp].
func (a *Asm) LockInc64(base Reg, disp int32) {
	a.emit(0xf0, 0x48, 0xff)
	a.modrm(0, base, disp)
}

// Inc and Dec are 64-bit register increment and decrement.
func (a *Asm) Inc(r Reg) { a.emit(0x48, 0xff, 0xc0|byte(r)) }
func (a *Asm) Dec(r Reg) { a.emit(0x48, 0xff, 0xc8|byte(r)) }

// AddImm is add r, imm (sign-extended; the imm8 form when it fits, as GNU as does).
func (a *Asm) AddImm(r Reg, v int32) {
	if v >= -128 && v <= 127 {
		a.emit(0x48, 0x83, 0xc0|byte(r), byte(int8(v)))
		return
	}
	a.emit(0x48, 0x81, 0xc0|byte(r))
	a.imm32(uint32(v))
}

// Cmp is cmp x, y (flags from x - y).
func (a *Asm) Cmp(x, y Reg) { a.emit(0x48, 0x39, 0xc0|byte(y)<<3|byte(x)) }

// Jmp jumps to l.
func (a *Asm) Jmp(l Label) {
	a.emit(0xe9)
	a.fixups = append(a.fixups, fixup{len(a.buf), l})
	a.imm32(0)
}

// J jumps to l if c holds.
func (a *Asm) J(c Cond, l Label) {
	a.emit(0x0f, 0x80|byte(c))
	a.fixups = append(a.fixups, fixup{len(a.buf), l})
	a.imm32(0)
}

// Out8, Out16 and Out32 write AL, AX or EAX to port DX.
func (a *Asm) Out8()  { a.emit(0xee) }
func (a *Asm) Out16() { a.emit(0x66, 0xef) }
func (a *Asm) Out32() { a.emit(0xef) }

// In8, In16 and In32 read port DX into AL, AX or EAX.
func (a *Asm) In8()  { a.emit(0xec) }
func (a *Asm) In16() { a.emit(0x66, 0xed) }
func (a *Asm) In32() { a.emit(0xed) }

// Push and Pop a 64-bit register.
func (a *Asm) Push(r Reg) { a.emit(0x50 + byte(r)) }
func (a *Asm) Pop(r Reg)  { a.emit(0x58 + byte(r)) }

// Int raises software interrupt n (the gate must have DPL 3 when called at CPL3).
func (a *Asm) Int(n uint8) { a.emit(0xcd, n) }

// Single-byte and fixed instructions.
func (a *Asm) Hlt()   { a.emit(0xf4) }
func (a *Asm) Sti()   { a.emit(0xfb) }
func (a *Asm) Cli()   { a.emit(0xfa) }
func (a *Asm) Pause() { a.emit(0xf3, 0x90) }
func (a *Asm) Iretq() { a.emit(0x48, 0xcf) }

// 16-bit ring indices, index arithmetic and the store-load fence, first used by
// VirtqTX; virtq_test.go checks them against GNU as.

// Store16 is mov word [base+disp], src16.
func (a *Asm) Store16(base Reg, disp int32, src Reg) {
	a.emit(0x66, 0x89)
	a.modrm(byte(src), base, disp)
}

// Load16 is movzx dst32, word [base+disp] (zero-extends to 64 bits).
func (a *Asm) Load16(dst, base Reg, disp int32) {
	a.emit(0x0f, 0xb7)
	a.modrm(byte(dst), base, disp)
}

// Sub is sub dst, src (64-bit).
func (a *Asm) Sub(dst, src Reg) { a.emit(0x48, 0x29, 0xc0|byte(src)<<3|byte(dst)) }

// Add is add dst, src (64-bit).
func (a *Asm) Add(dst, src Reg) { a.emit(0x48, 0x01, 0xc0|byte(src)<<3|byte(dst)) }

// AndImm32 is and r32, imm32: the 32-bit form zero-extends, so it also clears the
// upper half (a 16-bit ring index is AndImm32(r, 0xffff)). Values below 0x80 use the
// sign-extended imm8 form.
func (a *Asm) AndImm32(r Reg, v uint32) {
	if v < 0x80 {
		a.emit(0x83, 0xe0|byte(r), byte(v)) // imm8 form, as GNU as picks
		return
	}
	a.emit(0x81, 0xe0|byte(r))
	a.imm32(v)
}

// Mfence orders earlier stores before later loads (x86 reorders only that pair).
func (a *Asm) Mfence() { a.emit(0x0f, 0xae, 0xf0) }

// AddMem64 is add qword [base+disp], src (first used by the RX programs' byte
// counters; rx_test.go checks it against GNU as).
func (a *Asm) AddMem64(base Reg, disp int32, src Reg) {
	a.emit(0x48, 0x01)
	a.modrm(byte(src), base, disp)
}

// CmpMem32Imm is cmp dword [base+disp], imm32 (the imm8 form when it fits, as GNU
// as picks): a frame's magic word checked in place.
func (a *Asm) CmpMem32Imm(base Reg, disp int32, v uint32) {
	if int32(v) >= -128 && int32(v) <= 127 {
		a.emit(0x83)
		a.modrm(7, base, disp)
		a.emit(byte(int8(v)))
		return
	}
	a.emit(0x81)
	a.modrm(7, base, disp)
	a.imm32(v)
}

// CmpImm is cmp r, imm (64-bit, sign-extended imm; the imm8 form when it fits).
func (a *Asm) CmpImm(r Reg, v int32) {
	if v >= -128 && v <= 127 {
		a.emit(0x48, 0x83, 0xf8|byte(r), byte(int8(v)))
		return
	}
	a.emit(0x48, 0x81, 0xf8|byte(r))
	a.imm32(uint32(v))
}
