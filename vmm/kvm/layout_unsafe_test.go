package kvm

import (
	"testing"
	"unsafe"
)

// Sizes and offsets from linux/kvm.h (x86-64), as printed by a C program using
// sizeof/offsetof against the UAPI headers.
func TestStructLayout(t *testing.T) {
	sizes := []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_userspace_memory_region", unsafe.Sizeof(userspaceMemoryRegion{}), 32},
		{"kvm_pit_config", unsafe.Sizeof(pitConfig{}), 64},
		{"kvm_irq_level", unsafe.Sizeof(irqLevel{}), 8},
	}
	for _, s := range sizes {
		if s.got != s.want {
			t.Errorf("sizeof %s = %d, want %d", s.name, s.got, s.want)
		}
	}
	var sr Sregs
	offs := []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_sregs.gdt", unsafe.Offsetof(sr.GDT), 192},
		{"kvm_sregs.idt", unsafe.Offsetof(sr.IDT), 208},
		{"kvm_sregs.cr0", unsafe.Offsetof(sr.CR0), 224},
		{"kvm_sregs.efer", unsafe.Offsetof(sr.EFER), 264},
		{"kvm_sregs.apic_base", unsafe.Offsetof(sr.APICBase), 272},
		{"kvm_sregs.interrupt_bitmap", unsafe.Offsetof(sr.InterruptBitmap), 280},
		{"kvm_segment.type", unsafe.Offsetof(sr.CS.Type), 14},
		{"kvm_segment.unusable", unsafe.Offsetof(sr.CS.Unusable), 22},
		{"kvm_dtable.limit", unsafe.Offsetof(sr.GDT.Limit), 8},
	}
	for _, o := range offs {
		if o.got != o.want {
			t.Errorf("offsetof %s = %d, want %d", o.name, o.got, o.want)
		}
	}
}
