// Package kvm is a thin layer over the Linux KVM ioctl API (x86-64): the system fd,
// VMs, memory slots, vCPUs with their shared kvm_run page, registers, CPUID, MSRs,
// the in-kernel irqchip and PIT, and exit decoding. Nothing else: devices, boot and
// policy live in other packages.
//
// We write our own instead of building on gokvm (github.com/bobuhiro11/gokvm): its
// machine, virtio and pci packages are unsuitable for this VMM (no ioeventfd/irqfd,
// timer polling, unchecked guest memory indexing), and the kvm structures we need are
// few and small enough to define here with sizes and offsets checked against
// linux/kvm.h in tests. Owning the layer also gives us full control over
// ioeventfd, irqfd and GSI routing (irq.go), which the fast paths are built on.
//
// Layout: structures passed to the kernel by pointer are Go structs whose field order
// and sizes match linux/kvm.h exactly (no implicit padding); variable-length ones
// (kvm_cpuid2, kvm_msrs) and the kvm_run page are encoded and decoded as bytes at
// explicit offsets. All unsafe conversions are in kvm_unsafe.go.
//
// Concurrency: a System and a VM may be used from any goroutine. A VCPU's Run and
// register methods must be called from the one goroutine that runs it, which should
// hold runtime.LockOSThread (KVM ties a vCPU to the thread that runs it for
// performance, and Kick signals that thread). Kick and SetImmediateExit may be
// called from any goroutine.
package kvm
