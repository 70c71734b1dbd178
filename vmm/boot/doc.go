// Package boot puts a guest into memory and describes the vCPU state it starts in: the
// x86 Linux 64-bit boot protocol for bzImages (LoadLinux) and a small long-mode loader
// for test guests (LoadMicro). It is pure: it writes through *memory.Memory and returns
// an *Entry; the vmm package applies that to KVM.
package boot
