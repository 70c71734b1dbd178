package kvm

// ioctl request encoding (asm-generic/ioctl.h, used by x86).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	kvmio = 0xAE
)

func ioc(dir, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | kvmio<<8 | nr
}

func io(nr uintptr) uintptr         { return ioc(iocNone, nr, 0) }
func iow(nr, size uintptr) uintptr  { return ioc(iocWrite, nr, size) }
func ior(nr, size uintptr) uintptr  { return ioc(iocRead, nr, size) }
func iowr(nr, size uintptr) uintptr { return ioc(iocRead|iocWrite, nr, size) }

// Requests used by this package; values are checked against linux/kvm.h in tests.
var (
	kvmGetAPIVersion       = io(0x00)
	kvmCreateVM            = io(0x01)
	kvmCheckExtension      = io(0x03)
	kvmGetVCPUMmapSize     = io(0x04)
	kvmGetSupportedCPUID   = iowr(0x05, 8)
	kvmCreateVCPU          = io(0x41)
	kvmSetUserMemoryRegion = iow(0x46, 32)
	kvmSetTSSAddr          = io(0x47)
	kvmSetIdentityMapAddr  = iow(0x48, 8)
	kvmCreateIRQChip       = io(0x60)
	kvmIRQLine             = iow(0x61, 8)
	kvmCreatePIT2          = iow(0x77, 64)
	kvmRun                 = io(0x80)
	kvmGetRegs             = ior(0x81, 144)
	kvmSetRegs             = iow(0x82, 144)
	kvmGetSregs            = ior(0x83, 312)
	kvmSetSregs            = iow(0x84, 312)
	kvmGetMSRs             = iowr(0x88, 8)
	kvmSetMSRs             = iow(0x89, 8)
	kvmSetCPUID2           = iow(0x90, 8)
	kvmGetCPUID2           = iowr(0x91, 8)
	kvmGetMPState          = ior(0x98, 4)
	kvmSetMPState          = iow(0x99, 4)
)

// APIVersion is the only KVM API version there has ever been (KVM_API_VERSION).
const APIVersion = 12

// Capabilities for CheckExtension (KVM_CAP_*).
const (
	CapIRQChip            = 0
	CapUserMemory         = 3
	CapSetTSSAddr         = 4
	CapExtCPUID           = 7
	CapNrVCPUs            = 9
	CapNrMemslots         = 10
	CapIRQFD              = 32
	CapPIT2               = 33
	CapPITState2          = 35
	CapIOEventFD          = 36
	CapSetIdentityMapAddr = 37
	CapMaxVCPUs           = 66
	CapSplitIRQChip       = 121
	CapX2APICAPI          = 129
	CapImmediateExit      = 136
)

// Memory slot flags (KVM_MEM_*).
const (
	MemLogDirtyPages = 1 << 0
	MemReadonly      = 1 << 1
)
