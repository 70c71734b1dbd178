package vale

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// startService runs a service on a socket in a temporary directory; it is closed
// when the test ends.
func startService(t testing.TB, cfg ServiceConfig) *Service {
	t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(t.TempDir(), "switch.sock")
	}
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	s, err := NewService(cfg)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		require.NoError(t, s.Close())
		require.NoError(t, <-done)
	})
	return s
}

func dial(t testing.TB, path string) *Client {
	t.Helper()
	c, err := Dial(path)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func openHost(t testing.TB, c *Client, name string, slots int) *HostPort {
	t.Helper()
	h, err := c.OpenHostPort(name, HostPortConfig{TxSlots: slots, RxSlots: slots})
	require.NoError(t, err)
	t.Cleanup(func() { h.Close() })
	return h
}

// hostSend puts frames in TX ring 0 of h and syncs, waiting for room when the ring
// is full.
func hostSend(t testing.TB, h *HostPort, frames ...[]byte) {
	t.Helper()
	tx := h.TxRing(0)
	r := tx.Ring()
	for len(frames) > 0 {
		for r.Space() == 0 {
			ok, err := tx.Wait(5 * time.Second)
			require.NoError(t, err)
			require.True(t, ok, "no TX room within 5s")
		}
		hd := r.Head()
		n := min(int(r.Space()), len(frames))
		for _, f := range frames[:n] {
			sl := r.Slot(hd)
			copy(r.Buf(sl.BufIdx), f)
			sl.Len, sl.Flags = uint16(len(f)), 0
			r.SetSlot(hd, sl)
			hd = r.Next(hd)
		}
		r.SetHeadCur(hd, hd)
		require.NoError(t, tx.Sync(0))
		frames = frames[n:]
	}
}

// hostRecv collects frames from RX ring 0 of h until want arrived or timeout.
func hostRecv(t testing.TB, h *HostPort, want int, timeout time.Duration) [][]byte {
	t.Helper()
	rx := h.RxRing(0)
	r := rx.Ring()
	var out [][]byte
	deadline := time.Now().Add(timeout)
	for len(out) < want {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		ok, err := rx.Wait(left)
		require.NoError(t, err)
		if !ok {
			break
		}
		hd := r.Head()
		for ; hd != r.Tail(); hd = r.Next(hd) {
			sl := r.Slot(hd)
			out = append(out, append([]byte(nil), r.Buf(sl.BufIdx)[:sl.Len]...))
		}
		r.SetHeadCur(hd, hd)
		require.NoError(t, rx.Sync(0))
	}
	return out
}

// from keeps the frames whose source MAC is src.
func from(frames [][]byte, src []byte) [][]byte {
	var out [][]byte
	for _, f := range frames {
		if len(f) >= 12 && string(f[6:12]) == string(src) {
			out = append(out, f)
		}
	}
	return out
}

func frames(dst, src []byte, n int, first uint32) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = eth(dst, src, 60, first+uint32(i))
	}
	return out
}

func findEntry(es []ListEntry, sw, name string) *ListEntry {
	for i := range es {
		if es[i].Switch == sw && es[i].Name == name {
			return &es[i]
		}
	}
	return nil
}

// waitFor polls cond (a condition on the service's state, seen through its
// socket) until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

// openFDs lists this process's descriptors with their link targets.
func openFDs(t testing.TB) map[int]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	out := map[int]string{}
	for _, e := range ents {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			out[fd] = l
		}
	}
	return out
}

// inodeOpen says some descriptor of this process refers to inode ino.
func inodeOpen(t testing.TB, ino uint64) bool {
	for fd, link := range openFDs(t) {
		if !strings.HasPrefix(link, "/memfd:") {
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Ino == ino {
			return true
		}
	}
	return false
}

// learn makes port h's MAC known to the switch (one broadcast frame).
func learn(t testing.TB, h *HostPort, src []byte) {
	hostSend(t, h, eth(bcastMAC, src, 60, 0xffffffff))
}

var _ = netmap.NSMoreFrag
