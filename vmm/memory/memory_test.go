package memory

import (
	"errors"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func newTest(t *testing.T) *Memory {
	t.Helper()
	m, err := New([]Range{{GPA: 0, Size: 0x10000}, {GPA: 0x100000, Size: 0x2000}}, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

func TestReadWriteRoundTrip(t *testing.T) {
	m := newTest(t)
	require.NoError(t, m.Write64(0x100008, 0x1122334455667788))
	v, err := m.Read64(0x100008)
	require.NoError(t, err)
	require.Equal(t, uint64(0x1122334455667788), v)
	// Little-endian byte order is visible through the narrower reads.
	b, err := m.Read8(0x100008)
	require.NoError(t, err)
	require.Equal(t, uint8(0x88), b)
	h, err := m.Read16(0x10000e)
	require.NoError(t, err)
	require.Equal(t, uint16(0x1122), h)
	require.Equal(t, uint64(0x12000), m.Size())
}

func TestOutOfRange(t *testing.T) {
	m := newTest(t)
	cases := []struct {
		name string
		gpa  uint64
		n    uint64
	}{
		{"hole between regions", 0x10000, 1},
		{"straddles end of first region", 0xfffc, 8},
		{"straddles start of second region", 0xffffc, 8},
		{"past last region", 0x102000, 1},
		{"length overflows", 0x100000, math.MaxUint64},
		{"address near top wraps", math.MaxUint64 - 3, 8},
		{"huge length from valid start", 0, 0x10001},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := m.Slice(c.gpa, c.n)
			require.True(t, errors.Is(err, ErrOutOfRange), "got %v", err)
			require.False(t, m.Contains(c.gpa, c.n))
		})
	}
	_, err := m.Read32(0xfffe)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.ErrorIs(t, m.Write64(0x101ffc, 1), ErrOutOfRange)
	require.ErrorIs(t, m.ReadAt(make([]byte, 16), 0xfff8), ErrOutOfRange)
}

func TestSliceAliasesAndIsCapped(t *testing.T) {
	m := newTest(t)
	s, err := m.Slice(0x20, 4)
	require.NoError(t, err)
	require.Equal(t, 4, cap(s), "capacity must not expose bytes past the range")
	copy(s, []byte{1, 2, 3, 4})
	v, err := m.Read32(0x20)
	require.NoError(t, err)
	require.Equal(t, uint32(0x04030201), v)
	// A zero-length access at an address inside a region is valid.
	_, err = m.Slice(0xffff, 0)
	require.NoError(t, err)
}

func TestNewRejectsBadRanges(t *testing.T) {
	_, err := New([]Range{{GPA: 0, Size: 0x2000}, {GPA: 0x1000, Size: 0x1000}}, Options{})
	require.Error(t, err)
	_, err = New([]Range{{GPA: 0x10, Size: 0x1000}}, Options{})
	require.Error(t, err)
	_, err = New([]Range{{GPA: 0, Size: 0}}, Options{})
	require.Error(t, err)
}

func TestMemFDBacking(t *testing.T) {
	m, err := New([]Range{{GPA: 0x1000, Size: 0x1000}}, Options{MemFD: true})
	require.NoError(t, err)
	defer m.Close()
	require.GreaterOrEqual(t, m.Regions()[0].FD, 0)
	require.NoError(t, m.Write32(0x1ffc, 7))
}

func TestFromBytes(t *testing.T) {
	a := make([]byte, 64)
	m, err := FromBytes([]Region{{Range: Range{GPA: 0x40, Size: 64}, Host: a, FD: -1}})
	require.NoError(t, err)
	require.NoError(t, m.Write16(0x40, 0xbeef))
	require.Equal(t, byte(0xef), a[0])
	_, err = FromBytes([]Region{{Range: Range{GPA: 0, Size: 65}, Host: a, FD: -1}})
	require.Error(t, err)
}

func FuzzSlice(f *testing.F) {
	f.Add(uint64(0), uint64(1))
	f.Add(uint64(0xffff), uint64(2))
	f.Add(uint64(math.MaxUint64), uint64(math.MaxUint64))
	m, err := New([]Range{{GPA: 0, Size: 0x10000}, {GPA: 0x100000, Size: 0x2000}}, Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, gpa, n uint64) {
		s, err := m.Slice(gpa, n)
		if err != nil {
			return
		}
		if uint64(len(s)) != n {
			t.Fatalf("slice of %d bytes for length %d", len(s), n)
		}
		inFirst := gpa+n <= 0x10000
		inSecond := gpa >= 0x100000 && gpa+n <= 0x102000
		if !inFirst && !inSecond {
			t.Fatalf("accepted %#x+%#x outside every region", gpa, n)
		}
	})
}
