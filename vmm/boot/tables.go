package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

// Page-table entry bits.
const (
	ptePresent  = 1 << 0
	pteWrite    = 1 << 1
	pteUser     = 1 << 2
	ptePageSize = 1 << 7
)

// identityMap writes 4-level page tables at pml4 (then the PDPT and `gib` page
// directories in the following pages) that map [0, gib GiB) to itself with 2 MiB pages.
// user sets U/S on every level so CPL3 may use the mapping. It returns the bytes used.
func identityMap(m *memory.Memory, pml4 uint64, gib int, user bool) (uint64, error) {
	if gib < 1 || gib > 512 {
		return 0, fmt.Errorf("boot: identity map of %d GiB out of range", gib)
	}
	size := uint64(2+gib) * 4096
	t, err := m.Slice(pml4, size)
	if err != nil {
		return 0, fmt.Errorf("boot: page tables at %#x: %w", pml4, err)
	}
	clear(t)
	flags := uint64(ptePresent | pteWrite)
	if user {
		flags |= pteUser
	}
	le := binary.LittleEndian
	pdpt := pml4 + 4096
	le.PutUint64(t[0:], pdpt|flags)
	for i := range gib {
		pd := pdpt + 4096*uint64(1+i)
		le.PutUint64(t[4096+8*i:], pd|flags)
		for j := range 512 {
			addr := uint64(i)<<30 | uint64(j)<<21
			le.PutUint64(t[(2+i)*4096+8*j:], addr|flags|ptePageSize)
		}
	}
	return size, nil
}

// descriptor encodes a code, data or 32-bit-style system segment descriptor.
func descriptor(s Segment) uint64 {
	limit := uint64(s.Limit)
	if s.G != 0 {
		limit >>= 12
	}
	b := s.Base
	return limit&0xffff | (b&0xffffff)<<16 |
		uint64(s.Type&0xf)<<40 | uint64(s.S&1)<<44 | uint64(s.DPL&3)<<45 | uint64(s.Present&1)<<47 |
		(limit>>16&0xf)<<48 | uint64(s.L&1)<<53 | uint64(s.DB&1)<<54 | uint64(s.G&1)<<55 |
		(b>>24&0xff)<<56
}

// writeGDT writes descriptors at gdt: each entry of segs goes to slot Selector>>3; a
// system segment (S == 0) takes two slots (64-bit TSS). It returns the GDT limit.
func writeGDT(m *memory.Memory, gdt uint64, slots int, segs ...Segment) (uint16, error) {
	t, err := m.Slice(gdt, uint64(slots)*8)
	if err != nil {
		return 0, fmt.Errorf("boot: GDT at %#x: %w", gdt, err)
	}
	clear(t)
	le := binary.LittleEndian
	for _, s := range segs {
		i := int(s.Selector >> 3)
		n := 1
		if s.S == 0 {
			n = 2
		}
		if i == 0 || i+n > slots {
			return 0, fmt.Errorf("boot: selector %#x outside the GDT", s.Selector)
		}
		le.PutUint64(t[8*i:], descriptor(s))
		if n == 2 {
			le.PutUint64(t[8*i+8:], s.Base>>32)
		}
	}
	return uint16(slots*8 - 1), nil
}

// Flat 64-bit segments.
func code64(sel uint16, dpl uint8) Segment {
	return Segment{Limit: 0xffffffff, Selector: sel | uint16(dpl), Type: 0xb, Present: 1, DPL: dpl, S: 1, L: 1, G: 1}
}

func data64(sel uint16, dpl uint8) Segment {
	return Segment{Limit: 0xffffffff, Selector: sel | uint16(dpl), Type: 0x3, Present: 1, DPL: dpl, S: 1, DB: 1, G: 1}
}

// tss64 is a busy 64-bit TSS, as TR must be when a vCPU enters long mode.
func tss64(sel uint16, base uint64) Segment {
	return Segment{Base: base, Limit: tssSize - 1, Selector: sel, Type: 0xb, Present: 1}
}

// unusableLDT is the null LDT.
var unusableLDT = Segment{Type: 0x2}

const tssSize = 104
