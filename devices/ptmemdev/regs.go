package ptmemdev

// PCI identity (SPECS 3.1). The IDs are the netmap QEMU fork's; upstream QEMU later
// gave 1b36:000c/000d to other devices, so they only mean ptnetmap here.
const (
	VendorID       = 0x1b36
	MemdevDeviceID = 0x000c // PTNETMAP_PCI_DEVICE_ID
	PtnetDeviceID  = 0x000d // PTNETMAP_PCI_NETIF_ID
	SubsystemID    = 0x0001 // bhyve's ptnet subsystem id, under VendorID
	MemdevClass    = 0xff0000
	PtnetClass     = 0x020000 // network, ethernet
)

// BAR numbers: registers, memory (memdev) and MSI-X (ptnet).
const (
	RegsBAR = 0 // PTNETMAP_IO_PCI_BAR
	MemBAR  = 1 // PTNETMAP_MEM_PCI_BAR
	MSIXBAR = 2 // PTNETMAP_MSIX_PCI_BAR
)

// BAR sizes.
const (
	MemdevRegsSize = 128  // I/O, as in QEMU: the registers end at 100
	PtnetRegsSize  = 4096 // 32-bit MMIO, one page so a guest program can mmap it
	MSIXSize       = 4096 // table at 0, PBA at MSIXPBAOffset
	MSIXPBAOffset  = 0x800
)

// Memdev registers (BAR0, read-only u32; SPECS 3.2): nmreq_pools_info values.
const (
	MemRegMemsizeLo    = 0
	MemRegMemsizeHi    = 4
	MemRegMemID        = 8
	MemRegIfPoolOfs    = 64
	MemRegIfPoolObjNum = 68
	MemRegIfPoolObjSz  = 72
	MemRegRingPoolOfs  = 76
	MemRegRingObjNum   = 80
	MemRegRingObjSz    = 84
	MemRegBufPoolOfs   = 88
	MemRegBufObjNum    = 92
	MemRegBufObjSz     = 96
	MemRegEnd          = 100
)

// Ptnet registers (BAR0; SPECS 3.3).
const (
	RegPtfeat      = 0
	RegPtctl       = 4
	RegMacLo       = 8
	RegMacHi       = 12
	RegCSBBAH      = 16 // deprecated single CSB: reads 0, writes ignored
	RegCSBBAL      = 20
	RegNifpOfs     = 24
	RegNumTxRings  = 28
	RegNumRxRings  = 32
	RegNumTxSlots  = 36
	RegNumRxSlots  = 40
	RegVnetHdrLen  = 44
	RegHostMemID   = 48
	RegCSBGHBAH    = 52
	RegCSBGHBAL    = 56
	RegCSBHGBAH    = 60
	RegCSBHGBAL    = 64
	RegEnd         = 68
	RegKickBase    = 128 // KICK(i) at RegKickBase + 4*i
	MaxRings       = 32  // every KICK fits below 256
	FeatureVnetHdr = 1   // PTNETMAP_F_VNET_HDR
	VnetHdrLen     = 12  // the one non-zero VNET_HDR_LEN accepted
)

// PTCTL commands.
const (
	PtctlCreate = 1
	PtctlDelete = 2
)
