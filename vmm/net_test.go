package vmm

import (
	"encoding/binary"
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// TestAddNIC adds a NIC to a real KVM VM: the TAP is created, the transitional
// virtio-net function answers on the PCI bus with MSI-X, and Close removes the TAP.
func TestAddNIC(t *testing.T) {
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create TAP interfaces: " + why)
	}
	v := newMicro(t, spin, newNotifyWriter(), 1)
	name := fmt.Sprintf("ptvn%d", os.Getpid()%100000)
	require.False(t, tap.Exists(name))
	nd, err := v.AddNIC(0, NIC{Tap: name, Queues: 2, MTU: 9000})
	require.NoError(t, err)
	assert.True(t, tap.Exists(name))
	assert.True(t, nd.Tap.Created())
	f := nd.Function
	id := make([]byte, 4)
	f.ReadConfig(pci.RegVendorID, id)
	assert.Equal(t, uint32(0x1000_1af4), binary.LittleEndian.Uint32(id))
	require.NotNil(t, f.MSIX())
	assert.Equal(t, 1+5, f.MSIX().Vectors(), "config + 2 pairs + ctrl")
	assert.Equal(t, DefaultMAC(0), nd.Net.MAC())

	// A second NIC on the same TAP name in another slot fails cleanly (TAP busy
	// without multi-queue flags matching), leaving the first intact.
	_, err = v.AddNIC(1, NIC{Tap: name, Slot: f.Slot()})
	require.Error(t, err)

	require.NoError(t, nd.Close())
	assert.False(t, tap.Exists(name), "a TAP AddNIC created is removed on Close")
	assert.Nil(t, v.PCI().Function(f.Slot()))
}

// TestNICClosedWithVM: a NIC the caller never closes goes away with the VM, its TAP
// included, without errors from deassigning on a closed VM fd.
func TestNICClosedWithVM(t *testing.T) {
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create TAP interfaces: " + why)
	}
	kvmOrSkip(t)
	v, err := New(Config{Micro: &Micro{Code: spin, Options: pioOpts}})
	require.NoError(t, err)
	name := fmt.Sprintf("ptvc%d", os.Getpid()%100000)
	_, err = v.AddNIC(0, NIC{Tap: name})
	require.NoError(t, err)
	require.True(t, tap.Exists(name))
	require.NoError(t, v.Close())
	assert.False(t, tap.Exists(name))
	_, ok := routingTables.Load(v)
	assert.False(t, ok, "routing table entry dropped")
}
