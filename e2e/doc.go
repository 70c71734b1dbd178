// Package e2e holds ptvmm's end-to-end tests: a Debian Linux guest booted by
// our VMM. They need hardware-style KVM and the assets `make e2e` prepares,
// and skip with the reason otherwise, so `go test ./...` stays a unit run.
//
// `make e2e` (go run ./e2e/cmd/testhost) runs them directly on a host with
// VT-x/AMD-V, else inside the QEMU TCG test host (see internal/testhost).
package e2e
