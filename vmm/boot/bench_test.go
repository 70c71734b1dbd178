package boot

import "testing"

// BenchmarkLoadLinux measures the loader's share of "time to first guest instruction"
// for a Debian-sized bzImage (14 MiB) and an 8 MiB initramfs; it is dominated by the
// two copies into guest memory.
func BenchmarkLoadLinux(b *testing.B) {
	p := defaultBz()
	p.payload = 14 << 20
	kernel := fakeBzImage(p)
	initrd := make([]byte, 8<<20)
	m := newMem(b, 512*mib)
	cfg := LinuxConfig{Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 reboot=k panic=-1", CPUs: 2}
	b.SetBytes(int64(len(kernel) + len(initrd)))
	for b.Loop() {
		if _, err := LoadLinux(m, cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadMicro is the per-guest setup cost of a KVM test.
func BenchmarkLoadMicro(b *testing.B) {
	m := newMem(b, 4*mib)
	code := make([]byte, 4096)
	opt := MicroOptions{IDT: map[uint8]uint64{0x20: MicroCodeAddr, 0x80: MicroCodeAddr + 16}}
	for b.Loop() {
		if _, err := LoadMicro(m, code, opt); err != nil {
			b.Fatal(err)
		}
	}
}
