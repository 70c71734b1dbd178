package pci

// Offsets in the type-0 configuration header.
const (
	ConfigSize = 256 // conventional configuration space; mechanism #1 reaches no further

	RegVendorID      = 0x00
	RegDeviceID      = 0x02
	RegCommand       = 0x04
	RegStatus        = 0x06
	RegRevision      = 0x08
	RegClass         = 0x09 // prog-if, subclass, class (3 bytes)
	RegCacheLine     = 0x0c
	RegLatency       = 0x0d
	RegHeaderType    = 0x0e
	RegBAR0          = 0x10
	RegSubVendorID   = 0x2c
	RegSubsystemID   = 0x2e
	RegROM           = 0x30
	RegCapPtr        = 0x34
	RegInterruptLine = 0x3c
	RegInterruptPin  = 0x3d

	// CapOffset is where the first capability (MSI-X if the device has it) lives.
	CapOffset = 0x40
)

// Command register bits.
const (
	CmdIO          = 1 << 0
	CmdMemory      = 1 << 1
	CmdBusMaster   = 1 << 2
	CmdIntxDisable = 1 << 10

	cmdWritable = CmdIO | CmdMemory | CmdBusMaster | CmdIntxDisable
)

// Status register bits.
const (
	StatusInterrupt = 1 << 3
	StatusCapList   = 1 << 4
)

// MSI-X capability.
const (
	CapIDMSIX        = 0x11
	MSIXCtrlMaskAll  = 0x4000
	MSIXCtrlEnable   = 0x8000
	MSIXEntrySize    = 16
	MSIXMaxVectors   = 2048
	msixEntryCtrlBit = 1 // vector control bit 0: masked
)

// BAR register low bits.
const (
	barIOSpace      = 0x1
	barMem64        = 0x4
	barPrefetchable = 0x8
)

// IntxGSI is the IOAPIC GSI that pin INTA of the device in slot is wired to. Firmware
// tables (ACPI _PRT, interrupt line register) must agree with it.
func IntxGSI(slot int) uint32 { return 16 + uint32(slot)%8 }
