package e2e

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/internal/testhost"
)

// KVM ioctls (linux/kvm.h), _IO(0xAE, n).
const (
	kvmGetAPIVersion   = 0xAE00
	kvmCreateVM        = 0xAE01
	kvmCheckExtension  = 0xAE03
	kvmGetVCPUMmapSize = 0xAE04
	kvmCapIRQFD        = 32
	kvmCapIOEventFD    = 36
)

func requireHardwareKVM(t *testing.T) {
	t.Helper()
	if ok, why := testhost.HardwareKVM(); !ok {
		t.Skip("needs hardware KVM: " + why)
	}
}

// TestKVMSanity proves the test host: /dev/kvm is a hardware-style KVM with
// the capabilities ptvmm depends on.
func TestKVMSanity(t *testing.T) {
	requireHardwareKVM(t)
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)

	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	require.NoError(t, err)
	require.Equal(t, 12, v, "KVM_GET_API_VERSION")

	for name, c := range map[string]uint{"KVM_CAP_IRQFD": kvmCapIRQFD, "KVM_CAP_IOEVENTFD": kvmCapIOEventFD} {
		has, err := ioctlArg(fd, kvmCheckExtension, uintptr(c))
		require.NoError(t, err, name)
		require.NotZero(t, has, name)
	}
	sz, err := unix.IoctlRetInt(fd, kvmGetVCPUMmapSize)
	require.NoError(t, err)
	require.Positive(t, sz, "KVM_GET_VCPU_MMAP_SIZE")

	vm, err := unix.IoctlRetInt(fd, kvmCreateVM)
	require.NoError(t, err, "KVM_CREATE_VM")
	require.NoError(t, unix.Close(vm))
}

// ioctlArg is an ioctl with an integer argument that returns an integer.
func ioctlArg(fd int, req, arg uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}
