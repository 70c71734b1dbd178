package ptnet

import (
	"bufio"
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cDefines reads the numeric #defines of the kernel module.
func cDefines(t *testing.T) map[string]uint64 {
	f, err := os.Open("../kmod/ptvmm_ptnet.c")
	require.NoError(t, err)
	defer f.Close()
	re := regexp.MustCompile(`^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|[0-9]+)(ULL|U)?\s*(/\*.*)?$`)
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := re.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseUint(m[2], 0, 64)
		require.NoError(t, err, m[0])
		out[m[1]] = v
	}
	require.NoError(t, sc.Err())
	return out
}

func TestABIMatchesModule(t *testing.T) {
	d := cDefines(t)
	want := map[string]uint64{
		"PTVMM_PTNET_ABI_VERSION":      ABIVersion,
		"PTVMM_PTNET_MMAP_BAR1_WB":     MmapBar1WB,
		"PTVMM_PTNET_MMAP_BAR1_UC":     MmapBar1UC,
		"PTVMM_PTNET_MMAP_REGS":        MmapRegs,
		"PTVMM_PTNET_MMAP_CSB":         MmapCSB,
		"PTVMM_PTNET_MMAP_SHIFT":       mmapShift,
		"PTVMM_PTNET_F_MEMDEV":         FlagMemdev,
		"PTVMM_PTNET_F_REGS_MMAP":      FlagRegsMmap,
		"PTVMM_PTNET_F_CREATED":        FlagCreated,
		"PTVMM_PTNET_IOC_MAGIC":        iocMagic,
		"PTVMM_PTNET_IOC_INFO_NR":      iocInfoNr,
		"PTVMM_PTNET_IOC_REG_READ_NR":  iocRegReadNr,
		"PTVMM_PTNET_IOC_REG_WRITE_NR": iocRegWriteNr,
		"PTVMM_PTNET_IOC_WAIT_NR":      iocWaitNr,
		"PTVMM_PTNET_INFO_SIZE":        infoSize,
		"PTVMM_PTNET_REG_SIZE":         regSize,
		"PTVMM_PTNET_WAIT_SIZE":        waitSize,
		"PTNET_PTFEAT":                 RegPtfeat,
		"PTNET_PTCTL":                  RegPtctl,
		"PTNET_MAC_LO":                 RegMacLo,
		"PTNET_MAC_HI":                 RegMacHi,
		"PTNET_NIFP_OFS":               RegNifpOfs,
		"PTNET_NUM_TX_RINGS":           RegNumTxRings,
		"PTNET_NUM_RX_RINGS":           RegNumRxRings,
		"PTNET_NUM_TX_SLOTS":           RegNumTxSlots,
		"PTNET_NUM_RX_SLOTS":           RegNumRxSlots,
		"PTNET_VNET_HDR_LEN":           RegVnetHdrLen,
		"PTNET_HOSTMEMID":              RegHostMemID,
		"PTNET_KICK_BASE":              RegKickBase,
		"PTNET_IO_END":                 regEnd,
		"PTCTL_CREATE":                 PtctlCreate,
		"PTCTL_DELETE":                 PtctlDelete,
		"PTNET_MAX_RINGS":              maxRings,
	}
	for name, v := range want {
		got, ok := d[name]
		if assert.True(t, ok, "%s not defined in ptvmm_ptnet.c", name) {
			assert.Equal(t, v, got, name)
		}
	}
	// Each area's offset is its index shifted by the window size.
	for i, off := range []uint64{MmapBar1WB, MmapBar1UC, MmapRegs, MmapCSB} {
		assert.Equal(t, uint64(i)<<mmapShift, off)
	}
}

func TestIoctlNumbers(t *testing.T) {
	// Values as the C compiler computes _IOR/_IOWR for these sizes.
	assert.Equal(t, uint32(0x8058b701), iocInfo)
	assert.Equal(t, uint32(0xc008b702), iocRegRead)
	assert.Equal(t, uint32(0xc008b703), iocRegWrite)
	assert.Equal(t, uint32(0xc018b704), iocWait)
}

func TestDecodeInfo(t *testing.T) {
	b := make([]byte, infoSize)
	for i := range b {
		b[i] = byte(i)
	}
	in, err := decodeInfo(b)
	require.NoError(t, err)
	assert.Equal(t, uint32(0x03020100), in.Version)
	assert.Equal(t, uint32(0x27262524), in.NumVectors)
	assert.Equal(t, [6]byte{40, 41, 42, 43, 44, 45}, in.MAC)
	assert.Equal(t, uint64(0x3736353433323130), in.MemSize)
	assert.Equal(t, uint64(0x5756555453525150), in.Bar0Len)
	_, err = decodeInfo(b[:infoSize-1])
	assert.Error(t, err)
}

func TestInfoCheck(t *testing.T) {
	good := Info{Version: 1, Flags: FlagMemdev, NumTxRings: 1, NumRxRings: 1, NumVectors: 2,
		MemSize: 1 << 20, Bar1Len: 1 << 21, NifpOfs: 0}
	require.NoError(t, good.check())
	bad := map[string]func(*Info){
		"version":       func(i *Info) { i.Version = 2 },
		"no memdev":     func(i *Info) { i.Flags = 0 },
		"zero tx":       func(i *Info) { i.NumTxRings = 0 },
		"zero rx":       func(i *Info) { i.NumRxRings = 0 },
		"too many":      func(i *Info) { i.NumTxRings, i.NumRxRings, i.NumVectors = 40, 40, 80 },
		"huge counts":   func(i *Info) { i.NumTxRings, i.NumRxRings = 0xffffffff, 2; i.NumVectors = 1 },
		"vectors":       func(i *Info) { i.NumVectors = 3 },
		"memsize 0":     func(i *Info) { i.MemSize = 0 },
		"memsize > bar": func(i *Info) { i.MemSize = 1 << 22 },
		"nifp outside":  func(i *Info) { i.NifpOfs = 1 << 20 },
	}
	for name, f := range bad {
		in := good
		f(&in)
		assert.Error(t, in.check(), name)
	}
}
