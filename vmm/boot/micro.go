package boot

import (
	"errors"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

// MicroOptions configure LoadMicro.
type MicroOptions struct {
	// IF sets RFLAGS.IF at entry.
	IF bool
	// IDT maps a vector to the guest-physical address of its handler (code in the blob,
	// run at CPL0 on the kernel stack). Empty: no IDT (IDT limit 0).
	IDT map[uint8]uint64
	// Kernel starts the guest at CPL0 instead of CPL3.
	Kernel bool
}

// LoadMicro writes a long-mode test guest into m: code is copied to MicroCodeAddr.
func LoadMicro(m *memory.Memory, code []byte, opt MicroOptions) (*Entry, error) {
	return nil, errors.New("boot: LoadMicro not implemented yet")
}
