// Package notify is the notification plumbing between guests and host goroutines:
// eventfds, doorbells (KVM ioeventfds: a guest write signals an eventfd inside the
// kernel without an exit to the VMM), interrupts (KVM irqfds: an eventfd write injects a
// GSI or an MSI-X vector), and Worker, the equivalent of a netmap host kthread: a
// goroutine locked to its OS thread that waits on its eventfds and runs a handler.
// A Worker can also wait on descriptors it does not own (AddFD: a TAP or socket,
// edge-triggered), so a device's backend readiness reaches the worker that owns the
// queues without a second thread and eventfd in between.
//
// A Worker waits in one of three modes: Block (epoll_wait until an eventfd fires),
// Poll (spin reading the eventfds and calling an optional poll hook, never sleeping)
// or Adaptive (spin for a bounded time after the last work, then arm notifications
// and block). It counts wakeups, kicks seen, readiness events and interrupts raised.
package notify
