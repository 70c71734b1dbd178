package vale

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/guest/pktgen"
	"github.com/ptvmm/ptvmm/notify"
)

// pktgenPair runs pktgen tx on one ring and rx on another until count frames were
// sent and the receiver went idle; it returns both results.
func pktgenPair(ctx context.Context, tx, rx pktgen.Ring, count uint64, size int) (pktgen.Result, pktgen.Result, error) {
	type out struct {
		r   pktgen.Result
		err error
	}
	rxc := make(chan out, 1)
	go func() {
		r, err := pktgen.Run(ctx, pktgen.Config{Mode: pktgen.ModeRx, Rx: rx, Count: count, Idle: 300 * time.Millisecond})
		rxc <- out{r, err}
	}()
	t, err := pktgen.Run(ctx, pktgen.Config{Mode: pktgen.ModeTx, Tx: tx, Count: count, FrameSize: size})
	r := <-rxc
	if err == nil {
		err = r.err
	}
	return t, r.r, err
}

// pktgen runs on host ports of the service, over a pipe (every frame arrives:
// a pipe holds what its peer has no room for) and over a switch.
func TestServicePktgen(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c := dial(t, s.Path())
	m := openHost(t, c, "pg{1", 256)
	sl := openHost(t, c, "pg}1", 256)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, rr, err := pktgenPair(ctx, m.TxRing(0), sl.RxRing(0), 20000, 60)
	require.NoError(t, err)
	require.Equal(t, uint64(20000), tr.Frames)
	require.Equal(t, uint64(20000), rr.Frames, "a pipe loses nothing")
	require.Zero(t, rr.Lost+rr.Bad+rr.OOO)
	t.Logf("pipe: tx %s", tr.Summary())
	t.Logf("pipe: rx %s", rr.Summary())

	a := openHost(t, c, "vale0:pa", 256)
	b := openHost(t, c, "vale0:pb", 256)
	tr, rr, err = pktgenPair(ctx, a.TxRing(0), b.RxRing(0), 20000, 60)
	require.NoError(t, err)
	es, err := c.List()
	require.NoError(t, err)
	eb := findEntry(es, "vale0", "pb")
	require.Equal(t, uint64(20000), findEntry(es, "vale0", "pa").TxFrames)
	require.Equal(t, eb.RxFrames, rr.Frames, "pktgen counted what the switch delivered")
	require.Equal(t, uint64(20000), eb.RxFrames+eb.NoSpace, "delivered or dropped for room, nothing else")
	t.Logf("switch: tx %s", tr.Summary())
	t.Logf("switch: rx %s (%d dropped for room)", rr.Summary(), eb.NoSpace)
}

const benchServiceEnv = "PTVMM_VALE_BENCH_SERVICE"

// TestServiceBenchChild is the switch service process of BenchmarkServicePktgen.
func TestServiceBenchChild(t *testing.T) {
	path := os.Getenv(benchServiceEnv)
	if path == "" {
		t.Skip("helper process of BenchmarkServicePktgen")
	}
	s, err := NewService(ServiceConfig{Socket: path})
	require.NoError(t, err)
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); s.Close() }()
	require.NoError(t, s.Serve())
}

// benchPorts is one path: a TX and an RX ring driven through their CSBs.
type benchPorts struct {
	tx, rx *netmap.DriverRing
	close  func()
}

func serviceProc(b *testing.B) string {
	path := filepath.Join(b.TempDir(), "sw.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestServiceBenchChild$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchServiceEnv+"="+path)
	cmd.Stderr = os.Stderr
	require.NoError(b, cmd.Start())
	b.Cleanup(func() { _ = cmd.Process.Signal(unix.SIGTERM); _ = cmd.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if c, err := Dial(path); err == nil {
			c.Close()
			return path
		}
		require.True(b, time.Now().Before(deadline), "service process did not come up")
	}
}

func serviceBenchPorts(b *testing.B, path, kind string) *benchPorts {
	c, err := Dial(path)
	require.NoError(b, err)
	names := [2]string{"vale0:btx", "vale0:brx"}
	if kind == "pipe" {
		names = [2]string{"bp{1", "bp}1"}
	}
	cfg := HostPortConfig{TxSlots: 1024, RxSlots: 1024}
	t, err := c.OpenHostPort(names[0], cfg)
	require.NoError(b, err)
	r, err := c.OpenHostPort(names[1], cfg)
	require.NoError(b, err)
	return &benchPorts{tx: t.TxRing(0), rx: r.RxRing(0), close: func() { t.Close(); r.Close(); c.Close() }}
}

func localBenchPorts(b *testing.B, kind string) *benchPorts {
	var pt, pr *netmap.Port
	var closers []func()
	if kind == "pipe" {
		m, s, err := netmap.NewPipe("bp", "1", netmap.PortConfig{TxSlots: 1024, RxSlots: 1024})
		require.NoError(b, err)
		pt, pr = m, s
		closers = append(closers, func() { m.Close(); s.Close() })
	} else {
		sw, err := New("vale0")
		require.NoError(b, err)
		a, err := sw.NewPort("btx", netmap.PortConfig{TxSlots: 1024, RxSlots: 1024})
		require.NoError(b, err)
		r, err := sw.NewPort("brx", netmap.PortConfig{TxSlots: 1024, RxSlots: 1024})
		require.NoError(b, err)
		pt, pr = a.Netmap(), r.Netmap()
		closers = append(closers, func() { a.Detach(); r.Detach() })
	}
	lt, err := netmap.StartLocal(pt, notify.Block)
	require.NoError(b, err)
	lr, err := netmap.StartLocal(pr, notify.Block)
	require.NoError(b, err)
	return &benchPorts{tx: lt.Driver.TxRing(0), rx: lr.Driver.RxRing(0),
		close: func() {
			lt.Close()
			lr.Close()
			for _, f := range closers {
				f()
			}
		}}
}

// BenchmarkServicePktgen: host pktgen to host pktgen (tx on one port, rx on the
// other, each through its CSB and its port's host loop, Block mode), over a
// switch and over a pipe; "service" runs the ports and loops in a switch service
// process (vmrun switch), "local" the same ports and loops in this process
// (netmap.StartLocal). One op = one frame sent. Reported: Mpps sent (tx, until
// the ring drained) and received (rx, first to last frame), kicks and interrupts
// per frame (both pktgens' rings), frames received per frame sent (a switch drops
// what finds the receiver's ring full; a pipe holds it).
func BenchmarkServicePktgen(b *testing.B) {
	for _, where := range []string{"local", "service"} {
		for _, kind := range []string{"switch", "pipe"} {
			for _, size := range []int{60, 1514} {
				b.Run(fmt.Sprintf("%s/%s/size=%d", where, kind, size), func(b *testing.B) {
					var p *benchPorts
					if where == "service" {
						p = serviceBenchPorts(b, serviceProc(b), kind)
					} else {
						p = localBenchPorts(b, kind)
					}
					defer p.close()
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
					defer cancel()
					b.ResetTimer()
					tr, rr, err := pktgenPair(ctx, p.tx, p.rx, uint64(b.N), size)
					b.StopTimer()
					require.NoError(b, err)
					f := float64(b.N)
					b.ReportMetric(tr.Mpps(), "tx-Mpps")
					b.ReportMetric(rr.Mpps(), "rx-Mpps")
					b.ReportMetric(float64(tr.Kicks+rr.Kicks)/f, "kicks/frame")
					b.ReportMetric(float64(tr.Irqs+rr.Irqs)/f, "irqs/frame")
					b.ReportMetric(float64(rr.Frames)/f, "rx/frame")
				})
			}
		}
	}
}
