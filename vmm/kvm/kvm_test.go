package kvm

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func openOrSkip(t testing.TB) *System {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("no usable KVM: %v", err)
	}
	s, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Long-mode test guest layout (all in the first 2 MiB, identity-mapped by one
// large page).
const (
	tgPML4 = 0x1000
	tgPDPT = 0x2000
	tgPD   = 0x3000
	tgMMIO = 0x200000 // second 2 MiB page, mapped but not RAM
	tgGDT  = 0x500
	tgCode = 0x10000
	tgMem  = 2 << 20
)

// longModeGuest creates a VM with tgMem bytes of RAM holding code at tgCode, and
// one vCPU in 64-bit mode at CPL0 about to execute it.
func longModeGuest(t testing.TB, s *System, code []byte) (*VM, *VCPU, []byte) {
	t.Helper()
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	mem, err := unix.Mmap(-1, 0, tgMem, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	if _, err := vm.AddMemory(0, mem, 0); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	le.PutUint64(mem[tgPML4:], tgPDPT|7)
	le.PutUint64(mem[tgPDPT:], tgPD|7)
	le.PutUint64(mem[tgPD:], 0|0x87) // 2 MiB page: P, RW, U, PS
	le.PutUint64(mem[tgPD+8:], tgMMIO|0x87)
	le.PutUint64(mem[tgGDT+8:], 0x00af9b000000ffff)  // 64-bit code, DPL0
	le.PutUint64(mem[tgGDT+16:], 0x00cf93000000ffff) // data
	copy(mem[tgCode:], code)

	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sr, err := c.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	cs := Segment{Base: 0, Limit: 0xffffffff, Selector: 8, Type: 11, Present: 1, S: 1, L: 1, G: 1}
	ds := Segment{Base: 0, Limit: 0xffffffff, Selector: 16, Type: 3, Present: 1, S: 1, DB: 1, G: 1}
	sr.CS = cs
	sr.DS, sr.ES, sr.FS, sr.GS, sr.SS = ds, ds, ds, ds, ds
	sr.GDT = DTable{Base: tgGDT, Limit: 23}
	sr.CR3 = tgPML4
	sr.CR4 = 1 << 5              // PAE
	sr.CR0 = 1<<0 | 1<<4 | 1<<31 // PE, ET, PG
	sr.EFER = 1<<8 | 1<<10       // LME, LMA
	if err := c.SetSregs(sr); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(Regs{RIP: tgCode, RSP: 0x8000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	return vm, c, mem
}

func TestOpenAndCapabilities(t *testing.T) {
	s := openOrSkip(t)
	if s.VCPUMmapSize() < runPageMinSize {
		t.Errorf("mmap size %d", s.VCPUMmapSize())
	}
	n, err := s.CheckExtension(CapUserMemory)
	if err != nil || n == 0 {
		t.Errorf("KVM_CAP_USER_MEMORY = %d, %v", n, err)
	}
	cpuid, err := s.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	var has0, has1 bool
	for _, e := range cpuid {
		has0 = has0 || e.Function == 0
		has1 = has1 || e.Function == 1
	}
	if !has0 || !has1 {
		t.Errorf("supported CPUID lacks leaf 0 or 1: %d entries", len(cpuid))
	}
}

func TestMemorySlots(t *testing.T) {
	s := openOrSkip(t)
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	mem, err := unix.Mmap(-1, 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	a, err := vm.AddMemory(0x100000, mem, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Overlapping slots are refused by KVM.
	if _, err := vm.AddMemory(0x108000, mem, 0); err == nil {
		t.Error("overlapping slot accepted")
	}
	if err := vm.MoveMemory(a, 0x200000); err != nil {
		t.Fatal(err)
	}
	// After the move the old range is free again.
	b, err := vm.AddMemory(0x100000, mem[:1<<12], 0)
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Errorf("two live slots share number %d", a)
	}
	if err := vm.DeleteMemory(a); err != nil {
		t.Fatal(err)
	}
	if err := vm.DeleteMemory(a); err == nil {
		t.Error("double delete accepted")
	}
	if err := vm.SetUserMemoryRegion(9, 0, 1<<20, mem, 0); err == nil {
		t.Error("slot larger than its host mapping accepted")
	}
}

// TestRunOutHLT runs: mov dx,0x3f8; mov al,'A'; out dx,al; mov eax,0x12345678;
// out dx,eax; hlt. It checks the PIO exits' data and the HLT exit.
func TestRunOutHLT(t *testing.T) {
	s := openOrSkip(t)
	code := []byte{
		0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
		0xb0, 'A', // mov al, 'A'
		0xee,                         // out dx, al
		0xb8, 0x78, 0x56, 0x34, 0x12, // mov eax, 0x12345678
		0xef, // out dx, eax
		0xf4, // hlt
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, c, _ := longModeGuest(t, s, code)
	start := time.Now()
	e, err := c.Run()
	first := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if e.Reason != ExitIO || !e.IO.Write || e.IO.Port != 0x3f8 || e.IO.Size != 1 || e.IO.Count != 1 || string(e.IO.Data) != "A" {
		t.Fatalf("first exit %v data %q, want OUT 0x3f8 'A'", e, e.IO.Data)
	}
	t.Logf("first KVM_RUN to OUT exit: %v", first)
	e, err = c.Run()
	if err != nil {
		t.Fatal(err)
	}
	if e.Reason != ExitIO || e.IO.Size != 4 || binary.LittleEndian.Uint32(e.IO.Data) != 0x12345678 {
		t.Fatalf("second exit %v data %x, want 4-byte OUT 0x12345678", e, e.IO.Data)
	}
	e, err = c.Run()
	if err != nil {
		t.Fatal(err)
	}
	if e.Reason != ExitHLT {
		t.Fatalf("third exit %v, want HLT", e)
	}
	r, err := c.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if r.RIP != tgCode+uint64(len(code)) {
		t.Errorf("RIP after HLT = %#x, want %#x", r.RIP, tgCode+uint64(len(code)))
	}
}

// TestRunINAndMMIO checks that data the VMM supplies for an IN and an MMIO read reach
// guest registers, and that an MMIO write outside RAM exits with its data.
func TestRunINAndMMIO(t *testing.T) {
	s := openOrSkip(t)
	code := []byte{
		0x66, 0xba, 0x71, 0x00, // mov dx, 0x71
		0xec,       // in al, dx
		0x88, 0xc3, // mov bl, al
		0xb9, 0, 0, 0x20, 0, // mov ecx, 0x200000
		0x8b, 0x11, // mov edx, [rcx]
		0x89, 0x59, 0x08, // mov [rcx+8], ebx
		0xf4, // hlt
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, c, _ := longModeGuest(t, s, code)
	e, err := c.Run()
	if err != nil {
		t.Fatal(err)
	}
	if e.Reason != ExitIO || e.IO.Write || e.IO.Port != 0x71 || len(e.IO.Data) != 1 {
		t.Fatalf("exit %v, want IN 0x71", e)
	}
	e.IO.Data[0] = 0x5a
	if e, err = c.Run(); err != nil {
		t.Fatal(err)
	}
	if e.Reason != ExitMMIO || e.MMIO.Write || e.MMIO.Addr != tgMMIO || len(e.MMIO.Data) != 4 {
		t.Fatalf("exit %v, want 4-byte MMIO read at tgMMIO", e)
	}
	binary.LittleEndian.PutUint32(e.MMIO.Data, 0xcafef00d)
	if e, err = c.Run(); err != nil {
		t.Fatal(err)
	}
	if e.Reason != ExitMMIO || !e.MMIO.Write || e.MMIO.Addr != tgMMIO+8 || binary.LittleEndian.Uint32(e.MMIO.Data) != 0x5a {
		t.Fatalf("exit %v data %x, want MMIO write of 0x5a at tgMMIO+8", e, e.MMIO.Data)
	}
	if e, err = c.Run(); err != nil || e.Reason != ExitHLT {
		t.Fatalf("exit %v %v, want HLT", e, err)
	}
	r, err := c.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if r.RBX&0xff != 0x5a || r.RDX&0xffffffff != 0xcafef00d {
		t.Errorf("rbx %#x rdx %#x, want IN and MMIO read data", r.RBX, r.RDX)
	}
}

func TestImmediateExit(t *testing.T) {
	s := openOrSkip(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, c, _ := longModeGuest(t, s, []byte{0xf4})
	c.SetImmediateExit(true)
	e, err := c.Run()
	if err != nil || e.Reason != ExitIntr {
		t.Fatalf("run with immediate_exit: %v %v, want INTR", e, err)
	}
	r, err := c.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if r.RIP != tgCode {
		t.Errorf("guest ran with immediate_exit set: RIP %#x", r.RIP)
	}
	c.SetImmediateExit(false)
	if e, err = c.Run(); err != nil || e.Reason != ExitHLT {
		t.Fatalf("run after clearing immediate_exit: %v %v, want HLT", e, err)
	}
}

// TestKick stops a vCPU spinning in the guest from another goroutine.
func TestKick(t *testing.T) {
	s := openOrSkip(t)
	type result struct {
		e   Exit
		err error
	}
	vcpu := make(chan *VCPU)
	done := make(chan result)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		_, c, _ := longModeGuest(t, s, []byte{0xeb, 0xfe}) // jmp .
		c.BindThread()
		vcpu <- c
		for {
			e, err := c.Run()
			if err != nil || e.Reason != ExitIntr {
				done <- result{e, err}
				return
			}
			// A stray SIGURG (Go preemption) may end a run early; only a
			// stop request ends the loop.
			if c.run[runImmediateExit] != 0 {
				done <- result{e, err}
				return
			}
		}
	}()
	c := <-vcpu
	c.SetImmediateExit(true)
	if err := c.Kick(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.e.Reason != ExitIntr {
			t.Fatalf("kicked run: %v %v, want INTR", r.e, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("vCPU not stopped 10 s after Kick")
	}
}

func TestIRQChipAndPIT(t *testing.T) {
	s := openOrSkip(t)
	if n, _ := s.CheckExtension(CapIRQChip); n == 0 {
		t.Skip("KVM without in-kernel irqchip")
	}
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT2(PITSpeakerDummy); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQLine(4, true); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQLine(4, false); err != nil {
		t.Fatal(err)
	}
	// A second irqchip is refused.
	if err := vm.CreateIRQChip(); err == nil {
		t.Error("second KVM_CREATE_IRQCHIP accepted")
	}
}

func TestCPUIDRoundTrip(t *testing.T) {
	s := openOrSkip(t)
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sup, err := s.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	for i := range sup {
		if sup[i].Function == 1 {
			sup[i].EBX = sup[i].EBX&0x00ffffff | 7<<24
		}
	}
	if err := c.SetCPUID(sup); err != nil {
		t.Fatal(err)
	}
	got, err := c.CPUID()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range got {
		if e.Function == 1 {
			found = true
			if e.EBX>>24 != 7 {
				t.Errorf("leaf 1 EBX %#x, want APIC ID 7", e.EBX)
			}
		}
	}
	if !found {
		t.Error("leaf 1 missing after SET_CPUID2")
	}
}

func BenchmarkPIOExit(b *testing.B) {
	s := openOrSkip(b)
	// loop: out dx, al; jmp loop
	code := []byte{0x66, 0xba, 0x80, 0x00, 0xee, 0xeb, 0xfd}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, c, _ := longModeGuest(b, s, code)
	for b.Loop() {
		e, err := c.Run()
		if err != nil || (e.Reason != ExitIO && e.Reason != ExitIntr) {
			b.Fatalf("%v %v", e, err)
		}
	}
}
