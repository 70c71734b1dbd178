package memory

import (
	"testing"

	"golang.org/x/sys/unix"
)

// A memfd-backed region cannot be resized by whoever it is shared with.
func TestMemFDSealed(t *testing.T) {
	m, err := New([]Range{{GPA: 0, Size: 1 << 16}}, Options{MemFD: true, NoHugePages: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	fd := m.Regions()[0].FD
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		t.Fatalf("seals %#x, %v: want shrink and grow sealed", seals, err)
	}
	if err := unix.Ftruncate(fd, 4096); err == nil {
		t.Fatal("shrinking a sealed memfd worked")
	}
	if err := m.Write32(0x100, 7); err != nil {
		t.Fatal(err)
	}
}
