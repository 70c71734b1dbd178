package boot

// Segment is a segment register as KVM's kvm_segment describes it. Limit is the byte
// limit already scaled by G (0xFFFFFFFF for a flat 4 GiB segment). A segment with
// Present == 0 is unusable (the LDT here, for instance).
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
}

// Entry is the vCPU state to start at; the vmm package applies it to KVM regs/sregs.
// Registers not named here start at zero.
type Entry struct {
	RIP, RSP, RSI, RFLAGS           uint64
	CR0, CR3, CR4, EFER             uint64
	CS, DS, ES, FS, GS, SS, TR, LDT Segment
	GDTBase                         uint64
	GDTLimit                        uint16
	IDTBase                         uint64
	IDTLimit                        uint16
}

// Control-register and EFER bits used by the loaders.
const (
	CR0PE = 1 << 0
	CR0MP = 1 << 1
	CR0ET = 1 << 4
	CR0NE = 1 << 5
	CR0WP = 1 << 16
	CR0PG = 1 << 31

	CR4PAE        = 1 << 5
	CR4OSFXSR     = 1 << 9
	CR4OSXMMEXCPT = 1 << 10

	EFERSCE = 1 << 0
	EFERLME = 1 << 8
	EFERLMA = 1 << 10

	RFLAGSReserved = 1 << 1 // bit 1 always reads as one
	RFLAGSIF       = 1 << 9
	RFLAGSIOPL3    = 3 << 12
)
