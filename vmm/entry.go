package vmm

import (
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/kvm"
)

func kvmSegment(s boot.Segment) kvm.Segment {
	k := kvm.Segment{
		Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: s.Present, DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G,
	}
	if s.Present == 0 {
		k.Unusable = 1
	}
	return k
}

// applyEntry puts the boot CPU state e into KVM's register sets. Fields e does not
// name keep the values KVM gave them (sr) or start at zero (general registers).
func applyEntry(e *boot.Entry, sr *kvm.Sregs) kvm.Regs {
	sr.CS, sr.DS, sr.ES = kvmSegment(e.CS), kvmSegment(e.DS), kvmSegment(e.ES)
	sr.FS, sr.GS, sr.SS = kvmSegment(e.FS), kvmSegment(e.GS), kvmSegment(e.SS)
	sr.TR, sr.LDT = kvmSegment(e.TR), kvmSegment(e.LDT)
	sr.GDT = kvm.DTable{Base: e.GDTBase, Limit: e.GDTLimit}
	sr.IDT = kvm.DTable{Base: e.IDTBase, Limit: e.IDTLimit}
	sr.CR0, sr.CR3, sr.CR4, sr.EFER = e.CR0, e.CR3, e.CR4, e.EFER
	return kvm.Regs{RIP: e.RIP, RSP: e.RSP, RSI: e.RSI, RFLAGS: e.RFLAGS | boot.RFLAGSReserved}
}
