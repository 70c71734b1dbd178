// Package uart emulates a 16550A UART (8250 family) as Linux's 8250 driver uses it:
// divisor latch, interrupt enable and identification (receive data available, THR
// empty), FIFO control, line and modem control with loopback, line and modem status,
// and the scratch register.
//
// Transmission is instantaneous: a byte written to THR goes to the console writer
// at once, so THR and the transmitter are always empty. Received bytes come from
// Input (a host goroutine) into a bounded FIFO.
//
// The interrupt output is reported as a level through the IRQ callback whenever it
// changes. On a PC the 8250's IRQ is edge-triggered at the interrupt controller, so
// every new interrupt condition is a low-to-high transition: after the guest clears a
// condition (reading IIR, writing THR) the line drops before it rises again.
//
// Concurrency: all methods are safe for concurrent use (vCPU goroutines and the input
// goroutine); the IRQ callback and console writes happen with the UART's lock held,
// which keeps output and interrupts in guest order.
package uart
