package boot

import (
	"testing"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

// FuzzParseSetupHeader feeds arbitrary images to the header parser and, when it accepts
// one, to LoadLinux: neither may panic, and an accepted header must be self-consistent.
func FuzzParseSetupHeader(f *testing.F) {
	f.Add(fakeBzImage(defaultBz()))
	p := defaultBz()
	p.setupSects = 0
	p.payload = 16
	f.Add(fakeBzImage(p))
	f.Add(fakeBzImage(defaultBz())[:0x264])
	f.Add([]byte("HdrS"))

	ram := make([]byte, 64*mib)
	m, err := memory.FromBytes([]memory.Region{{Range: memory.Range{GPA: 0, Size: uint64(len(ram))}, Host: ram, FD: -1}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, img []byte) {
		h, err := ParseSetupHeader(img)
		if err != nil {
			if h != nil {
				t.Fatal("header returned with an error")
			}
			return
		}
		if h.KernelOffset >= len(img) || h.HeaderEnd > h.KernelOffset || h.Version < MinProtocol {
			t.Fatalf("accepted inconsistent header %+v for %d bytes", h, len(img))
		}
		e, err := LoadLinux(m, LinuxConfig{Kernel: img, Initrd: []byte("x"), Cmdline: "console=ttyS0"})
		if err == nil && e.RIP != KernelLoadAddr+0x200 {
			t.Fatalf("entry %#x", e.RIP)
		}
	})
}
