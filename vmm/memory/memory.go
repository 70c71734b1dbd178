// Package memory is guest physical memory: host mappings laid out at guest-physical
// addresses, and the one bounds-checked accessor through which the VMM and its devices
// read and write them.
//
// Every access names a guest-physical address and a length. The accessor checks both
// against the map (including address+length overflow) and returns an error for anything
// outside a single region; it never panics on guest-supplied values. Values are read
// into Go variables by explicit little-endian decoding, never by casting guest bytes to
// Go structs.
//
// Concurrency: the region map is fixed after New; all methods may be called from any
// goroutine. The bytes themselves are shared with the guest and with other goroutines:
// callers that need ordering (virtqueue indices, CSB fields) use the atomic helpers.
package memory

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// ErrOutOfRange is returned (wrapped) for any access that is not wholly inside one region.
var ErrOutOfRange = errors.New("guest address out of range")

// Range is a span of guest-physical addresses.
type Range struct {
	GPA  uint64
	Size uint64
}

// End is the first address after r.
func (r Range) End() uint64 { return r.GPA + r.Size }

// Region is one host mapping placed at a guest-physical address.
type Region struct {
	Range
	// Host is the host mapping; len(Host) == Size.
	Host []byte
	// FD is the memfd backing the region, or -1 for anonymous memory.
	FD int
}

// Options select how RAM is backed.
type Options struct {
	// MemFD backs each region with a memfd (sharable with another process or mappable
	// twice) instead of anonymous memory. The memfd is sealed against shrinking and
	// growing, so a process it is shared with (a switch service mapping a ptnet's
	// CSB) can rely on its size.
	MemFD bool
	// NoHugePages skips MADV_HUGEPAGE.
	NoHugePages bool
}

// Memory is the guest-physical address space made of non-overlapping regions.
type Memory struct {
	regions []Region // sorted by GPA, fixed after New
	owned   bool
}

// New maps one region per range. Ranges must be page-aligned, non-empty and must not
// overlap.
func New(ranges []Range, opt Options) (*Memory, error) {
	rs := append([]Range(nil), ranges...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GPA < rs[j].GPA })
	m := &Memory{owned: true}
	pg := uint64(unix.Getpagesize())
	for i, r := range rs {
		if r.Size == 0 || r.GPA%pg != 0 || r.Size%pg != 0 {
			m.Close()
			return nil, fmt.Errorf("memory: range %#x+%#x is empty or not page-aligned", r.GPA, r.Size)
		}
		if r.End() < r.GPA {
			m.Close()
			return nil, fmt.Errorf("memory: range %#x+%#x wraps", r.GPA, r.Size)
		}
		if i > 0 && rs[i-1].End() > r.GPA {
			m.Close()
			return nil, fmt.Errorf("memory: ranges %#x+%#x and %#x+%#x overlap", rs[i-1].GPA, rs[i-1].Size, r.GPA, r.Size)
		}
		reg, err := mapRegion(r, opt)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.regions = append(m.regions, reg)
	}
	return m, nil
}

func mapRegion(r Range, opt Options) (Region, error) {
	fd := -1
	flags := unix.MAP_SHARED | unix.MAP_NORESERVE
	if opt.MemFD {
		var err error
		fd, err = unix.MemfdCreate("ptvmm-ram", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			return Region{}, fmt.Errorf("memory: memfd_create: %w", err)
		}
		if err := unix.Ftruncate(fd, int64(r.Size)); err != nil {
			unix.Close(fd)
			return Region{}, fmt.Errorf("memory: size memfd to %d bytes: %w", r.Size, err)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
			unix.Close(fd)
			return Region{}, fmt.Errorf("memory: seal memfd: %w", err)
		}
	} else {
		flags = unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_NORESERVE
	}
	host, err := unix.Mmap(fd, 0, int(r.Size), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return Region{}, fmt.Errorf("memory: map %d bytes at guest %#x: %w", r.Size, r.GPA, err)
	}
	if !opt.NoHugePages {
		// Advice only: a kernel without THP for this mapping type just ignores it.
		_ = unix.Madvise(host, unix.MADV_HUGEPAGE)
	}
	return Region{Range: r, Host: host, FD: fd}, nil
}

// FromBytes wraps caller-owned byte slices as guest memory (for tests and for memory
// the caller maps itself). Close does not unmap them.
func FromBytes(regions []Region) (*Memory, error) {
	rs := append([]Region(nil), regions...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GPA < rs[j].GPA })
	for i, r := range rs {
		if uint64(len(r.Host)) != r.Size || r.Size == 0 || r.End() < r.GPA {
			return nil, fmt.Errorf("memory: region %#x+%#x has %d host bytes", r.GPA, r.Size, len(r.Host))
		}
		if i > 0 && rs[i-1].End() > r.GPA {
			return nil, fmt.Errorf("memory: regions at %#x and %#x overlap", rs[i-1].GPA, r.GPA)
		}
	}
	return &Memory{regions: rs}, nil
}

// Close unmaps the regions New created. The Memory must not be used afterwards.
func (m *Memory) Close() error {
	if !m.owned {
		return nil
	}
	var first error
	for _, r := range m.regions {
		if err := unix.Munmap(r.Host); err != nil && first == nil {
			first = err
		}
		if r.FD >= 0 {
			unix.Close(r.FD)
		}
	}
	m.regions = nil
	return first
}

// Regions returns the regions in GPA order. The slice must not be modified.
func (m *Memory) Regions() []Region { return m.regions }

// Size is the total number of bytes mapped.
func (m *Memory) Size() uint64 {
	var n uint64
	for _, r := range m.regions {
		n += r.Size
	}
	return n
}

// Slice returns the host bytes of [gpa, gpa+n), which must lie inside one region.
// The returned slice aliases guest memory. A zero length at a valid address is allowed.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	end := gpa + n
	if end < gpa {
		return nil, fmt.Errorf("memory: %#x+%#x overflows: %w", gpa, n, ErrOutOfRange)
	}
	// Binary search: regions are sorted and disjoint.
	i := sort.Search(len(m.regions), func(i int) bool { return m.regions[i].End() > gpa })
	if i == len(m.regions) {
		return nil, fmt.Errorf("memory: %#x+%#x: %w", gpa, n, ErrOutOfRange)
	}
	r := &m.regions[i]
	if gpa < r.GPA || end > r.End() {
		return nil, fmt.Errorf("memory: %#x+%#x: %w", gpa, n, ErrOutOfRange)
	}
	off := gpa - r.GPA
	return r.Host[off : off+n : off+n], nil
}

// Contains reports whether [gpa, gpa+n) lies inside one region.
func (m *Memory) Contains(gpa, n uint64) bool {
	_, err := m.Slice(gpa, n)
	return err == nil
}

// ReadAt copies len(p) bytes from guest address gpa into p.
func (m *Memory) ReadAt(p []byte, gpa uint64) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, s)
	return nil
}

// WriteAt copies p to guest address gpa.
func (m *Memory) WriteAt(p []byte, gpa uint64) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}

// Read8 reads a byte.
func (m *Memory) Read8(gpa uint64) (uint8, error) {
	s, err := m.Slice(gpa, 1)
	if err != nil {
		return 0, err
	}
	return s[0], nil
}

// Read16 reads a little-endian uint16.
func (m *Memory) Read16(gpa uint64) (uint16, error) {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// Read32 reads a little-endian uint32.
func (m *Memory) Read32(gpa uint64) (uint32, error) {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// Read64 reads a little-endian uint64.
func (m *Memory) Read64(gpa uint64) (uint64, error) {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// Write8 writes a byte.
func (m *Memory) Write8(gpa uint64, v uint8) error {
	s, err := m.Slice(gpa, 1)
	if err != nil {
		return err
	}
	s[0] = v
	return nil
}

// Write16 writes a little-endian uint16.
func (m *Memory) Write16(gpa uint64, v uint16) error {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(s, v)
	return nil
}

// Write32 writes a little-endian uint32.
func (m *Memory) Write32(gpa uint64, v uint32) error {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(s, v)
	return nil
}

// Write64 writes a little-endian uint64.
func (m *Memory) Write64(gpa uint64, v uint64) error {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(s, v)
	return nil
}
