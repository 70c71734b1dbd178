// Package i8042 emulates the part of a PC keyboard controller a VM needs: the
// status and command port (0x64) and data port (0x60) answering the driver's probe
// and configuration commands, and the reset line. A guest writing command 0xFE
// (pulse reset) to 0x64 - what Linux does for reboot=k and what our ACPI FADT names
// as the reset register - or clearing bit 0 of the output port through command 0xD1
// asks for a system reset, which the VMM treats as guest shutdown.
//
// No keyboard or mouse is attached; the controller reports none.
//
// Concurrency: safe for concurrent use.
package i8042
