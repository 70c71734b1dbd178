// Package e2e holds ptvmm's end-to-end tests: a Debian Linux guest booted by
// our VMM. They need hardware-style KVM and the assets `make e2e` prepares,
// and skip with the reason otherwise, so `go test ./...` stays a unit run.
//
// `make e2e` (go run ./e2e/cmd/testhost) runs them directly on a host with
// VT-x/AMD-V, else inside the QEMU TCG test host (see internal/testhost),
// where this package's test binary runs as root under the guest agent.
//
// Writing a test: call requireGuest (or requireAssets when it runs vmrun) to
// get the assets directory: kernel/ (vmlinuz, VERSION, modules, *.order),
// guest.cpio (the agent as /init, the virtio-net and uio modules in
// /lib/modules/ptvmm) and vmrun. Boot with testhost.GuestCmdline(cmd, extra...)
// as the kernel command line; testhost.GuestModuleArg(k, "virtio-net") loads
// module groups. bootLibrary and bootGuest capture the inner console and fail
// with its last lines; keep every wait bounded.
package e2e
