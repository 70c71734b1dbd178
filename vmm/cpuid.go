package vmm

import "github.com/ptvmm/ptvmm/vmm/kvm"

// CPUID bits we set.
const (
	cpuidHypervisor = 1 << 31 // leaf 1 ECX: running under a hypervisor
)

// vcpuCPUID derives vCPU id's CPUID table from what KVM supports: its APIC ID in leaf
// 1 EBX[31:24], the x2APIC ID in every sub-leaf of the topology leaves 0xB and 0x1F,
// and AMD's extended APIC ID in 0x8000001E; the hypervisor bit is set so the guest
// looks for KVM's paravirtual leaves at 0x40000000.
func vcpuCPUID(supported []kvm.CPUIDEntry, id int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, len(supported))
	copy(out, supported)
	for i := range out {
		e := &out[i]
		switch e.Function {
		case 1:
			e.EBX = e.EBX&0x00ffffff | uint32(id&0xff)<<24
			e.ECX |= cpuidHypervisor
		case 0xB, 0x1F:
			e.EDX = uint32(id)
		case 0x8000001E:
			e.EAX = uint32(id)
		}
	}
	return out
}
