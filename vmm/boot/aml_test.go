package boot

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// decodePkgLength is the AML spec's PkgLength decoding, written independently of the
// encoder: it returns the encoded value and how many bytes it took.
func decodePkgLength(b []byte) (int, int) {
	extra := int(b[0] >> 6)
	if extra == 0 {
		return int(b[0] & 0x3f), 1
	}
	v := int(b[0] & 0x0f)
	for i := 1; i <= extra; i++ {
		v |= int(b[i]) << (4 + 8*(i-1))
	}
	return v, 1 + extra
}

func TestAMLPkgLength(t *testing.T) {
	for _, n := range []int{0, 1, 61, 62, 63, 64, 0xffd, 0xffe, 0xfff, 0x1000, 0xffffc, 0xffffd, 0x100000, 0xfffffff - 4} {
		enc := amlPkgLength(n)
		v, used := decodePkgLength(enc)
		require.Equal(t, len(enc), used, "n=%#x", n)
		assert.Equal(t, n+len(enc), v, "n=%#x: PkgLength counts itself and the content", n)
		if used > 1 {
			assert.Zero(t, enc[0]&0x30, "n=%#x: bits 5-4 of a multi-byte lead byte are reserved", n)
		}
	}
	assert.Len(t, amlPkgLength(62), 1)
	assert.Len(t, amlPkgLength(63), 2)
}

func TestAMLNames(t *testing.T) {
	assert.Equal(t, []byte("_HID"), amlNameString("_HID"))
	assert.Equal(t, []byte(`\_SB_`), amlNameString(`\_SB`))
	assert.Equal(t, append([]byte{'\\', 0x2e}, "_SB_PCI0"...), amlNameString(`\_SB.PCI0`))
	assert.Equal(t, append([]byte{0x2f, 3}, "A___B___C___"...), amlNameString("A.B.C"))
	// EISA IDs as ACPICA's compiler encodes them.
	assert.Equal(t, []byte{0x0c, 0x41, 0xd0, 0x0a, 0x03}, amlEISAID("PNP0A03"))
	assert.Equal(t, []byte{0x0c, 0x41, 0xd0, 0x05, 0x01}, amlEISAID("PNP0501"))
	assert.Equal(t, []byte{0x00}, amlInt(0))
	assert.Equal(t, []byte{0x01}, amlInt(1))
	assert.Equal(t, []byte{0x0a, 0x10}, amlInt(16))
	assert.Equal(t, []byte{0x0b, 0xff, 0xff}, amlInt(0xffff))
	assert.Equal(t, []byte{0x0c, 0xff, 0xff, 0x1f, 0x00}, amlInt(0x1fffff))
	assert.Equal(t, []byte{0x0e, 0, 0, 0, 0, 1, 0, 0, 0}, amlInt(1<<32))
}

func TestPCIINTxGSI(t *testing.T) {
	seen := map[uint32]bool{}
	for slot := range 32 {
		for pin := range 4 {
			g := PCIINTxGSI(slot, pin)
			assert.True(t, g >= 16 && g < 24, "slot %d pin %d -> GSI %d outside KVM's IOAPIC pins 16-23", slot, pin, g)
			seen[g] = true
		}
		// Neighbouring slots' INTA land on different GSIs.
		if slot > 0 {
			assert.NotEqual(t, PCIINTxGSI(slot-1, 0), PCIINTxGSI(slot, 0))
		}
	}
	assert.Len(t, seen, 8)
}

func TestIsPowerOff(t *testing.T) {
	assert.True(t, IsPowerOff(PowerOffValue))
	assert.True(t, IsPowerOff(PowerOffValue|0x80), "other bits do not matter")
	assert.False(t, IsPowerOff(S5SleepType<<2), "SLP_EN clear")
	assert.False(t, IsPowerOff(SleepEnable|3<<2), "S3 type")
	assert.False(t, IsPowerOff(0))
}
