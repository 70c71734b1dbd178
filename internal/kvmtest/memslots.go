package kvmtest

import "github.com/ptvmm/ptvmm/vmm/kvm"

// MemSlots installs host mappings as KVM memslots; it implements pci.MemoryMapper.
type MemSlots struct{ VM *kvm.VM }

// MapMemory adds a memslot for host at gpa.
func (s MemSlots) MapMemory(gpa uint64, host []byte) (int, error) {
	n, err := s.VM.AddMemory(gpa, host, 0)
	return int(n), err
}

// UnmapMemory deletes the memslot.
func (s MemSlots) UnmapMemory(h int) error { return s.VM.DeleteMemory(uint32(h)) }
