package agent

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os/signal"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/guest/pktgen"
	"github.com/ptvmm/ptvmm/guest/ptnet"
	"golang.org/x/sys/unix"
)

const pktgenUsage = "pktgen [-dev /dev/ptnetN] [-iface IFACE] [-mode tx|rx|ping|pong] [-size B] [-batch N] [-count N] [-duration D] [-rate FPS] [-ack N] [-ring I] [-uncached] [-vnet-hdr] (pktgen -h: all flags)"

// runPktgen is the pktgen built-in: guest/pktgen over a ptnet NIC through
// guest/ptnet (the ptvmm_ptnet module must be loaded), so a guest needs no
// Go toolchain to measure passthrough; or, with -iface, over any interface
// through a raw packet socket (pktgen.OpenPacket), so the same tool measures a
// virtio-net NIC. It prints the human result and the one-line
// "pktgen: mode=..." summary; status 1 on failure, 2 on bad usage.
func runPktgen(args []string, s stdio) int {
	fs := flag.NewFlagSet("pktgen", flag.ContinueOnError)
	fs.SetOutput(s.err)
	var f pktgen.Flags
	f.Register(fs)
	dev := fs.String("dev", "", "ptnet device node (default: the first ptnet bound to ptvmm_ptnet)")
	uncached := fs.Bool("uncached", false, "map BAR1 uncached, to measure what the write-back mapping gains")
	vnetHdr := fs.Bool("vnet-hdr", false, "negotiate the 12-byte virtio-net header in front of every frame")
	ring := fs.Int("ring", 0, "the TX/RX ring pair to use")
	iface := fs.String("iface", "", "send and receive on this interface (e.g. eth0) through a raw packet socket instead of a ptnet device; it is brought up first")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(s.err, "pktgen: unexpected argument %q\nusage: %s\n", fs.Arg(0), pktgenUsage)
		return 2
	}
	cfg, err := f.Config()
	if err != nil {
		fmt.Fprintln(s.err, err)
		return 2
	}
	if *iface != "" {
		if *dev != "" || *uncached || *vnetHdr || *ring != 0 {
			fmt.Fprintf(s.err, "pktgen: -iface works on a packet socket: -dev, -uncached, -vnet-hdr and -ring are ptnet's\nusage: %s\n", pktgenUsage)
			return 2
		}
		return pktgenPacket(*iface, cfg, s)
	}
	d, err := ptnet.Open(ptnet.Options{Dev: *dev, Cached: !*uncached, VnetHdr: *vnetHdr})
	if err != nil {
		fmt.Fprintf(s.err, "pktgen: %v\n", err)
		return 1
	}
	status := pktgenRun(d, cfg, *ring, s)
	if err := d.Close(); err != nil {
		fmt.Fprintf(s.err, "pktgen: %v\n", err)
		status = 1
	}
	return status
}

func pktgenRun(d *ptnet.Device, cfg pktgen.Config, ring int, s stdio) int {
	drv, err := netmap.NewDriver(d.DriverConfig())
	if err != nil {
		fmt.Fprintf(s.err, "pktgen: %v\n", err)
		return 1
	}
	tx, rx := drv.TxRing(ring), drv.RxRing(ring)
	if tx == nil || rx == nil {
		fmt.Fprintf(s.err, "pktgen: no ring pair %d (%d tx, %d rx)\n", ring, drv.NumTx(), drv.NumRx())
		return 2
	}
	// Only the rings the mode uses, so their counters are the run's.
	var vecs []int
	if cfg.Mode != pktgen.ModeRx {
		cfg.Tx = tx
		vecs = append(vecs, tx.Index())
	}
	if cfg.Mode != pktgen.ModeTx {
		cfg.Rx = rx
		vecs = append(vecs, rx.Index())
	}
	if cfg.AckEvery > 0 {
		cfg.Ack = tx // rx's acks to the sender; their interrupts are not counted
	}
	cfg.HdrLen = d.VnetHdrLen()
	// The MSI-X counts the module took, rather than the driver's wake-ups.
	cfg.Irqs = func() uint64 {
		counts, err := d.InterruptCounts()
		if err != nil {
			return 0
		}
		var n uint64
		for _, v := range vecs {
			if v < len(counts) {
				n += counts[v]
			}
		}
		return n
	}
	in := d.Info()
	mapping, kick := "uncached", "ioctl (I/O BAR0)"
	if d.Cached() {
		mapping = "write-back"
	}
	if d.RegsMapped() {
		kick = "MMIO store"
	}
	fmt.Fprintf(s.out, "pktgen: %s (memdev %s, MEMID %d): %d tx + %d rx rings of %d/%d slots, MAC %s, BAR1 %s, kicks by %s, virtio-net header %d B\n",
		d.Node(), d.Memdev(), in.MemID, in.NumTxRings, in.NumRxRings, in.NumTxSlots, in.NumRxSlots,
		net.HardwareAddr(in.MAC[:]), mapping, kick, cfg.HdrLen)

	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	res, err := pktgen.Run(ctx, cfg)
	fmt.Fprint(s.out, res.Human())
	fmt.Fprintln(s.out, res.Summary())
	if err != nil {
		fmt.Fprintf(s.err, "pktgen: %v\n", err)
		return 1
	}
	return 0
}

// pktgenPacket runs cfg on interface name through a packet socket: the link is
// brought up (a fresh guest NIC is down), then the rings are the socket's.
func pktgenPacket(name string, cfg pktgen.Config, s stdio) int {
	if err := tap.SetLinkUp(name); err != nil {
		fmt.Fprintf(s.err, "pktgen: %v\n", err)
		return 1
	}
	p, err := pktgen.OpenPacket(name)
	if err != nil {
		fmt.Fprintf(s.err, "pktgen: %v\n", err)
		return 1
	}
	defer p.Close()
	if cfg.Mode != pktgen.ModeRx {
		cfg.Tx = p.TxRing()
	}
	if cfg.Mode != pktgen.ModeTx {
		cfg.Rx = p.RxRing()
	}
	if cfg.AckEvery > 0 {
		cfg.Ack = p.TxRing()
	}
	mac, mtu := "", 0
	if ifi, err := net.InterfaceByName(name); err == nil {
		mac, mtu = ifi.HardwareAddr.String(), ifi.MTU
	}
	fmt.Fprintf(s.out, "pktgen: %s (packet socket, sendmmsg/recvmmsg): %d-slot rings, MAC %s, MTU %d\n", name, pktgen.PacketSlots, mac, mtu)
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	res, err := pktgen.Run(ctx, cfg)
	fmt.Fprint(s.out, res.Human())
	fmt.Fprintln(s.out, res.Summary())
	if err != nil {
		fmt.Fprintf(s.err, "pktgen: %v\n", err)
		return 1
	}
	return 0
}
