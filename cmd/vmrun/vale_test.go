package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/pcap"
	"github.com/ptvmm/ptvmm/backends/seqpacket"
	"github.com/ptvmm/ptvmm/backends/vale"
)

// lockedBuffer is an io.Writer safe for the service's goroutines and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testService(t *testing.T, openTap func(string) (backends.Port, io.Closer, error)) *vale.Service {
	s, err := vale.NewService(vale.ServiceConfig{Socket: filepath.Join(t.TempDir(), "sw.sock"), Logf: t.Logf, OpenTap: openTap})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() { s.Close(); <-done })
	return s
}

func vmrunVale(t *testing.T, args ...string) (int, string, string) {
	var out, errb lockedBuffer
	st := valeMain(context.Background(), args, &out, &errb)
	return st, out.String(), errb.String()
}

// `vmrun vale attach/list/detach` against a service: the TAP port appears in the
// listing with the service as owner, next to a host port with its owner's pid.
func TestValeAttachListDetach(t *testing.T) {
	var peers []int
	s := testService(t, func(name string) (backends.Port, io.Closer, error) {
		p, peer, err := seqpacket.Pair(name)
		peers = append(peers, peer)
		return p, p, err
	})
	t.Cleanup(func() {
		for _, p := range peers {
			unix.Close(p)
		}
	})
	c, err := vale.Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := c.OpenHostPort("vale0:vm1", vale.HostPortConfig{TxSlots: 64, RxSlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	if st, _, e := vmrunVale(t, "-switch", s.Path(), "attach", "vale0", "tap0"); st != 0 {
		t.Fatalf("attach: status %d: %s", st, e)
	}
	st, out, e := vmrunVale(t, "-switch", s.Path(), "list")
	if st != 0 {
		t.Fatalf("list: status %d: %s", st, e)
	}
	t.Logf("\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "SWITCH") {
		t.Fatalf("want a header and two ports, got %q", out)
	}
	var vm1, tap0 []string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		switch f[2] {
		case "vm1":
			vm1 = f
		case "tap0":
			tap0 = f
		}
	}
	if vm1 == nil || vm1[3] != "port" || vm1[4] != strconv.Itoa(os.Getpid()) || vm1[5] != "run" {
		t.Errorf("vm1 line %q: want kind port, owner %d, loop running", vm1, os.Getpid())
	}
	if tap0 == nil || tap0[3] != "tap" || tap0[4] != "service" {
		t.Errorf("tap0 line %q: want kind tap owned by the service", tap0)
	}
	if st, _, e := vmrunVale(t, "-switch", s.Path(), "detach", "vale0", "tap0"); st != 0 {
		t.Fatalf("detach: status %d: %s", st, e)
	}
	if st, _, e := vmrunVale(t, "-switch", s.Path(), "detach", "vale0", "tap0"); st != 1 || !strings.Contains(e, "no TAP") {
		t.Errorf("second detach: status %d %q, want 1 and a message", st, e)
	}
}

// `vmrun vale capture` writes a pcap file with the port's frames.
func TestValeCapture(t *testing.T) {
	s := testService(t, nil)
	c, err := vale.Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := c.OpenEndpoint("vale0:a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := c.OpenEndpoint("vale0:b")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	file := filepath.Join(t.TempDir(), "cap.pcap")
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- valeMain(ctx, []string{"-switch", s.Path(), "capture", "vale0:a", file, "-dir", "out"}, &out, &errb)
	}()
	// The capture is on once the command says so (after the service's reply).
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(errb.String(), "recording") {
		if time.Now().After(deadline) {
			t.Fatalf("capture did not start: %s", errb.String())
		}
		time.Sleep(time.Millisecond)
	}
	frame := make([]byte, 60)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1})
	for i := 0; i < 12; i++ {
		if n, err := a.Send([][]byte{frame}); n != 1 || err != nil {
			t.Fatalf("send: %d %v", n, err)
		}
	}
	got := 0
	buf := [][]byte{make([]byte, 2048)}
	lens := []int{0}
	for deadline := time.Now().Add(5 * time.Second); got < 12 && time.Now().Before(deadline); {
		n, err := b.Recv(buf, lens)
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	cancel()
	if st := <-done; st != 0 {
		t.Fatalf("capture: status %d: %s", st, errb.String())
	}
	if !strings.Contains(out.String(), "12 frames captured") {
		t.Errorf("capture said %q", out.String())
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcap.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := r.Next(); err != nil {
			break
		}
		n++
	}
	if n != 12 {
		t.Errorf("pcap holds %d frames, want 12", n)
	}
}

func TestValeUsage(t *testing.T) {
	for _, args := range [][]string{
		{}, {"frob"}, {"list", "x"}, {"attach", "vale0"}, {"attach", "sw0", "tap0"},
		{"capture", "vale0:a"}, {"capture", "-dir", "sideways", "vale0:a", "f"}, {"capture", "a", "f"},
	} {
		if st, _, _ := vmrunVale(t, append([]string{"-switch", "/nonexistent"}, args...)...); st != 2 {
			t.Errorf("vmrun vale %q: status %d, want 2", args, st)
		}
	}
	st, _, e := vmrunVale(t, "-switch", filepath.Join(t.TempDir(), "none.sock"), "list")
	if st != 1 || !strings.Contains(e, "vmrun switch") {
		t.Errorf("no service: status %d %q, want 1 and a hint to start one", st, e)
	}
}

const switchChildEnv = "PTVMM_SWITCH_TEST_SOCKET"

// `vmrun switch` as a process: SIGTERM ends it cleanly, its clients see the
// connection end at once, and the socket file is gone.
func TestSwitchSIGTERM(t *testing.T) {
	if path := os.Getenv(switchChildEnv); path != "" {
		os.Exit(switchMain(context.Background(), []string{"-socket", path}, os.Stdout, os.Stderr))
	}
	sock := filepath.Join(t.TempDir(), "sw.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestSwitchSIGTERM$")
	cmd.Env = append(os.Environ(), switchChildEnv+"="+sock)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var c *vale.Client
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var err error
		if c, err = vale.Dial(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service not up: %v\n%s", err, out.String())
		}
	}
	defer c.Close()
	if c.ServicePID() != uint32(cmd.Process.Pid) {
		t.Errorf("service pid %d, child %d", c.ServicePID(), cmd.Process.Pid)
	}
	h, err := c.OpenHostPort("vale0:x", vale.HostPortConfig{TxSlots: 32, RxSlots: 32})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := cmd.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
		if !errors.Is(c.Err(), vale.ErrServiceGone) {
			t.Errorf("client error %v, want ErrServiceGone", c.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("client did not see the service go")
	}
	if _, err := c.List(); !errors.Is(err, vale.ErrServiceGone) {
		t.Errorf("request after the end: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("vmrun switch exit: %v\n%s", err, out.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket still there: %v", err)
	}
	t.Logf("service output:\n%s", out.String())

	// A client re-attaches when the service is back.
	cmd2 := exec.Command(os.Args[0], "-test.run=^TestSwitchSIGTERM$")
	cmd2.Env = cmd.Env
	if err := cmd2.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd2.Process.Signal(unix.SIGTERM); cmd2.Wait() }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if c, err = vale.Dial(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second service not up: %v", err)
		}
	}
	defer c.Close()
	h2, err := c.OpenHostPort("vale0:x", vale.HostPortConfig{TxSlots: 32, RxSlots: 32})
	if err != nil {
		t.Fatalf("re-attach: %v", err)
	}
	h2.Close()
}

func TestSwitchFlagConflicts(t *testing.T) {
	if got := run(time.Now(), []string{"-switch", "default", "-switch-tap", "vale0:tap0"}); got != 2 {
		t.Errorf("-switch with -switch-tap: status %d, want 2", got)
	}
	var errb lockedBuffer
	if got := switchMain(context.Background(), []string{"stray"}, &errb, &errb); got != 2 {
		t.Errorf("vmrun switch stray: status %d, want 2", got)
	}
}
