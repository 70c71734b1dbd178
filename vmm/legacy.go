package vmm

// sink absorbs accesses to legacy ports nothing emulates but guests write routinely
// (the POST code port 0x80 that Linux uses as an I/O delay), so they do not show up
// as unclaimed. Reads return zero.
type sink struct{}

func (sink) Read(off uint64, data []byte)  { clear(data) }
func (sink) Write(off uint64, data []byte) {}

// Legacy PC ports.
const (
	portPOST  = 0x80
	portCOM1  = 0x3f8
	irqCOM1   = 4
	tssAddr   = 0xfeffd000 // three pages KVM needs for real mode on Intel, outside RAM and MMIO
	identAddr = 0xfeffc000 // one page, ditto
)
