package vale

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/pcap"
)

func readPcap(t *testing.T, path string) [][]byte {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	r, err := pcap.NewReader(f)
	require.NoError(t, err)
	var out [][]byte
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		require.Equal(t, len(rec.Data), rec.OrigLen)
		out = append(out, append([]byte(nil), rec.Data...))
	}
}

func tsharkLens(t *testing.T, path string) ([]int, bool) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		return nil, false
	}
	out, err := exec.Command(tshark, "-r", path, "-T", "fields", "-e", "frame.len").CombinedOutput()
	require.NoError(t, err, "%s", out)
	var lens []int
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if n, err := strconv.Atoi(strings.TrimSpace(l)); err == nil {
			lens = append(lens, n)
		}
	}
	return lens, true
}

// TestPcapMonitor captures both directions of a port into pcap files and reads them
// back with this package's reader and with tshark.
func TestPcapMonitor(t *testing.T) {
	_, ps, us := newPorts(t, 3, 256)
	a, b, c := us[0], us[1], us[2]
	dir := t.TempDir()
	rxPath, txPath := filepath.Join(dir, "b-rx.pcap"), filepath.Join(dir, "b-tx.pcap")
	rxw, err := pcap.Create(rxPath, 0)
	require.NoError(t, err)
	txw, err := pcap.Create(txPath, 0)
	require.NoError(t, err)
	require.NoError(t, ps[1].AddMonitor(rxw, MonitorRX))
	require.NoError(t, ps[1].AddMonitor(txw, MonitorTX))
	require.Error(t, ps[1].AddMonitor(nil, MonitorRX))

	var wantRX, wantTX [][]byte
	for i := 0; i < 20; i++ {
		f := eth(mac(0xb), mac(0xa), 60+i*70, uint32(i))
		a.send(f)
		wantRX = append(wantRX, f)
	}
	// A MOREFRAG chain is recorded as one packet.
	chain := eth(bcastMAC, mac(0xc), 3000, 99)
	c.queueChain(chain[:1000], chain[1000:2000], chain[2000:])
	require.NoError(t, c.p.TxSync(0))
	wantRX = append(wantRX, chain)
	for i := 0; i < 5; i++ {
		f := eth(mac(0xa), mac(0xb), 64, uint32(100+i))
		b.send(f)
		wantTX = append(wantTX, f)
	}
	b.send(eth(mac(0xa), mac(0xb), 10, 0)) // a runt: dropped, but the port did send it
	wantTX = append(wantTX, eth(mac(0xa), mac(0xb), 10, 0))
	assert.Len(t, b.recv(), len(wantRX))
	ps[1].RemoveMonitor(rxw)
	a.send(eth(mac(0xb), mac(0xa), 60, 1000)) // not captured any more
	require.NoError(t, rxw.Close())
	require.NoError(t, txw.Close())

	assert.Equal(t, wantRX, readPcap(t, rxPath))
	assert.Equal(t, wantTX, readPcap(t, txPath))

	lens, ok := tsharkLens(t, rxPath)
	if !ok {
		t.Skip("tshark not installed (Debian package tshark): checked with the built-in reader only")
	}
	var want []int
	for _, f := range wantRX {
		want = append(want, len(f))
	}
	assert.Equal(t, want, lens, "tshark frame lengths")
	lens, _ = tsharkLens(t, txPath)
	assert.Len(t, lens, len(wantTX))
}

// TestMonitorErrorsAreCounted: a failing monitor costs the sender nothing.
func TestMonitorErrorsAreCounted(t *testing.T) {
	_, ps, us := newPorts(t, 2, 64)
	var buf bytes.Buffer
	w, err := pcap.NewWriter(&buf, 0)
	require.NoError(t, err)
	require.NoError(t, w.Close()) // every later write fails
	require.NoError(t, ps[0].AddMonitor(w, MonitorBoth))
	us[0].send(eth(mac(0xb), mac(0xa), 60, 1))
	assert.Equal(t, []uint32{1}, tags(us[1].recv()))
	assert.Equal(t, uint64(1), ps[0].Counters().MonitorErrors)
}

func TestRegistryCapture(t *testing.T) {
	r := NewRegistry()
	a, err := r.NewPort("vale0:a", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer a.Detach()
	b, err := r.NewPort("vale0:b", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer b.Detach()
	path := filepath.Join(t.TempDir(), "a.pcap")
	dir, err := ParseDirection("tx")
	require.NoError(t, err)
	_, err = ParseDirection("sideways")
	require.Error(t, err)
	for _, bad := range []string{"vale0", "vale9:a", "vale0:zz"} {
		_, err := r.Capture(bad, dir, path, 0)
		require.Error(t, err, bad)
	}
	stop, err := r.Capture("vale0:a", dir, path, 0)
	require.NoError(t, err)
	ua := newUser(t, a)
	ua.send(eth(mac(0xb), mac(0xa), 60, 1), eth(mac(0xb), mac(0xa), 70, 2))
	newUser(t, b).send(eth(mac(0xa), mac(0xb), 80, 3)) // rx of a: not captured
	require.NoError(t, stop())
	got := readPcap(t, path)
	assert.Equal(t, []uint32{1, 2}, tags(got))
}
