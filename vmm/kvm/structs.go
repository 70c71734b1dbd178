package kvm

// Regs is struct kvm_regs (144 bytes).
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment is struct kvm_segment (24 bytes).
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable (16 bytes): a GDT or IDT register.
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs (312 bytes).
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// userspaceMemoryRegion is struct kvm_userspace_memory_region (32 bytes).
type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// pitConfig is struct kvm_pit_config (64 bytes).
type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

// irqLevel is struct kvm_irq_level (8 bytes).
type irqLevel struct {
	IRQ   uint32
	Level uint32
}

// CPUIDEntry is struct kvm_cpuid_entry2 without its padding.
type CPUIDEntry struct {
	Function, Index uint32
	Flags           uint32 // CPUIDFlagSignificantIndex...
	EAX, EBX        uint32
	ECX, EDX        uint32
}

// CPUIDFlagSignificantIndex marks a leaf whose sub-leaf (ECX) selects the output.
const CPUIDFlagSignificantIndex = 1 << 0

// Sizes of the encoded forms in linux/kvm.h.
const (
	cpuidEntrySize  = 40 // kvm_cpuid_entry2
	cpuidHeaderSize = 8  // kvm_cpuid2: nent, padding
	msrEntrySize    = 16 // kvm_msr_entry: index, reserved, data
	msrsHeaderSize  = 8  // kvm_msrs: nmsrs, pad
)

// MSR is one model-specific register value.
type MSR struct {
	Index uint32
	Data  uint64
}

// MP states for SetMPState (KVM_MP_STATE_*).
const (
	MPStateRunnable      = 0
	MPStateUninitialized = 1
	MPStateInitReceived  = 2
	MPStateHalted        = 3
)
