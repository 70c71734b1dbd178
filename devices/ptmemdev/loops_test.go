package ptmemdev

import (
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// fakeLoops records what the device asks of a LoopStarter for a port elsewhere.
type fakeLoops struct {
	mu     sync.Mutex
	starts []CSBPlace
	nkicks int
	stops  int
	fail   error
}

type fakeLoop struct{ l *fakeLoops }

func (f fakeLoop) Stop() error {
	f.l.mu.Lock()
	f.l.stops++
	f.l.mu.Unlock()
	return nil
}
func (fakeLoop) Stats() []netmap.KloopStats { return nil }

func (l *fakeLoops) StartLoop(c CSBPlace, kicks, irqs []*notify.EventFD) (Loop, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return nil, l.fail
	}
	for i := range kicks {
		if kicks[i] == nil || irqs[i] == nil {
			return nil, errors.New("nil eventfd")
		}
	}
	l.starts = append(l.starts, c)
	l.nkicks = len(kicks)
	return fakeLoop{l}, nil
}

// A ptnet whose port lives in another process (Config.Geometry and Loops, no
// Port): the registers show the geometry, a memdev maps the region from its memfd
// alone, CREATE hands the CSB's guest addresses and eventfds to the LoopStarter,
// DELETE and a CSB address write stop the loop, a failing start reads EIO.
func TestPtnetLoopsElsewhere(t *testing.T) {
	port, err := netmap.NewPort(netmap.PortConfig{Name: "vale0:far", TxRings: 2, RxRings: 1, TxSlots: 64, RxSlots: 128})
	require.NoError(t, err)
	defer port.Close()
	r := &rig{t: t, ram: make([]byte, testRAM), pio: bus.New("pio"), mmio: bus.New("mmio"), mapper: &fakeMapper{}}
	r.mem, err = memory.FromBytes([]memory.Region{{Range: memory.Range{GPA: 0, Size: testRAM}, Host: r.ram, FD: -1}})
	require.NoError(t, err)
	r.root, err = pci.NewRoot(pci.Config{PIO: r.pio, MMIO: r.mmio, Mapper: r.mapper, Reserved: []memory.Range{{GPA: 0, Size: testRAM}}})
	require.NoError(t, err)
	r.vec = newFakeVectors(t, 3)
	r.bells = &fakeBells{}
	loops := &fakeLoops{}
	reg := port.Region()
	r.md, err = NewMemdevFD(reg.FD(), reg.PoolsInfo(), reg.MapSize())
	require.NoError(t, err)
	require.Nil(t, r.md.Region())
	r.mdFn, err = r.root.Add(-1, r.md.Spec())
	require.NoError(t, err)
	g := &Geometry{Name: "vale0:far", TxRings: 2, RxRings: 1, TxSlots: 64, RxSlots: 128, Nifp: port.NifpOffset(), MemID: reg.ID()}
	_, err = NewPtnet(Config{Geometry: g, Mem: r.mem, Vectors: r.vec})
	require.Error(t, err, "Geometry without Loops")
	r.d, err = NewPtnet(Config{Name: "far", Geometry: g, Loops: loops, MAC: testMAC, Mem: r.mem, Vectors: r.vec, Bells: r.bells.make})
	require.NoError(t, err)
	r.fn, err = r.root.Add(-1, r.d.Spec())
	require.NoError(t, err)
	require.NoError(t, r.d.Attach(r.fn))
	defer func() {
		r.root.Remove(r.fn.Slot())
		require.NoError(t, r.d.Close())
		r.root.Remove(r.mdFn.Slot())
		require.NoError(t, r.md.Close())
	}()

	require.Equal(t, uint32(2), r.rd(RegNumTxRings))
	require.Equal(t, uint32(128), r.rd(RegNumRxSlots))
	require.Equal(t, uint32(port.NifpOffset()), r.rd(RegNifpOfs))
	require.Equal(t, uint32(reg.ID()), r.rd(RegHostMemID))
	require.Equal(t, reg.Bytes()[:64], r.md.Host()[:64], "BAR1 is the region")

	r.csb(0x3000, 0x4000)
	require.Zero(t, r.ptctl(PtctlCreate))
	require.Len(t, loops.starts, 1)
	c := loops.starts[0]
	require.Equal(t, uint64(0x3000), c.AtokGPA)
	require.Equal(t, uint64(0x4000), c.KtoaGPA)
	require.Len(t, c.Atok, 3*netmap.CSBEntrySize)
	require.Equal(t, 3, loops.nkicks)
	require.Nil(t, r.d.LoopStats(), "no local counters")
	require.Zero(t, r.ptctl(PtctlDelete))
	require.Equal(t, 1, loops.stops)

	require.Zero(t, r.ptctl(PtctlCreate))
	r.csb(0x5000, 0x6000) // the guest moves its CSB: the loop stops
	require.Equal(t, 2, loops.stops)
	loops.fail = errors.New("service gone")
	require.Equal(t, errIO, r.ptctl(PtctlCreate))
	loops.fail = nil
	require.Zero(t, r.ptctl(PtctlCreate))
	require.Equal(t, uint64(0x5000), loops.starts[2].AtokGPA)
}
