package virtio

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Attack cases at the transport and queue boundary (issue 9): each failed before the
// fix it names.

// bringUpModern programs queue 0 and the driver features the modern way, without
// touching the status register.
func (r *rig) modernFeatures(lo, hi uint64) {
	r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver)
	r.mw(ccDriverFeatureSel, 4, 0)
	r.mw(ccDriverFeature, 4, lo)
	r.mw(ccDriverFeatureSel, 4, 1)
	r.mw(ccDriverFeature, 4, hi)
	r.mw(ccQueueSelect, 2, 0)
	r.mw(ccQueueEnable, 2, 1) // queue 0 at address 0, size 64: valid
}

// TestDriverOKWithoutFeaturesOK: a modern driver that asks for a feature never offered
// gets FEATURES_OK refused, and its DRIVER_OK must not start the device anyway: it
// would run with the unoffered feature (TSO on a NIC configured without offloads).
func TestDriverOKWithoutFeaturesOK(t *testing.T) {
	const unoffered = 1 << 11 // HOST_TSO4: fakeDev offers bits 5 and 16 only
	t.Run("refused FEATURES_OK", func(t *testing.T) {
		r := newRig(t)
		r.modernFeatures(1<<5|unoffered, 1)
		r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
		require.Zero(t, r.mr(ccDeviceStatus, 1)&StatusFeaturesOK, "unoffered feature: FEATURES_OK refused")
		r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusDriverOK)
		assert.Empty(t, r.dev.activated, "device started without accepted features")
		assert.False(t, r.tr.Active())
		assert.NotZero(t, r.mr(ccDeviceStatus, 1)&StatusNeedsReset)
		// A reset and a proper negotiation start it.
		r.mw(ccDeviceStatus, 1, 0)
		r.modernFeatures(1<<5, 1)
		r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
		r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
		require.Len(t, r.dev.activated, 1)
		assert.Equal(t, uint64(1<<5|FVersion1), r.dev.activated[0].Features)
	})
	t.Run("never asked", func(t *testing.T) {
		r := newRig(t)
		r.modernFeatures(1<<5|unoffered, 1)
		r.mw(ccDeviceStatus, 1, StatusAcknowledge|StatusDriver|StatusDriverOK)
		assert.Empty(t, r.dev.activated, "modern driver skipped FEATURES_OK")
		assert.NotZero(t, r.mr(ccDeviceStatus, 1)&StatusNeedsReset)
	})
}

// TestUnofferedFeaturesMasked: features written through the modern registers and the
// device then started through the legacy status register (a transitional device has
// both): the device runs with what was offered, 32 legacy bits at most.
func TestUnofferedFeaturesMasked(t *testing.T) {
	r := newRig(t)
	r.modernFeatures(1<<5|1<<11|1<<7, 1|1<<3)
	r.out(legQueuePFN, 4, 0x10)
	r.out(legStatus, 1, StatusAcknowledge|StatusDriver|StatusDriverOK)
	require.Len(t, r.dev.activated, 1)
	a := r.dev.activated[0]
	assert.True(t, a.Legacy)
	assert.Equal(t, uint64(1<<5), a.Features, "only offered legacy bits")
}

// TestUnpopNeverReplaysADrop: a chain given back after Pop skipped a malformed chain
// behind it must not make the malformed one be dropped (and pushed) again: the driver
// would see its buffer returned twice, and a device retrying a receive would fill the
// used ring with copies forever.
func TestUnpopNeverReplaysADrop(t *testing.T) {
	d := newDriver(t, 8, false, false)
	good := d.chain(d.buf(64, true))
	d.avail(good)
	d.nextDesc = 1
	d.putDesc(descGPA, 1, ramSize-8, 16, DescFWrite, 0) // buffer outside RAM
	d.avail(1)
	var a, b Chain
	ok, err := d.q.Pop(&a)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = d.q.Pop(&b)
	require.NoError(t, err)
	require.False(t, ok, "the malformed chain is dropped, nothing else is pending")
	for i := 0; i < 3; i++ {
		d.q.Unpop(&a) // refused now: b's drop lies between
		for {
			ok, err := d.q.Pop(&b)
			require.NoError(t, err)
			if !ok {
				break
			}
		}
	}
	d.q.Flush()
	ids, lens := d.used()
	assert.Equal(t, []uint32{1}, ids, "the malformed chain is returned exactly once")
	assert.Equal(t, []uint32{0}, lens)
	assert.Equal(t, uint64(1), d.q.Stats().Dropped)
}
