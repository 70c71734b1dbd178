package kvm

import "testing"

// Request numbers as the C preprocessor expands them from linux/kvm.h.
func TestIoctlNumbers(t *testing.T) {
	cases := []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_GET_API_VERSION", kvmGetAPIVersion, 0xae00},
		{"KVM_CREATE_VM", kvmCreateVM, 0xae01},
		{"KVM_CHECK_EXTENSION", kvmCheckExtension, 0xae03},
		{"KVM_GET_VCPU_MMAP_SIZE", kvmGetVCPUMmapSize, 0xae04},
		{"KVM_GET_SUPPORTED_CPUID", kvmGetSupportedCPUID, 0xc008ae05},
		{"KVM_SET_USER_MEMORY_REGION", kvmSetUserMemoryRegion, 0x4020ae46},
		{"KVM_CREATE_VCPU", kvmCreateVCPU, 0xae41},
		{"KVM_SET_TSS_ADDR", kvmSetTSSAddr, 0xae47},
		{"KVM_SET_IDENTITY_MAP_ADDR", kvmSetIdentityMapAddr, 0x4008ae48},
		{"KVM_CREATE_IRQCHIP", kvmCreateIRQChip, 0xae60},
		{"KVM_IRQ_LINE", kvmIRQLine, 0x4008ae61},
		{"KVM_CREATE_PIT2", kvmCreatePIT2, 0x4040ae77},
		{"KVM_RUN", kvmRun, 0xae80},
		{"KVM_GET_REGS", kvmGetRegs, 0x8090ae81},
		{"KVM_SET_REGS", kvmSetRegs, 0x4090ae82},
		{"KVM_GET_SREGS", kvmGetSregs, 0x8138ae83},
		{"KVM_SET_SREGS", kvmSetSregs, 0x4138ae84},
		{"KVM_GET_MSRS", kvmGetMSRs, 0xc008ae88},
		{"KVM_SET_MSRS", kvmSetMSRs, 0x4008ae89},
		{"KVM_SET_CPUID2", kvmSetCPUID2, 0x4008ae90},
		{"KVM_GET_CPUID2", kvmGetCPUID2, 0xc008ae91},
		{"KVM_GET_MP_STATE", kvmGetMPState, 0x8004ae98},
		{"KVM_SET_MP_STATE", kvmSetMPState, 0x4004ae99},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

// Offsets in struct kvm_run as offsetof reports them against linux/kvm.h (x86-64).
func TestRunOffsets(t *testing.T) {
	cases := []struct {
		name      string
		got, want int
	}{
		{"immediate_exit", runImmediateExit, 1},
		{"exit_reason", runExitReason, 8},
		{"if_flag", runIfFlag, 13},
		{"io.direction", ioDirection, 32},
		{"io.size", ioSize, 33},
		{"io.port", ioPort, 34},
		{"io.count", ioCount, 36},
		{"io.data_offset", ioDataOffset, 40},
		{"mmio.phys_addr", mmioPhysAddr, 32},
		{"mmio.data", mmioData, 40},
		{"mmio.len", mmioLen, 48},
		{"mmio.is_write", mmioIsWrite, 52},
		{"internal.suberror", internalSuberror, 32},
		{"internal.ndata", internalNData, 36},
		{"internal.data", internalData, 40},
		{"system_event.type", sysEventType, 32},
		{"system_event.ndata", sysEventNData, 36},
		{"system_event.data", sysEventData, 40},
		{"fail_entry.hardware_entry_failure_reason", failEntryReason, 32},
		{"fail_entry.cpu", failEntryCPU, 40},
		{"hw.hardware_exit_reason", hwExitReason, 32},
		{"sizeof(struct kvm_run)", runPageMinSize, 2352},
		{"sizeof(struct kvm_cpuid_entry2)", cpuidEntrySize, 40},
		{"sizeof(struct kvm_msr_entry)", msrEntrySize, 16},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("kvm_run %s = %d, want %d", c.name, c.got, c.want)
		}
	}
}
