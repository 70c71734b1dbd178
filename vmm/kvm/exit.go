package kvm

import (
	"encoding/binary"
	"fmt"
)

// ExitReason is kvm_run.exit_reason (KVM_EXIT_*).
type ExitReason uint32

// Exit reasons this VMM handles or reports.
const (
	ExitUnknown       ExitReason = 0
	ExitException     ExitReason = 1
	ExitIO            ExitReason = 2
	ExitHypercall     ExitReason = 3
	ExitDebug         ExitReason = 4
	ExitHLT           ExitReason = 5
	ExitMMIO          ExitReason = 6
	ExitIRQWindowOpen ExitReason = 7
	ExitShutdown      ExitReason = 8
	ExitFailEntry     ExitReason = 9
	ExitIntr          ExitReason = 10
	ExitInternalError ExitReason = 17
	ExitSystemEvent   ExitReason = 24
)

var exitNames = map[ExitReason]string{
	ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO", ExitHypercall: "HYPERCALL",
	ExitDebug: "DEBUG", ExitHLT: "HLT", ExitMMIO: "MMIO", ExitIRQWindowOpen: "IRQ_WINDOW_OPEN",
	ExitShutdown: "SHUTDOWN", ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR",
	ExitInternalError: "INTERNAL_ERROR", ExitSystemEvent: "SYSTEM_EVENT",
}

func (r ExitReason) String() string {
	if s, ok := exitNames[r]; ok {
		return s
	}
	return fmt.Sprintf("EXIT_%d", uint32(r))
}

// System event types (KVM_SYSTEM_EVENT_*).
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// Offsets in struct kvm_run (x86-64), checked against linux/kvm.h in tests.
const (
	runImmediateExit = 1
	runExitReason    = 8
	runIfFlag        = 13
	runUnion         = 32 // the per-exit union
	runPageMinSize   = 2352

	ioDirection  = runUnion + 0
	ioSize       = runUnion + 1
	ioPort       = runUnion + 2
	ioCount      = runUnion + 4
	ioDataOffset = runUnion + 8

	mmioPhysAddr = runUnion + 0
	mmioData     = runUnion + 8
	mmioLen      = runUnion + 16
	mmioIsWrite  = runUnion + 20

	internalSuberror = runUnion + 0
	internalNData    = runUnion + 4
	internalData     = runUnion + 8

	sysEventType  = runUnion + 0
	sysEventNData = runUnion + 4
	sysEventData  = runUnion + 8

	failEntryReason = runUnion + 0
	failEntryCPU    = runUnion + 8

	hwExitReason = runUnion + 0
)

// IOExit is a port I/O exit. For an IN, the VMM fills Data before the next Run.
type IOExit struct {
	Port  uint16
	Size  uint8 // bytes per access: 1, 2 or 4
	Write bool  // OUT
	Count uint32
	// Data aliases the kvm_run page (Size*Count bytes); valid until the next Run.
	Data []byte
}

// MMIOExit is an MMIO exit. For a read, the VMM fills Data before the next Run.
type MMIOExit struct {
	Addr  uint64
	Write bool
	// Data aliases the kvm_run page (1 to 8 bytes); valid until the next Run.
	Data []byte
}

// Exit is a decoded kvm_run after KVM_RUN returned. Only the field matching Reason is set.
type Exit struct {
	Reason ExitReason
	IO     IOExit
	MMIO   MMIOExit
	// SystemEvent (SystemEventShutdown...) and its data words, for ExitSystemEvent.
	SystemEvent     uint32
	SystemEventData []uint64
	// Suberror and data words for ExitInternalError.
	Suberror     uint32
	InternalData []uint64
	// Hardware reason: entry failure reason for ExitFailEntry, exit reason for ExitUnknown.
	HardwareReason uint64
	FailEntryCPU   uint32
}

// decodeExit reads the exit from a kvm_run page. It never panics: lengths and offsets
// the kernel reports are checked against the page.
func decodeExit(run []byte) (Exit, error) {
	if len(run) < runPageMinSize {
		return Exit{}, fmt.Errorf("kvm: kvm_run page of %d bytes", len(run))
	}
	le := binary.LittleEndian
	e := Exit{Reason: ExitReason(le.Uint32(run[runExitReason:]))}
	switch e.Reason {
	case ExitIO:
		e.IO = IOExit{
			Write: run[ioDirection] == 1,
			Size:  run[ioSize],
			Port:  le.Uint16(run[ioPort:]),
			Count: le.Uint32(run[ioCount:]),
		}
		off := le.Uint64(run[ioDataOffset:])
		n := uint64(e.IO.Size) * uint64(e.IO.Count)
		if off > uint64(len(run)) || n > uint64(len(run))-off {
			return e, fmt.Errorf("kvm: IO exit data %#x+%#x outside kvm_run page", off, n)
		}
		e.IO.Data = run[off : off+n : off+n]
	case ExitMMIO:
		n := le.Uint32(run[mmioLen:])
		if n > 8 {
			return e, fmt.Errorf("kvm: MMIO exit of %d bytes", n)
		}
		e.MMIO = MMIOExit{
			Addr:  le.Uint64(run[mmioPhysAddr:]),
			Write: run[mmioIsWrite] != 0,
			Data:  run[mmioData : mmioData+n : mmioData+n],
		}
	case ExitSystemEvent:
		e.SystemEvent = le.Uint32(run[sysEventType:])
		e.SystemEventData = words(run[sysEventData:], le.Uint32(run[sysEventNData:]))
	case ExitInternalError:
		e.Suberror = le.Uint32(run[internalSuberror:])
		e.InternalData = words(run[internalData:], le.Uint32(run[internalNData:]))
	case ExitFailEntry:
		e.HardwareReason = le.Uint64(run[failEntryReason:])
		e.FailEntryCPU = le.Uint32(run[failEntryCPU:])
	case ExitUnknown:
		e.HardwareReason = le.Uint64(run[hwExitReason:])
	}
	return e, nil
}

// words decodes up to n (at most 16) little-endian u64s from b.
func words(b []byte, n uint32) []uint64 {
	if n > 16 {
		n = 16
	}
	if int(n) > len(b)/8 {
		n = uint32(len(b) / 8)
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return out
}

func (e Exit) String() string {
	switch e.Reason {
	case ExitIO:
		dir := "in"
		if e.IO.Write {
			dir = "out"
		}
		return fmt.Sprintf("IO %s port %#x size %d count %d", dir, e.IO.Port, e.IO.Size, e.IO.Count)
	case ExitMMIO:
		dir := "read"
		if e.MMIO.Write {
			dir = "write"
		}
		return fmt.Sprintf("MMIO %s %#x len %d", dir, e.MMIO.Addr, len(e.MMIO.Data))
	case ExitSystemEvent:
		return fmt.Sprintf("SYSTEM_EVENT type %d data %#x", e.SystemEvent, e.SystemEventData)
	case ExitInternalError:
		return fmt.Sprintf("INTERNAL_ERROR suberror %d data %#x", e.Suberror, e.InternalData)
	case ExitFailEntry:
		return fmt.Sprintf("FAIL_ENTRY hardware reason %#x cpu %d", e.HardwareReason, e.FailEntryCPU)
	case ExitUnknown:
		return fmt.Sprintf("UNKNOWN hardware reason %#x", e.HardwareReason)
	}
	return e.Reason.String()
}
