package vmm_test

import (
	"context"
	"log"
	"os"

	"github.com/ptvmm/ptvmm/vmm"
)

// Boot a kernel with an initramfs, console on stdout, one virtio-net NIC on a TAP.
// (No Output comment: it needs a host with hardware KVM, so it is compiled, not run.)
func Example() {
	v, err := vmm.New(vmm.Config{
		Kernel:  ".cache/kernel/vmlinuz",
		Initrd:  "guest.cpio",
		Cmdline: "console=ttyS0 reboot=k panic=-1",
		MemSize: 512 << 20,
		CPUs:    2,
		Console: os.Stdout,
	})
	if err != nil {
		log.Fatal(err) // e.g. vmm.ErrNoKVM, vmm.ErrNoHardwareVirt
	}
	defer v.Close()
	if _, err := v.AddNIC(0, vmm.NIC{Tap: "tap0", Queues: 2}); err != nil {
		log.Fatal(err)
	}
	// Run returns nil when the guest shuts down; v.Stop() from another goroutine
	// ends it too.
	if err := v.Run(context.Background()); err != nil {
		log.Fatal(err)
	}
}
