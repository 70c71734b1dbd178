package bus

import (
	"errors"
	"sync"
	"testing"
)

type rec struct {
	mu     sync.Mutex
	reads  []uint64
	writes []uint64
	fill   byte
}

func (r *rec) Read(off uint64, data []byte) {
	r.mu.Lock()
	r.reads = append(r.reads, off)
	r.mu.Unlock()
	for i := range data {
		data[i] = r.fill
	}
}

func (r *rec) Write(off uint64, data []byte) {
	r.mu.Lock()
	r.writes = append(r.writes, off)
	r.mu.Unlock()
}

func TestRegisterRejectsOverlap(t *testing.T) {
	b := New("test")
	if err := b.Register(0x100, 0x10, &rec{}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name       string
		base, size uint64
	}{
		{"same", 0x100, 0x10},
		{"inside", 0x104, 0x2},
		{"covers", 0xf0, 0x100},
		{"tail overlaps head", 0xf8, 0x9},
		{"head overlaps tail", 0x10f, 0x10},
	}
	for _, c := range cases {
		err := b.Register(c.base, c.size, &rec{})
		if !errors.Is(err, ErrOverlap) {
			t.Errorf("%s: Register(%#x,%#x) = %v, want ErrOverlap", c.name, c.base, c.size, err)
		}
	}
	// Adjacent windows on both sides are fine.
	if err := b.Register(0xf0, 0x10, &rec{}); err != nil {
		t.Errorf("adjacent below: %v", err)
	}
	if err := b.Register(0x110, 0x10, &rec{}); err != nil {
		t.Errorf("adjacent above: %v", err)
	}
}

func TestRegisterRejectsWrapAndZero(t *testing.T) {
	b := New("test")
	if err := b.Register(^uint64(0)-3, 8, &rec{}); err == nil {
		t.Error("wrapping window accepted")
	}
	if err := b.Register(0x10, 0, &rec{}); err == nil {
		t.Error("zero-size window accepted")
	}
	if err := b.Register(0x10, 1, nil); err == nil {
		t.Error("nil device accepted")
	}
	// The very top of the address space is a valid, non-wrapping window.
	top := &rec{fill: 7}
	if err := b.Register(^uint64(0)-7, 8, top); err != nil {
		t.Fatalf("top window: %v", err)
	}
	d := make([]byte, 1)
	if !b.Read(^uint64(0), d) || d[0] != 7 {
		t.Errorf("read at top = %v %v", d, top.reads)
	}
}

func TestDispatch(t *testing.T) {
	b := New("test")
	a, c := &rec{fill: 0xaa}, &rec{fill: 0xcc}
	if err := b.Register(0x3f8, 8, a); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0x60, 1, c); err != nil {
		t.Fatal(err)
	}
	d := make([]byte, 2)
	if !b.Read(0x3fd, d) || d[0] != 0xaa || d[1] != 0xaa {
		t.Errorf("read 0x3fd: %x", d)
	}
	if len(a.reads) != 1 || a.reads[0] != 5 {
		t.Errorf("device saw offsets %v, want [5]", a.reads)
	}
	if !b.Write(0x60, []byte{1}) || len(c.writes) != 1 || c.writes[0] != 0 {
		t.Errorf("write 0x60: %v", c.writes)
	}
	// Just past the end of a window and a hole are unclaimed.
	if b.Read(0x400, d) || d[0] != 0xff || d[1] != 0xff {
		t.Errorf("unclaimed read = %x, want ffff", d)
	}
	if b.Write(0x61, []byte{1}) {
		t.Error("write to hole claimed")
	}
	if b.Read(0x3f7, d) {
		t.Error("read just below window claimed")
	}
}

func TestUnregister(t *testing.T) {
	b := New("test")
	r := &rec{}
	if err := b.Register(0x1000, 0x100, r); err != nil {
		t.Fatal(err)
	}
	if err := b.Unregister(0x1001); !errors.Is(err, ErrNotFound) {
		t.Errorf("unregister inside window: %v, want ErrNotFound", err)
	}
	if err := b.Unregister(0x1000); err != nil {
		t.Fatal(err)
	}
	if b.Write(0x1000, []byte{0}) {
		t.Error("write after unregister claimed")
	}
	if err := b.Unregister(0x1000); !errors.Is(err, ErrNotFound) {
		t.Errorf("second unregister: %v", err)
	}
	// The window can be reused.
	if err := b.Register(0x1000, 0x100, r); err != nil {
		t.Errorf("re-register: %v", err)
	}
}

func TestConcurrentDispatchAndRegister(t *testing.T) {
	b := New("test")
	r := &rec{fill: 1}
	if err := b.Register(0, 16, r); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := make([]byte, 4)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !b.Read(8, d) || d[0] != 1 {
					t.Error("fixed device lost during concurrent registration")
					return
				}
			}
		}()
	}
	for i := uint64(1); i <= 500; i++ {
		if err := b.Register(i*0x100, 0x10, &rec{}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := b.Unregister(i * 0x100); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
}

func BenchmarkDispatch(b *testing.B) {
	bus := New("bench")
	for i := uint64(0); i < 32; i++ {
		if err := bus.Register(i*0x10, 8, &rec{}); err != nil {
			b.Fatal(err)
		}
	}
	var nop nopDev
	if err := bus.Register(0x3f8, 8, nop); err != nil {
		b.Fatal(err)
	}
	d := make([]byte, 1)
	b.ReportAllocs()
	for b.Loop() {
		bus.Write(0x3f8, d)
	}
}

type nopDev struct{}

func (nopDev) Read(uint64, []byte)  {}
func (nopDev) Write(uint64, []byte) {}
