package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/kvm"
)

func TestCpuinfoHasVirt(t *testing.T) {
	cases := []struct {
		name, text string
		want       bool
	}{
		{"amd", "processor\t: 0\nflags\t\t: fpu vme svm lm\n", true},
		{"intel", "flags\t\t: fpu vmx ept\nflags : fpu\n", true},
		{"pvm", "processor\t: 0\nflags\t\t: fpu vme de pse hypervisor lm\n", false},
		{"substring is not a flag", "flags\t: svmx vmxe\n", false},
		{"no flags", "processor: 0\n", false},
	}
	for _, c := range cases {
		got, err := cpuinfoHasVirt(strings.NewReader(c.text))
		if err != nil || got != c.want {
			t.Errorf("%s: %v %v, want %v", c.name, got, err, c.want)
		}
	}
}

func TestVCPUCPUID(t *testing.T) {
	sup := []kvm.CPUIDEntry{
		{Function: 1, EBX: 0xAB000800, ECX: 0x1},
		{Function: 0xB, Index: 0, EDX: 0},
		{Function: 0xB, Index: 1, EDX: 0},
		{Function: 0x8000001E, EAX: 0},
		{Function: 7, EBX: 0x1234},
	}
	got := vcpuCPUID(sup, 5)
	if got[0].EBX != 0x05000800 || got[0].ECX != 0x80000001 {
		t.Errorf("leaf 1: EBX %#x ECX %#x", got[0].EBX, got[0].ECX)
	}
	if got[1].EDX != 5 || got[2].EDX != 5 || got[3].EAX != 5 {
		t.Errorf("topology leaves: %+v", got[1:4])
	}
	if got[4] != sup[4] {
		t.Error("unrelated leaf changed")
	}
	if sup[0].EBX != 0xAB000800 {
		t.Error("supported table modified in place")
	}
}

func TestApplyEntry(t *testing.T) {
	e := &boot.Entry{
		RIP: 0x100200, RSP: 0x7000, RSI: 0x7000, RFLAGS: 0,
		CR0: boot.CR0PE | boot.CR0PG, CR3: 0x9000, CR4: boot.CR4PAE, EFER: boot.EFERLME | boot.EFERLMA,
		CS:      boot.Segment{Limit: 0xffffffff, Selector: 0x10, Type: 11, Present: 1, S: 1, L: 1, G: 1},
		LDT:     boot.Segment{},
		GDTBase: 0x500, GDTLimit: 0x27,
	}
	sr := kvm.Sregs{APICBase: 0xfee00900}
	r := applyEntry(e, &sr)
	if r.RIP != 0x100200 || r.RSI != 0x7000 || r.RFLAGS != boot.RFLAGSReserved {
		t.Errorf("regs %+v", r)
	}
	if sr.CS.Selector != 0x10 || sr.CS.L != 1 || sr.CS.Unusable != 0 || sr.LDT.Unusable != 1 {
		t.Errorf("segments CS %+v LDT %+v", sr.CS, sr.LDT)
	}
	if sr.CR3 != 0x9000 || sr.EFER != boot.EFERLME|boot.EFERLMA || sr.GDT.Base != 0x500 || sr.GDT.Limit != 0x27 {
		t.Errorf("sregs %+v", sr)
	}
	if sr.APICBase != 0xfee00900 {
		t.Error("APIC base not kept")
	}
}

func TestConfigValidation(t *testing.T) {
	bad := []Config{
		{},                                  // no kernel
		{KernelImage: []byte{1}, CPUs: -1},  // CPUs
		{KernelImage: []byte{1}, CPUs: 300}, // CPUs
		{KernelImage: []byte{1}, MemSize: 1 << 20},
		{KernelImage: []byte{1}, MemSize: 64<<20 + 1},
		{Micro: &Micro{}, KernelImage: []byte{1}},
		{Micro: &Micro{}, MemSize: 4096},
	}
	for i, c := range bad {
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("config %d accepted: %+v", i, c)
		}
	}
	c, err := (&Config{KernelImage: []byte{1}}).withDefaults()
	if err != nil || c.CPUs != 1 || c.MemSize != DefaultMemSize || c.Console == nil || c.Log == nil {
		t.Errorf("defaults: %+v %v", c, err)
	}
}

func TestAgentWatcher(t *testing.T) {
	var out bytes.Buffer
	w := NewAgentWatcher(&out)
	select {
	case <-w.Ready():
		t.Fatal("ready before any output")
	default:
	}
	input := "[    1.0] booting\r\nptvmm-agent: re" + "ady\r\nhello\nptvmm-agent: exit status 42\r\n"
	// Feed in awkward pieces: the watcher must join lines across writes.
	for i := 0; i < len(input); i += 3 {
		if _, err := w.Write([]byte(input[i:min(i+3, len(input))])); err != nil {
			t.Fatal(err)
		}
	}
	if out.String() != input {
		t.Errorf("pass-through changed the stream: %q", out.String())
	}
	select {
	case <-w.Ready():
	default:
		t.Error("ready line not seen")
	}
	if n, ok := w.ExitStatus(); !ok || n != 42 {
		t.Errorf("exit status %d %v, want 42", n, ok)
	}
	// A later status line wins; a bogus one is ignored.
	w.Write([]byte("ptvmm-agent: exit status 7\nptvmm-agent: exit status x\n"))
	if n, _ := w.ExitStatus(); n != 7 {
		t.Errorf("exit status %d, want 7", n)
	}
}

func TestAgentWatcherPanic(t *testing.T) {
	w := NewAgentWatcher(nil)
	if _, ok := w.Panic(); ok {
		t.Fatal("panic before any output")
	}
	w.Write([]byte("[    2.5] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"))
	w.Write([]byte("[    2.6] Kernel panic - not syncing: second\r\n"))
	if msg, ok := w.Panic(); !ok || msg != "VFS: Unable to mount root fs" {
		t.Errorf("panic %q %v", msg, ok)
	}
	if _, ok := w.ExitStatus(); ok {
		t.Error("panic line taken for an exit status")
	}
}

func TestAgentWatcherLongLine(t *testing.T) {
	w := NewAgentWatcher(nil)
	w.Write(bytes.Repeat([]byte("x"), 100000))
	w.Write([]byte("ptvmm-agent: exit status 3\n"))
	if n, ok := w.ExitStatus(); !ok || n != 3 {
		t.Errorf("status after a long line: %d %v", n, ok)
	}
	if len(w.line) != 0 || cap(w.line) > 4*maxLine {
		t.Errorf("line buffer kept %d bytes (cap %d)", len(w.line), cap(w.line))
	}
}

func FuzzAgentWatcher(f *testing.F) {
	f.Add([]byte("ptvmm-agent: exit status 1\n"))
	f.Add([]byte("ptvmm-agent: ready\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		w := NewAgentWatcher(nil)
		w.Write(b)
		w.Write(b)
		if n, ok := w.ExitStatus(); ok && n < 0 {
			t.Fatalf("negative status %d", n)
		}
		if len(w.line) > maxLine {
			t.Fatalf("line buffer %d bytes", len(w.line))
		}
	})
}

// --- KVM tests with micro guests (CPL3, IOPL 3) ---

func kvmOrSkip(t *testing.T) {
	t.Helper()
	if err := kvm.Available(); err != nil {
		t.Skipf("no usable KVM: %v", err)
	}
}

// pioOpts starts micro guests at CPL0: on PVM, port I/O from CPL3 faults even with
// IOPL 3 (CPL0 code is emulated slowly there, but these guests are a few instructions).
var pioOpts = boot.MicroOptions{Kernel: true}

// Code fragments.
var (
	movDX3F8  = []byte{0x66, 0xba, 0xf8, 0x03} // mov dx, 0x3f8
	resetCode = []byte{0xb0, 0xfe, 0xe6, 0x64} // mov al, 0xfe; out 0x64, al
	spin      = []byte{0xeb, 0xfe}             // jmp .
)

func outString(s string) []byte {
	code := append([]byte(nil), movDX3F8...)
	for i := 0; i < len(s); i++ {
		code = append(code, 0xb0, s[i], 0xee) // mov al, c; out dx, al
	}
	return code
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// notifyWriter records console output and closes first on the first byte.
type notifyWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	once  sync.Once
	first chan struct{}
}

func newNotifyWriter() *notifyWriter { return &notifyWriter{first: make(chan struct{})} }

func (w *notifyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.once.Do(func() { close(w.first) })
	return w.buf.Write(p)
}

func (w *notifyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func newMicro(t *testing.T, code []byte, console *notifyWriter, cpus int) *VM {
	t.Helper()
	kvmOrSkip(t)
	v, err := New(Config{Micro: &Micro{Code: code, Options: pioOpts}, Console: console, CPUs: cpus})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func TestMicroConsoleAndReset(t *testing.T) {
	con := newNotifyWriter()
	v := newMicro(t, cat(outString("ok\n"), resetCode, spin), con, 2)
	if err := v.Run(context.Background()); err != nil {
		t.Fatalf("Run after guest reset: %v", err)
	}
	if con.String() != "ok\n" {
		t.Errorf("console %q", con.String())
	}
	tm := v.Timings()
	if tm.FirstEntry <= 0 || tm.FirstExit < tm.FirstEntry {
		t.Errorf("timings %+v", tm)
	}
	t.Logf("New start to first KVM_RUN %v, first exit %v", tm.FirstEntry, tm.FirstExit)
	if err := v.Run(context.Background()); !errors.Is(err, ErrAlreadyRun) {
		t.Errorf("second Run: %v", err)
	}
}

func TestMicroAgentExitStatus(t *testing.T) {
	con := newNotifyWriter()
	w := NewAgentWatcher(con)
	kvmOrSkip(t)
	v, err := New(Config{Micro: &Micro{Code: cat(outString("ptvmm-agent: exit status 3\r\n"), resetCode, spin), Options: pioOpts}, Console: w})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, ok := w.ExitStatus(); !ok || n != 3 {
		t.Errorf("exit status %d %v, want 3 (console %q)", n, ok, con.String())
	}
}

func TestMicroStopWhileRunning(t *testing.T) {
	con := newNotifyWriter()
	v := newMicro(t, cat(outString("r"), spin), con, 2)
	errc := make(chan error)
	go func() { errc <- v.Run(context.Background()) }()
	select {
	case <-con.first: // the guest runs
	case err := <-errc:
		t.Fatalf("Run ended before Stop: %v", err)
	}
	v.Stop()
	v.Stop() // idempotent
	if err := <-errc; err != nil {
		t.Errorf("Run after Stop: %v", err)
	}
}

func TestMicroContextCancel(t *testing.T) {
	con := newNotifyWriter()
	v := newMicro(t, cat(outString("r"), spin), con, 1)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { errc <- v.Run(ctx) }()
	select {
	case <-con.first:
	case err := <-errc:
		t.Fatalf("Run ended before cancel: %v", err)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Run after cancel: %v, want context.Canceled", err)
	}
}

func TestMicroStopBeforeRun(t *testing.T) {
	v := newMicro(t, spin, newNotifyWriter(), 1)
	v.Stop()
	if err := v.Run(context.Background()); err != nil {
		t.Errorf("Run after early Stop: %v", err)
	}
}

func TestMicroTripleFaultIsCrash(t *testing.T) {
	// ud2 with no IDT: #UD cannot be delivered -> double fault -> triple fault.
	v := newMicro(t, []byte{0x0f, 0x0b}, newNotifyWriter(), 1)
	err := v.Run(context.Background())
	// On AMD-V, KVM re-initialises the vCPU when it intercepts SHUTDOWN, so the
	// RIP read afterwards is the reset vector rather than the faulting one.
	want := "RIP 0x10000"
	if cpuFlag("svm") {
		want = "RIP 0xfff0"
	}
	if err == nil || !strings.Contains(err.Error(), "triple fault") || !strings.Contains(err.Error(), want) {
		t.Errorf("Run = %v, want a triple fault with %s", err, want)
	}
}

func TestMicroUARTInputEcho(t *testing.T) {
	code := []byte{
		0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (LSR)
		0xec,       // in al, dx
		0xa8, 0x01, // test al, 1
		0x74, 0xfb, // jz back to in
		0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
		0xec,       // in al, dx
		0xfe, 0xc0, // inc al
		0xee, // out dx, al
	}
	code = cat(code, resetCode, spin)
	con := newNotifyWriter()
	kvmOrSkip(t)
	v, err := New(Config{Micro: &Micro{Code: code, Options: pioOpts}, Console: con, Input: strings.NewReader("a")})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if con.String() != "b" {
		t.Errorf("echo %q, want \"b\"", con.String())
	}
}

func TestLinuxRefusedWithoutHardwareVirt(t *testing.T) {
	kvmOrSkip(t)
	hw, err := HardwareVirt()
	if err != nil {
		t.Skip(err)
	}
	if hw {
		t.Skip("host has VT-x/AMD-V")
	}
	_, err = New(Config{KernelImage: []byte("not really a kernel")})
	if !errors.Is(err, ErrNoHardwareVirt) {
		t.Errorf("New = %v, want ErrNoHardwareVirt", err)
	}
	// Force gets past the check and fails on the kernel image instead.
	_, err = New(Config{KernelImage: []byte("not really a kernel"), Force: true})
	if err == nil || errors.Is(err, ErrNoHardwareVirt) {
		t.Errorf("forced New = %v, want a kernel error", err)
	}
}

func TestStopAfterClose(t *testing.T) {
	kvmOrSkip(t)
	v, err := New(Config{Micro: &Micro{Code: spin}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { v.Stop(); close(done) }()
	if err := v.Close(); err != nil {
		t.Error(err)
	}
	<-done
	v.Stop()
}

// TestMicroUARTInterrupts checks the UART's interrupt wiring end to end: IRQ 4 through
// KVM's IOAPIC (edge-triggered, as ISA IRQs are) to a guest handler. The guest enables
// the THRE interrupt (one interrupt), writes a byte (THR empty again: a new edge), then
// acknowledges and switches to the receive interrupt for the byte from Config.Input.
func TestMicroUARTInterrupts(t *testing.T) {
	const vector, counter = 0x40, boot.MicroDataAddr
	a := micro.New(boot.MicroCodeAddr)
	start := a.NewLabel()
	a.Jmp(start)
	h := a.CountingHandler(counter)
	a.Bind(start)
	outb := func(port uint16, v byte) {
		a.MovImm(micro.RDX, uint64(port))
		a.MovImm(micro.RAX, uint64(v))
		a.Out8()
	}
	// Mask both 8259s: KVM wires ISA IRQs to the PIC too, and the boot CPU's LINT0
	// starts in ExtINT mode, so an unprogrammed PIC would deliver vector 4.
	outb(0x21, 0xff)
	outb(0xa1, 0xff)
	a.EnableLAPIC()
	a.IOAPICRoute(irqCOM1, vector, false)
	outb(portCOM1+1, 0x02) // IER: THR empty
	a.SpinUntil(counter, 1)
	outb(portCOM1, 'A')
	a.SpinUntil(counter, 2)
	// Acknowledge THR empty by reading IIR, as a driver's handler would: the line
	// drops, so enabling the receive interrupt (data is waiting) is a fresh edge.
	a.MovImm(micro.RDX, portCOM1+2)
	a.In8()
	outb(portCOM1+1, 0x01) // IER: received data only
	a.SpinUntil(counter, 3)
	outb(0x64, 0xfe)
	a.Halt()
	code, err := a.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	kvmOrSkip(t)
	con := newNotifyWriter()
	v, err := New(Config{
		Micro:   &Micro{Code: code, Options: boot.MicroOptions{Kernel: true, IF: true, IDT: map[uint8]uint64{vector: a.Addr(h)}}},
		Console: con,
		Input:   strings.NewReader("z"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := v.Run(ctx); err != nil {
		n, _ := v.Memory().Read64(counter)
		t.Fatalf("Run: %v (guest counted %d interrupts)", err, n)
	}
	if n, _ := v.Memory().Read64(counter); n != 3 {
		t.Errorf("guest counted %d interrupts, want 3", n)
	}
	if con.String() != "A" {
		t.Errorf("console %q", con.String())
	}
}

func TestOnCloseRunsBeforeVMGoesAway(t *testing.T) {
	kvmOrSkip(t)
	v, err := New(Config{Micro: &Micro{Code: spin}})
	if err != nil {
		t.Fatal(err)
	}
	var order []int
	v.OnClose(func() error { order = append(order, 1); return nil })
	v.OnClose(func() error {
		order = append(order, 2)
		// The VM fd is still usable here.
		return v.KVM().IRQLine(irqCOM1, false)
	})
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if len(order) != 2 || order[0] != 2 || order[1] != 1 {
		t.Errorf("hooks ran in order %v, want [2 1]", order)
	}
}

// cpuFlag reports whether the host CPU lists flag in /proc/cpuinfo.
func cpuFlag(flag string) bool {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	ok, _ := cpuinfoHasFlag(f, flag)
	return ok
}

func TestVerdictForgivesTripleFaultAfterReset(t *testing.T) {
	crash := fmt.Errorf("vmm: vCPU 1: guest crashed: %w (KVM_EXIT_SHUTDOWN) at RIP 0xfff0", errTripleFault)
	other := errors.New("vmm: vCPU 0: guest crashed: KVM_EXIT_INTERNAL_ERROR")
	cases := []struct {
		name  string
		err   error
		reset bool
		want  error
	}{
		{"triple fault after a reset request is a shutdown", crash, true, nil},
		{"triple fault without one is a crash", crash, false, crash},
		{"other crashes stay crashes", other, true, other},
		{"clean stop", nil, false, nil},
	}
	for _, c := range cases {
		if got := verdict(c.err, c.reset); got != c.want {
			t.Errorf("%s: verdict = %v, want %v", c.name, got, c.want)
		}
	}
}
