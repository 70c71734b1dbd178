package boot

import "github.com/ptvmm/ptvmm/vmm/memory"

// Guest-physical memory map shared by the VMM and the loaders.
const (
	// PCIHoleStart is where RAM below 4 GiB ends; BAR MMIO lives in
	// [PCIHoleStart, IOAPICAddr).
	PCIHoleStart = 0xC000_0000
	// IOAPICAddr and LAPICAddr are the interrupt controllers' MMIO bases.
	IOAPICAddr = 0xFEC0_0000
	LAPICAddr  = 0xFEE0_0000
	// HighRAMStart is where RAM that does not fit below the hole continues.
	HighRAMStart = 1 << 32
)

// RAMRanges lays out ramSize bytes of guest RAM: [0, min(ramSize, PCIHoleStart)) and,
// when there is more, the rest from 4 GiB up. ramSize 0 gives no ranges.
func RAMRanges(ramSize uint64) []memory.Range {
	if ramSize == 0 {
		return nil
	}
	low := min(ramSize, PCIHoleStart)
	rs := []memory.Range{{GPA: 0, Size: low}}
	if ramSize > low {
		rs = append(rs, memory.Range{GPA: HighRAMStart, Size: ramSize - low})
	}
	return rs
}
