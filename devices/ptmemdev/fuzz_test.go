package ptmemdev

import (
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// validPtctl are the only values PTCTL may read back.
var validPtctl = map[uint32]bool{0: true, errBusy: true, errNoCSB: true, errFault: true, errInval: true, errNoDev: true, errIO: true}

// FuzzRegisters runs sequences of guest register accesses (any offset, size and
// value, CSB addresses good and bad, CREATE/DELETE in any order, kicks, guest writes
// into its CSB while the loop runs, resets) and checks that the device never panics or
// blocks, keeps its registers in their legal ranges, and leaves no goroutine behind.
func FuzzRegisters(f *testing.F) {
	op := func(kind, off byte, v uint32) []byte {
		return binary.LittleEndian.AppendUint32([]byte{kind, off}, v)
	}
	seed := func(ops ...[]byte) {
		var b []byte
		for _, o := range ops {
			b = append(b, o...)
		}
		f.Add(b)
	}
	seed(op(3, 0, 0), op(0, RegPtctl/4, PtctlCreate), op(0, RegKickBase/4, 1), op(0, RegPtctl/4, PtctlDelete))
	seed(op(3, 0, 0), op(0, RegPtctl/4, PtctlCreate), op(4, 0, 0xffff), op(0, RegKickBase/4, 1), op(4, 1, 7), op(0, RegKickBase/4+1, 1), op(5, 0, 0))
	seed(op(0, RegCSBGHBAL/4, 0x10_0000), op(0, RegPtctl/4, PtctlCreate), op(0, RegPtctl/4, 9))
	seed(op(3, 0, 0), op(0, RegPtctl/4, PtctlCreate), op(0, RegPtctl/4, PtctlCreate), op(0, RegCSBHGBAL/4, testHG), op(0, RegPtctl/4, PtctlCreate))
	seed(op(2, 1, 0xffff_ffff), op(2, 3, 1), op(0, 63, 5), op(0, RegVnetHdrLen/4, 12), op(0, RegPtfeat/4, 1), op(0, RegVnetHdrLen/4, 12))
	f.Fuzz(fuzzRegisters)
}

// fuzzRegisters is one FuzzRegisters run: 6 bytes per access (kind, offset, value).
func fuzzRegisters(t *testing.T, data []byte) {
	if len(data) > 6*64 {
		data = data[:6*64]
	}
	r := newRig(t, rigOpts{tx: 2, rx: 1, vnet: true, noBells: true})
	base := runtime.NumGoroutine()
	bar0 := r.bar(r.fn, RegsBAR)
	for len(data) >= 6 {
		kind, off, v := data[0]%6, uint64(data[1]), binary.LittleEndian.Uint32(data[2:6])
		data = data[6:]
		switch kind {
		case 0: // dword write anywhere in the first 256 bytes
			r.wr(off%64*4, v)
		case 1:
			r.rd(off % 64 * 4)
		case 2: // odd sizes and alignments
			buf := make([]byte, []int{1, 2, 8, 3}[off%4])
			copy(buf, binary.LittleEndian.AppendUint32(nil, v))
			if v&1 == 0 {
				r.mmio.Write(bar0+(off%64*4+uint64(v>>8)%4), buf)
			} else {
				r.mmio.Read(bar0+(off%64*4+uint64(v>>8)%4), buf)
			}
		case 3: // the driver's CSB placement
			r.csb(testGH, testHG)
		case 4: // the guest scribbles on its atok entries while the loop may run
			r.setRAM32(testGH+uint64(off%3)*64+uint64(v>>24)%4*4, v)
		case 5:
			r.d.Reset()
		}
		p := r.rd(RegPtctl)
		require.True(t, validPtctl[p], "PTCTL reads %d (%v)", p, unix.Errno(p))
		require.Contains(t, []uint32{0, VnetHdrLen}, r.rd(RegVnetHdrLen))
		require.Zero(t, r.rd(RegPtfeat)&^FeatureVnetHdr)
		require.Equal(t, uint32(2), r.rd(RegNumTxRings))
		require.Equal(t, uint32(1), r.rd(RegNumRxRings))
	}
	require.NoError(t, r.d.Close())
	require.False(t, r.d.Running())
	goroutinesBack(t, base)
}
