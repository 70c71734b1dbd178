package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Offsets of setup-header fields, from the start of the bzImage file (which equal their
// offsets inside boot_params, the zero page).
const (
	hdrSetupSects      = 0x1f1
	hdrBootFlag        = 0x1fe
	hdrJump            = 0x200
	hdrMagic           = 0x202
	hdrVersion         = 0x206
	hdrTypeOfLoader    = 0x210
	hdrLoadFlags       = 0x211
	hdrCode32Start     = 0x214
	hdrRamdiskImage    = 0x218
	hdrRamdiskSize     = 0x21c
	hdrHeapEndPtr      = 0x224
	hdrCmdLinePtr      = 0x228
	hdrInitrdAddrMax   = 0x22c
	hdrKernelAlignment = 0x230
	hdrRelocatable     = 0x234
	hdrXLoadFlags      = 0x236
	hdrCmdlineSize     = 0x238
	hdrPrefAddress     = 0x258
	hdrInitSize        = 0x260
	// hdrMinEnd is the end of the fields this package reads (init_size).
	hdrMinEnd = 0x264
)

// Setup-header flag bits.
const (
	LoadFlagLoadedHigh  = 0x01
	LoadFlagCanUseHeap  = 0x80
	XLFKernel64         = 0x01
	XLFCanBeLoadedAbove = 0x02 // XLF_CAN_BE_LOADED_ABOVE_4G
)

// MinProtocol is the oldest boot protocol with a 64-bit entry point (2.12).
const MinProtocol = 0x020c

var (
	// ErrNotBzImage is returned for data without a valid setup header.
	ErrNotBzImage = errors.New("not a bzImage")
	// ErrUnsupportedKernel is returned for a bzImage this loader cannot start.
	ErrUnsupportedKernel = errors.New("unsupported kernel")
)

// SetupHeader holds the setup-header fields the loader uses.
type SetupHeader struct {
	SetupSects      int    // 512-byte sectors of real-mode setup code (0 already mapped to 4)
	Version         uint16 // boot protocol, e.g. 0x020f
	LoadFlags       uint8
	Code32Start     uint32
	InitrdAddrMax   uint32
	KernelAlignment uint32
	Relocatable     bool
	XLoadFlags      uint16
	CmdlineSize     uint32
	PrefAddress     uint64
	InitSize        uint32
	// HeaderEnd is the end offset of the setup header in the file (0x202 + byte at 0x201).
	HeaderEnd int
	// KernelOffset is where the protected-mode kernel starts in the file.
	KernelOffset int
}

// ParseSetupHeader reads the setup header of a bzImage and checks that it can be
// started through the 64-bit boot protocol. It never panics on malformed input.
func ParseSetupHeader(img []byte) (*SetupHeader, error) {
	if len(img) < hdrMinEnd {
		return nil, fmt.Errorf("boot: kernel image is %d bytes, too short for a setup header: %w", len(img), ErrNotBzImage)
	}
	le := binary.LittleEndian
	if string(img[hdrMagic:hdrMagic+4]) != "HdrS" {
		return nil, fmt.Errorf("boot: kernel image has no HdrS magic (is it a bzImage, not a vmlinux ELF?): %w", ErrNotBzImage)
	}
	if le.Uint16(img[hdrBootFlag:]) != 0xAA55 {
		return nil, fmt.Errorf("boot: kernel image boot flag is %#x, want 0xaa55: %w", le.Uint16(img[hdrBootFlag:]), ErrNotBzImage)
	}
	h := &SetupHeader{
		SetupSects:      int(img[hdrSetupSects]),
		Version:         le.Uint16(img[hdrVersion:]),
		LoadFlags:       img[hdrLoadFlags],
		Code32Start:     le.Uint32(img[hdrCode32Start:]),
		InitrdAddrMax:   le.Uint32(img[hdrInitrdAddrMax:]),
		KernelAlignment: le.Uint32(img[hdrKernelAlignment:]),
		Relocatable:     img[hdrRelocatable] != 0,
		XLoadFlags:      le.Uint16(img[hdrXLoadFlags:]),
		CmdlineSize:     le.Uint32(img[hdrCmdlineSize:]),
		PrefAddress:     le.Uint64(img[hdrPrefAddress:]),
		InitSize:        le.Uint32(img[hdrInitSize:]),
		HeaderEnd:       0x202 + int(img[hdrJump+1]),
	}
	if h.SetupSects == 0 {
		h.SetupSects = 4
	}
	h.KernelOffset = (h.SetupSects + 1) * 512
	if h.Version < MinProtocol {
		return nil, fmt.Errorf("boot: kernel boot protocol %d.%02d is older than 2.12 (no 64-bit entry); use a newer kernel: %w",
			h.Version>>8, h.Version&0xff, ErrUnsupportedKernel)
	}
	if h.XLoadFlags&XLFKernel64 == 0 {
		return nil, fmt.Errorf("boot: kernel has no 64-bit entry point (32-bit kernel?); use an x86_64 kernel: %w", ErrUnsupportedKernel)
	}
	if h.LoadFlags&LoadFlagLoadedHigh == 0 {
		return nil, fmt.Errorf("boot: kernel is a zImage (loads below 1 MiB); use a bzImage: %w", ErrUnsupportedKernel)
	}
	if h.HeaderEnd < hdrMinEnd || h.HeaderEnd > h.KernelOffset {
		return nil, fmt.Errorf("boot: setup header ends at %#x, outside [%#x, %#x]: %w", h.HeaderEnd, hdrMinEnd, h.KernelOffset, ErrNotBzImage)
	}
	if h.KernelOffset >= len(img) {
		return nil, fmt.Errorf("boot: kernel image is %d bytes but the protected-mode kernel starts at %#x: %w", len(img), h.KernelOffset, ErrNotBzImage)
	}
	if h.KernelAlignment != 0 && h.KernelAlignment&(h.KernelAlignment-1) != 0 {
		return nil, fmt.Errorf("boot: kernel_alignment %#x is not a power of two: %w", h.KernelAlignment, ErrNotBzImage)
	}
	return h, nil
}
