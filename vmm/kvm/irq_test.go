package kvm

import (
	"encoding/binary"
	"reflect"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

func TestIRQLayouts(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"KVM_SET_GSI_ROUTING", kvmSetGSIRouting, 0x4008ae6a},
		{"KVM_IRQFD", kvmIRQFD, 0x4020ae76},
		{"KVM_IOEVENTFD", kvmIOEventFD, 0x4040ae79},
		{"KVM_SIGNAL_MSI", kvmSignalMSI, 0x4020aea5},
		{"sizeof kvm_ioeventfd", reflect.TypeFor[ioeventfdArgs]().Size(), 64},
		{"sizeof kvm_irqfd", reflect.TypeFor[irqfdArgs]().Size(), 32},
		{"sizeof kvm_msi", reflect.TypeFor[msiArgs]().Size(), 32},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	offs := func(typ reflect.Type, want map[string]uintptr) {
		for name, off := range want {
			f, ok := typ.FieldByName(name)
			if !ok || f.Offset != off {
				t.Errorf("%s.%s at %d, want %d", typ.Name(), name, f.Offset, off)
			}
		}
	}
	offs(reflect.TypeFor[ioeventfdArgs](), map[string]uintptr{"Datamatch": 0, "Addr": 8, "Len": 16, "FD": 20, "Flags": 24})
	offs(reflect.TypeFor[irqfdArgs](), map[string]uintptr{"FD": 0, "GSI": 4, "Flags": 8, "ResampleFD": 12})
	offs(reflect.TypeFor[msiArgs](), map[string]uintptr{"AddressLo": 0, "AddressHi": 4, "Data": 8, "Flags": 12, "DevID": 16})
}

func TestEncodeRouting(t *testing.T) {
	b := encodeRouting([]Route{
		{GSI: 5, Type: RouteIRQChip, Chip: IRQChipIOAPIC, Pin: 5},
		{GSI: 30, Type: RouteMSI, MSI: MSI{Addr: 0x1_fee0_1000, Data: 0x4041}},
	})
	le := binary.LittleEndian
	if len(b) != 8+2*48 || le.Uint32(b) != 2 || le.Uint32(b[4:]) != 0 {
		t.Fatalf("header: len %d nr %d", len(b), le.Uint32(b))
	}
	e0, e1 := b[8:], b[56:]
	if le.Uint32(e0) != 5 || le.Uint32(e0[4:]) != 1 || le.Uint32(e0[16:]) != 2 || le.Uint32(e0[20:]) != 5 {
		t.Errorf("irqchip entry % x", e0[:24])
	}
	if le.Uint32(e1) != 30 || le.Uint32(e1[4:]) != 2 || le.Uint32(e1[16:]) != 0xfee01000 || le.Uint32(e1[20:]) != 1 || le.Uint32(e1[24:]) != 0x4041 {
		t.Errorf("msi entry % x", e1[:28])
	}
	// 24 IOAPIC pins plus 16 PIC inputs.
	if n := len(DefaultIRQChipRoutes()); n != 40 {
		t.Errorf("default routes: %d entries", n)
	}
}

func TestIOEventArgsRejectBadInput(t *testing.T) {
	for _, e := range []IOEvent{
		{Addr: 0x80, Len: 3, PIO: true},
		{Addr: 0x80, Len: 0, PIO: true},
		{Addr: 0xd000_0000, Len: 0, DataMatch: true},
		{Addr: 0xd000_0000, Len: 16},
	} {
		if _, err := e.args(); err == nil {
			t.Errorf("%v accepted", e)
		}
	}
	a, err := IOEvent{Addr: 0x80, Len: 2, PIO: true, DataMatch: true, Data: 7, FD: 9}.args()
	if err != nil || a.Flags != ioeventfdPIO|ioeventfdDatamatch || a.Datamatch != 7 || a.FD != 9 || a.Len != 2 {
		t.Errorf("args %+v %v", a, err)
	}
}

func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func readEventfd(fd int) uint64 {
	var b [8]byte
	if _, err := unix.Read(fd, b[:]); err != nil {
		return 0
	}
	return binary.NativeEndian.Uint64(b[:])
}

// TestIOEventFDGuest: three OUTs to a port with an ioeventfd never reach the VMM; the
// eventfd counts them; the HLT after them is the first exit.
func TestIOEventFDGuest(t *testing.T) {
	s := openOrSkip(t)
	// mov dx,0x80; mov al,1; out dx,al x3; mov al,2; out dx,al; hlt
	code := []byte{0x66, 0xba, 0x80, 0x00, 0xb0, 0x01, 0xee, 0xee, 0xee, 0xb0, 0x02, 0xee, 0xf4}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	vm, c, _ := longModeGuest(t, s, code)
	fd := eventfd(t)
	ev := IOEvent{Addr: 0x80, Len: 1, PIO: true, DataMatch: true, Data: 1, FD: fd}
	if err := vm.AssignIOEventFD(ev); err != nil {
		t.Fatal(err)
	}
	// The non-matching write (al=2) exits.
	e, err := c.Run()
	if err != nil || e.Reason != ExitIO || e.IO.Port != 0x80 || e.IO.Data[0] != 2 {
		t.Fatalf("first exit %v %v, want the OUT of 2", e, err)
	}
	if n := readEventfd(fd); n != 3 {
		t.Errorf("eventfd counted %d writes, want 3", n)
	}
	if e, err := c.Run(); err != nil || e.Reason != ExitHLT {
		t.Fatalf("second exit %v %v, want HLT", e, err)
	}
	if err := vm.DeassignIOEventFD(ev); err != nil {
		t.Fatal(err)
	}
	if err := vm.DeassignIOEventFD(ev); err == nil {
		t.Error("second deassign succeeded")
	}
}

func TestIRQFDAndRouting(t *testing.T) {
	s := openOrSkip(t)
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	r := NewGSIRouting(vm, true)
	g, err := r.Alloc()
	if err != nil || g != IRQChipGSIs {
		t.Fatalf("alloc %d %v", g, err)
	}
	fd, rfd := eventfd(t), eventfd(t)
	if err := vm.AssignIRQFD(fd, g, -1); err != nil {
		t.Fatal(err)
	}
	if err := r.SetMSI(g, MSI{Addr: 0xfee0_0000, Data: 0x40}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetMSI(g+1, MSI{Addr: 0xfee0_0000}); err == nil {
		t.Error("route on an unallocated GSI accepted")
	}
	if err := vm.AssignIRQFD(fd, g, -1); err == nil {
		t.Error("same irqfd assigned twice")
	}
	if err := vm.DeassignIRQFD(fd, g); err != nil {
		t.Fatal(err)
	}
	// Level-triggered on an IOAPIC pin with a resample fd.
	if err := vm.AssignIRQFD(fd, 17, rfd); err != nil {
		t.Fatal(err)
	}
	if err := vm.DeassignIRQFD(fd, 17); err != nil {
		t.Fatal(err)
	}
	if err := r.Free(g); err != nil {
		t.Fatal(err)
	}
	if len(r.Routes()) != 40 {
		t.Errorf("%d routes after free", len(r.Routes()))
	}
	// With no vCPU there is no APIC to take it: KVM reports -1 (EPERM).
	if _, err := vm.SignalMSI(MSI{Addr: 0xfee0_0000, Data: 0x40}); err == nil {
		t.Error("SignalMSI with no vCPU succeeded")
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The vCPU's LAPIC is software-disabled at reset, so it is accepted but not
	// delivered (0); the guest tests cover delivery.
	if _, err := vm.SignalMSI(MSI{Addr: 0xfee0_0000, Data: 0x40}); err != nil {
		t.Errorf("SignalMSI to APIC 0: %v", err)
	}
}
