package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"
)

const pingUsage = "ping [-c N] [-i INTERVAL] [-W WAIT] [-s SIZE] ADDR (ICMP echo to an IPv4 address)"

// pingOptions are ping's flags.
type pingOptions struct {
	count    int           // 0: until interrupted
	interval time.Duration // between requests
	wait     time.Duration // for replies after the last request
	size     int           // payload bytes
}

// runPing is the ping built-in: ICMP echo requests over a raw socket (root)
// or, failing that, an ICMP datagram socket (net.ipv4.ping_group_range),
// with iputils' per-reply lines and closing statistics. Status 0 when a
// reply came, 1 when none did, 2 on bad usage or a socket error.
func runPing(args []string, s stdio) int {
	fs := flag.NewFlagSet("ping", flag.ContinueOnError)
	fs.SetOutput(s.err)
	count := fs.Int("c", 0, "stop after N requests (0: until interrupted)")
	interval := fs.String("i", "1", "seconds (or a duration like 200ms) between requests, at least 1ms")
	wait := fs.String("W", "5", "seconds (or a duration) to wait for replies after the last request")
	size := fs.Int("s", 56, "payload bytes")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(s.err, "ping: "+format+"\nusage: %s\n", append(a, pingUsage)...)
		return 2
	}
	if fs.NArg() != 1 {
		return usage("want one address, got %d arguments", fs.NArg())
	}
	dst, err := netip.ParseAddr(fs.Arg(0))
	if err != nil || !dst.Is4() {
		return usage("%q is not an IPv4 address", fs.Arg(0))
	}
	o := pingOptions{count: *count, size: *size}
	if o.count < 0 {
		return usage("-c %d: want 0 or more", o.count)
	}
	if o.size < 0 || o.size > 65507-icmpHdrLen {
		return usage("-s %d: want 0..%d", o.size, 65507-icmpHdrLen)
	}
	if o.interval, err = parseSleep(*interval); err != nil || o.interval < time.Millisecond {
		return usage("-i %q: want at least 1ms, in seconds or as a duration", *interval)
	}
	if o.wait, err = parseSleep(*wait); err != nil {
		return usage("-W %q: want seconds or a duration", *wait)
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	return ping(ctx, dst, o, s)
}

// pingSocket is an open ICMP socket; raw says reads carry the IP header.
type pingSocket struct {
	fd  int
	raw bool
}

func (p *pingSocket) close() error { return unix.Close(p.fd) }

func openPingSocket() (*pingSocket, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err == nil {
		return &pingSocket{fd: fd, raw: true}, nil
	}
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
		return nil, fmt.Errorf("raw ICMP socket: %w", err)
	}
	fd, derr := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if derr != nil {
		return nil, fmt.Errorf("raw ICMP socket: %v; ICMP datagram socket: %w (run as root, or allow this group in net.ipv4.ping_group_range)", err, derr)
	}
	// The TTL of each reply comes as a control message.
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVTTL, 1)
	return &pingSocket{fd: fd}, nil
}

// pending is one request sent and not yet answered (or answered: got).
type pending struct {
	at  time.Time
	got bool
}

// ping sends o.count requests (0: until ctx ends) to dst, one per
// o.interval, prints each reply and then the statistics.
func ping(ctx context.Context, dst netip.Addr, o pingOptions, s stdio) int {
	sock, err := openPingSocket()
	if err != nil {
		fmt.Fprintf(s.err, "ping: %v\n", err)
		return 2
	}
	defer sock.close()
	// Woken by ctx (SIGINT) through an eventfd, so the wait below is one
	// poll and nothing wakes on a timer.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		fmt.Fprintf(s.err, "ping: eventfd: %v\n", err)
		return 2
	}
	wctx, cancel := context.WithCancel(ctx)
	woke := make(chan struct{})
	go func() {
		defer close(woke)
		<-wctx.Done()
		_, _ = unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}()
	// The waker is gone before its fd is closed.
	defer func() { cancel(); <-woke; unix.Close(efd) }()

	payload := pingPayload(o.size)
	id := uint16(os.Getpid())
	to := &unix.SockaddrInet4{Addr: dst.As4()}
	fmt.Fprintf(s.out, "PING %s (%s) %d(%d) bytes of data.\n", dst, dst, o.size, o.size+icmpHdrLen+20)

	var (
		st      pingStats
		sent    = map[uint16]*pending{} // at most 65536 entries: keyed by seq
		seq     uint16
		start   = time.Now()
		next    = start
		linger  time.Time // after the last request: stop waiting then
		buf     = make([]byte, 65536)
		oob     = make([]byte, 128)
		pfds    = []unix.PollFd{{Fd: int32(sock.fd), Events: unix.POLLIN}, {Fd: int32(efd), Events: unix.POLLIN}}
		stopped bool
	)
	done := func() bool { return o.count > 0 && st.sent+st.errors >= o.count }
	for !stopped {
		now := time.Now()
		if !done() && !now.Before(next) {
			seq++
			if err := unix.Sendto(sock.fd, echoRequest(id, seq, payload), 0, to); err != nil {
				st.errors++
				fmt.Fprintf(s.err, "ping: sendto %s icmp_seq=%d: %v\n", dst, seq, err)
			} else {
				st.sent++
				sent[seq] = &pending{at: now}
			}
			if next = next.Add(o.interval); next.Before(now) {
				next = now.Add(o.interval)
			}
			if done() {
				linger = now.Add(o.wait)
			}
		}
		if done() && (st.received >= st.sent || !now.Before(linger)) {
			break
		}
		until := next
		if done() {
			until = linger
		}
		// Rounded up, and never negative: poll waits forever on -1.
		ms := max(0, int((time.Until(until)+time.Millisecond-1)/time.Millisecond))
		n, err := unix.Poll(pfds, ms)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			fmt.Fprintf(s.err, "ping: poll: %v\n", err)
			return 2
		case n == 0:
			continue
		}
		if pfds[1].Revents != 0 {
			stopped = true
		}
		if pfds[0].Revents != 0 {
			readReplies(sock, buf, oob, id, payload, sent, &st, s)
		}
	}
	fmt.Fprintf(s.out, "\n%s", st.summary(dst, time.Since(start)))
	if st.received == 0 {
		return 1
	}
	return 0
}

// readReplies reads every datagram queued on the socket and prints the echo
// replies that answer our requests; others are skipped.
func readReplies(sock *pingSocket, buf, oob []byte, id uint16, payload []byte, sent map[uint16]*pending, st *pingStats, s stdio) {
	// Bounded: a flood of foreign ICMP must not keep us from sending.
	for range 256 {
		n, oobn, _, sa, err := unix.Recvmsg(sock.fd, buf, oob, unix.MSG_DONTWAIT)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return // EAGAIN: drained
		}
		now := time.Now()
		r, err := parseReply(buf[:n], sock.raw)
		if err != nil {
			continue
		}
		// A raw socket sees every ICMP message of the host; a datagram
		// socket only its own, whose id the kernel chose.
		if sock.raw && r.ID != id {
			continue
		}
		p, ok := sent[r.Seq]
		if !ok {
			continue
		}
		if r.TTL < 0 {
			r.TTL = recvTTL(oob[:oobn])
		}
		if sa4, ok := sa.(*unix.SockaddrInet4); ok && !r.From.IsValid() {
			r.From = netip.AddrFrom4(sa4.Addr)
		}
		line := fmt.Sprintf("%d bytes from %s: icmp_seq=%d", icmpHdrLen+len(r.Data), addrOr(r.From, "?"), r.Seq)
		if r.TTL >= 0 {
			line += fmt.Sprintf(" ttl=%d", r.TTL)
		}
		rtt := now.Sub(p.at)
		line += fmt.Sprintf(" time=%.3f ms", msf(rtt))
		if p.got {
			st.dups++
			line += " (DUP!)"
		} else {
			p.got = true
			st.add(rtt)
		}
		if !bytes.Equal(r.Data, payload) {
			line += " (wrong data)"
		}
		fmt.Fprintln(s.out, line)
	}
}

func addrOr(a netip.Addr, def string) string {
	if a.IsValid() {
		return a.String()
	}
	return def
}

// recvTTL is the IP_TTL control message's value, or -1.
func recvTTL(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TTL && len(m.Data) >= 4 {
			return int(int32(binary.NativeEndian.Uint32(m.Data)))
		}
	}
	return -1
}
