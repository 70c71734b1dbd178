package netmap

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

func readable(t *testing.T, fd int) bool {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func TestEndpointOverPipe(t *testing.T) {
	a, b := endpointPair(t, "ep", PortConfig{TxSlots: 64, BufSize: 256})
	if b.Name() != "ep}0" {
		t.Errorf("name %q", b.Name())
	}
	if readable(t, b.ReadyFD()) {
		t.Fatal("ready before anything was sent")
	}
	// 60 B, exactly one buffer, and 1000 B spanning 4 buffers of 256.
	frames := [][]byte{bytes.Repeat([]byte{1}, 60), bytes.Repeat([]byte{2}, 256), bytes.Repeat([]byte{3}, 1000)}
	frames[2][999] = 0x99
	n, err := a.Send(frames)
	if err != nil || n != 3 {
		t.Fatalf("send %d, %v", n, err)
	}
	if !readable(t, b.ReadyFD()) {
		t.Fatal("ReadyFD not readable after send")
	}
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 1500)
	}
	lens := make([]int, 4)
	n, err = b.Recv(bufs, lens)
	if err != nil || n != 3 {
		t.Fatalf("recv %d, %v", n, err)
	}
	for i, f := range frames {
		if !bytes.Equal(bufs[i][:lens[i]], f) {
			t.Errorf("frame %d: got %d bytes, want %d", i, lens[i], len(f))
		}
	}
	if readable(t, b.ReadyFD()) {
		t.Error("still ready after everything was received")
	}
	// The other way, with a receive buffer too small: truncated and counted.
	if n, err := b.Send([][]byte{bytes.Repeat([]byte{7}, 300)}); n != 1 || err != nil {
		t.Fatalf("send back %d %v", n, err)
	}
	small := [][]byte{make([]byte, 100)}
	if n, err := a.Recv(small, lens[:1]); n != 1 || err != nil || lens[0] != 100 || a.Truncated() != 1 {
		t.Fatalf("truncating recv: n %d len %d truncated %d err %v", n, lens[0], a.Truncated(), err)
	}
}

// Send takes what fits and reports it; the receiver frees room and the rest goes.
func TestEndpointFull(t *testing.T) {
	m, s, err := NewPipe("full", "0", PortConfig{TxSlots: 8})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := NewEndpoint(m, true)
	defer a.Close()
	b, _ := NewEndpoint(s, true)
	defer b.Close()
	frames := make([][]byte, 20)
	for i := range frames {
		frames[i] = []byte{byte(i), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	}
	sent := 0
	bufs := [][]byte{make([]byte, 64), make([]byte, 64), make([]byte, 64)}
	lens := make([]int, 3)
	var got []byte
	for round := 0; sent < len(frames) && round < 100; round++ {
		n, err := a.Send(frames[sent:])
		if err != nil {
			t.Fatal(err)
		}
		if n > 14 {
			t.Fatalf("sent %d frames into 7+7 slots", n)
		}
		sent += n
		r, err := b.Recv(bufs, lens)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < r; i++ {
			got = append(got, bufs[i][0])
		}
	}
	for {
		r, _ := b.Recv(bufs, lens)
		if r == 0 {
			break
		}
		for i := 0; i < r; i++ {
			got = append(got, bufs[i][0])
		}
	}
	if len(got) != 20 {
		t.Fatalf("received %d frames, want 20", len(got))
	}
	for i, v := range got {
		if int(v) != i {
			t.Fatalf("frame %d is %d: order lost", i, v)
		}
	}
}

// 64 KiB buffers: a slot carries at most 65535 bytes (len is a u16).
func TestEndpointMaxBufSize(t *testing.T) {
	m, s, err := NewPipe("big", "0", PortConfig{TxSlots: 4, BufSize: MaxBufSize})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := NewEndpoint(m, true)
	defer a.Close()
	b, _ := NewEndpoint(s, true)
	defer b.Close()
	f := bytes.Repeat([]byte{5}, 65536)
	f[65535] = 6
	if n, err := a.Send([][]byte{f}); n != 1 || err != nil {
		t.Fatalf("send %d %v", n, err)
	}
	out := [][]byte{make([]byte, 70000)}
	lens := []int{0}
	if n, err := b.Recv(out, lens); n != 1 || err != nil || lens[0] != 65536 || out[0][65535] != 6 {
		t.Fatalf("recv %d len %d err %v", n, lens[0], err)
	}
}

// TestEndpointBacklog: read a frame at a time, the descriptor stays readable while
// frames are left and is drained by the Recv that takes the last one; the next
// frame makes it readable again.
func TestEndpointBacklog(t *testing.T) {
	a, b := endpointPair(t, "backlog", PortConfig{TxSlots: 16})
	frame := bytes.Repeat([]byte{5}, 60)
	if n, err := a.Send([][]byte{frame, frame, frame, frame, frame}); n != 5 || err != nil {
		t.Fatalf("send %d, %v", n, err)
	}
	bufs, lens := [][]byte{make([]byte, 2048)}, []int{0}
	for i := range 5 {
		if !readable(t, b.ReadyFD()) {
			t.Fatalf("frame %d of 5 pending, ReadyFD not readable", i)
		}
		if n, err := b.Recv(bufs, lens); n != 1 || err != nil || lens[0] != 60 {
			t.Fatalf("recv %d: %d frames (len %d), %v", i, n, lens[0], err)
		}
	}
	if readable(t, b.ReadyFD()) {
		t.Fatal("readable after the last frame was taken")
	}
	if n, err := b.Recv(bufs, lens); n != 0 || err != nil {
		t.Fatalf("empty recv: %d, %v", n, err)
	}
	if n, err := a.Send([][]byte{frame}); n != 1 || err != nil {
		t.Fatalf("send %d, %v", n, err)
	}
	if !readable(t, b.ReadyFD()) {
		t.Fatal("a new frame did not make ReadyFD readable")
	}
}

// endpointPair makes a pipe and an endpoint on each end, closed with the test.
func endpointPair(t *testing.T, name string, cfg PortConfig) (a, b *Endpoint) {
	t.Helper()
	m, s, err := NewPipe(name, "0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a, err = NewEndpoint(m, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if b, err = NewEndpoint(s, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}
