// Package guest groups everything that runs inside a guest or builds what a
// guest boots: the guest agent (guest/agent, the initramfs /init), the
// initramfs builder (guest/initramfs) and the tiny long-mode test guests
// (guest/micro). It holds no code itself.
package guest
