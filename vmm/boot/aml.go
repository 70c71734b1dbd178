package boot

import (
	"encoding/binary"
	"strconv"
	"strings"
)

// A minimal AML encoder: just the terms the DSDT needs (scopes, devices, names,
// integers, strings, packages, resource-template buffers).

// AML opcodes.
const (
	amlZero      = 0x00
	amlOne       = 0x01
	amlName      = 0x08
	amlByte      = 0x0a
	amlWord      = 0x0b
	amlDWord     = 0x0c
	amlScope     = 0x10
	amlBuffer    = 0x11
	amlPackage   = 0x12
	amlExtPrefix = 0x5b
	amlDevice    = 0x82 // after amlExtPrefix
)

// amlPkgLength encodes a PkgLength for n bytes of content following it; the encoded
// value counts its own bytes too.
func amlPkgLength(n int) []byte {
	switch {
	case n+1 <= 0x3f:
		return []byte{byte(n + 1)}
	case n+2 <= 0xfff:
		v := n + 2
		return []byte{0x40 | byte(v&0xf), byte(v >> 4)}
	case n+3 <= 0xfffff:
		v := n + 3
		return []byte{0x80 | byte(v&0xf), byte(v >> 4), byte(v >> 12)}
	default:
		v := n + 4
		return []byte{0xc0 | byte(v&0xf), byte(v >> 4), byte(v >> 12), byte(v >> 20)}
	}
}

// amlNameString encodes a path such as `\_SB_.PCI0` or `_HID`; segments shorter than
// four characters are padded with '_'.
func amlNameString(path string) []byte {
	var b []byte
	if strings.HasPrefix(path, `\`) {
		b = append(b, '\\')
		path = path[1:]
	}
	segs := strings.Split(path, ".")
	switch len(segs) {
	case 1:
	case 2:
		b = append(b, 0x2e)
	default:
		b = append(b, 0x2f, byte(len(segs)))
	}
	for _, s := range segs {
		b = append(b, (s + "___")[:4]...)
	}
	return b
}

func amlInt(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{amlZero}
	case v == 1:
		return []byte{amlOne}
	case v <= 0xff:
		return []byte{amlByte, byte(v)}
	case v <= 0xffff:
		return binary.LittleEndian.AppendUint16([]byte{amlWord}, uint16(v))
	case v <= 0xffffffff:
		return binary.LittleEndian.AppendUint32([]byte{amlDWord}, uint32(v))
	default:
		return binary.LittleEndian.AppendUint64([]byte{0x0e}, v)
	}
}

// amlEISAID compresses a PNP ID such as "PNP0A03" (three letters, four hex digits)
// into its DWord form.
func amlEISAID(id string) []byte {
	v := uint32(id[0]-0x40)<<26 | uint32(id[1]-0x40)<<21 | uint32(id[2]-0x40)<<16
	h, _ := strconv.ParseUint(id[3:7], 16, 16)
	return binary.BigEndian.AppendUint32([]byte{amlDWord}, v|uint32(h))
}

func amlNamed(name string, value []byte) []byte {
	return append(append([]byte{amlName}, amlNameString(name)...), value...)
}

func amlWithPkg(prefix []byte, body ...[]byte) []byte {
	var content []byte
	for _, b := range body {
		content = append(content, b...)
	}
	out := append([]byte(nil), prefix...)
	out = append(out, amlPkgLength(len(content))...)
	return append(out, content...)
}

func amlScopeOf(name string, terms ...[]byte) []byte {
	return amlWithPkg([]byte{amlScope}, append([][]byte{amlNameString(name)}, terms...)...)
}

func amlDeviceOf(name string, terms ...[]byte) []byte {
	return amlWithPkg([]byte{amlExtPrefix, amlDevice}, append([][]byte{amlNameString(name)}, terms...)...)
}

func amlPackageOf(elems ...[]byte) []byte {
	return amlWithPkg([]byte{amlPackage}, append([][]byte{{byte(len(elems))}}, elems...)...)
}

// amlResources wraps resource descriptors into a ResourceTemplate buffer (adds the end
// tag).
func amlResources(descs ...[]byte) []byte {
	var data []byte
	for _, d := range descs {
		data = append(data, d...)
	}
	data = append(data, 0x79, 0) // end tag, checksum 0 = not checked
	return amlWithPkg([]byte{amlBuffer}, amlInt(uint64(len(data))), data)
}

// Resource descriptors.

func resIO(base uint16, length uint8) []byte {
	le := binary.LittleEndian
	d := []byte{0x47, 1} // I/O port, 16-bit decode
	d = le.AppendUint16(d, base)
	d = le.AppendUint16(d, base)
	return append(d, 1, length)
}

func resIRQ(irq int) []byte {
	return binary.LittleEndian.AppendUint16([]byte{0x22}, 1<<irq) // edge, active high
}

// Address-space descriptor resource types.
const (
	resMemory = 0
	resIOSpc  = 1
	resBus    = 2
)

// resWordAddr is a producer window [min, max] in a 16-bit address space.
func resWordAddr(typ byte, lo, hi uint16) []byte {
	le := binary.LittleEndian
	tflags := byte(0)
	if typ == resIOSpc {
		tflags = 3 // entire range
	}
	d := []byte{0x88, 13, 0, typ, 0x0c, tflags} // min and max fixed, positive decode, producer
	d = le.AppendUint16(d, 0)
	d = le.AppendUint16(d, lo)
	d = le.AppendUint16(d, hi)
	d = le.AppendUint16(d, 0)
	return le.AppendUint16(d, hi-lo+1)
}

// resDWordMemory is a non-cacheable read-write producer memory window [lo, hi].
func resDWordMemory(lo, hi uint32) []byte {
	le := binary.LittleEndian
	d := []byte{0x87, 23, 0, resMemory, 0x0c, 0x01}
	d = le.AppendUint32(d, 0)
	d = le.AppendUint32(d, lo)
	d = le.AppendUint32(d, hi)
	d = le.AppendUint32(d, 0)
	return le.AppendUint32(d, hi-lo+1)
}

// resQWordMemory is a non-cacheable read-write producer memory window [lo, hi].
func resQWordMemory(lo, hi uint64) []byte {
	le := binary.LittleEndian
	d := []byte{0x8a, 43, 0, resMemory, 0x0c, 0x01}
	d = le.AppendUint64(d, 0)
	d = le.AppendUint64(d, lo)
	d = le.AppendUint64(d, hi)
	d = le.AppendUint64(d, 0)
	return le.AppendUint64(d, hi-lo+1)
}
