package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

// ACPI identification written into every table.
const (
	acpiOEMID      = "PTVMM "
	acpiOEMTableID = "PTVMMACP"
	acpiCreatorID  = "PTVM"
)

// FADT bits.
const (
	fadtFlagResetRegSup  = 1 << 10
	fadtFlagHWReducedACP = 1 << 20
	fadtBootNoVGA        = 1 << 2
	fadtBootNoCMOSRTC    = 1 << 5
	fadtLen              = 276 // revision 6
)

// Hardware-reduced ACPI sleep registers (FADT SLEEP_CONTROL_REG / SLEEP_STATUS_REG,
// one byte each in I/O space). Linux powers off (ACPI S5) by writing
// S5SleepType<<2 | SleepEnable to SleepControlPort; a VMM that ends the VM on that
// write gives the guest a working `poweroff`. Reads of the status port should have
// bit 7 (WAK_STS) set, which an unclaimed port's all-ones read already does.
const (
	SleepControlPort = 0x600
	SleepStatusPort  = 0x601
	S5SleepType      = 5
	SleepEnable      = 1 << 5
	// PowerOffValue is the byte Linux writes to SleepControlPort to power off.
	PowerOffValue = S5SleepType<<2 | SleepEnable
)

// IsPowerOff reports whether v, written to SleepControlPort, asks for soft-off (S5).
func IsPowerOff(v byte) bool { return v&SleepEnable != 0 && v>>2&7 == S5SleepType }

// SCIIRQ is the ISA IRQ the FADT declares as SCI (level, active high, like QEMU).
const SCIIRQ = 9

// MaxCPUs is the most vCPUs the MADT describes (xAPIC IDs 0..254; 255 is broadcast).
const MaxCPUs = 255

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// sdt starts a table with the common 36-byte header; finish fills length and checksum.
func sdt(sig string, rev byte, bodyLen int) []byte {
	t := make([]byte, 36, 36+bodyLen)
	copy(t[0:4], sig)
	t[8] = rev
	copy(t[10:16], acpiOEMID)
	copy(t[16:24], acpiOEMTableID)
	binary.LittleEndian.PutUint32(t[24:], 1)
	copy(t[28:32], acpiCreatorID)
	binary.LittleEndian.PutUint32(t[32:], 1)
	return t
}

func finish(t []byte) []byte {
	binary.LittleEndian.PutUint32(t[4:], uint32(len(t)))
	t[9] = 0
	t[9] = checksum(t)
	return t
}

func madt(cpus int) []byte {
	le := binary.LittleEndian
	t := sdt("APIC", 4, 8+8*cpus+12+2*10)
	t = le.AppendUint32(t, LAPICAddr)
	t = le.AppendUint32(t, 1) // PCAT_COMPAT: KVM's irqchip includes the dual 8259
	for i := range cpus {
		// Processor Local APIC: UID, APIC ID, flags = enabled.
		t = append(t, 0, 8, byte(i), byte(i))
		t = le.AppendUint32(t, 1)
	}
	// I/O APIC: ID 0 (KVM's reset value), address, GSI base 0.
	t = append(t, 1, 12, 0, 0)
	t = le.AppendUint32(t, IOAPICAddr)
	t = le.AppendUint32(t, 0)
	// ISA IRQ0 (PIT) is wired to IOAPIC pin 2, as on PCs and in KVM's irqchip.
	t = append(t, 2, 10, 0, 0)
	t = le.AppendUint32(t, 2)
	t = le.AppendUint16(t, 0)
	// SCI: IRQ9, level triggered, active high.
	t = append(t, 2, 10, 0, SCIIRQ)
	t = le.AppendUint32(t, SCIIRQ)
	t = le.AppendUint16(t, 0xd)
	return finish(t)
}

// Legacy devices and PCI interrupt wiring the DSDT describes. With a hardware-reduced
// FADT Linux sets up no legacy PIC and no ISA IRQ mappings, so COM1's IRQ and the PCI
// root bridge (without which Linux does not scan PCI when ACPI is on) must be here.
const (
	COM1Port = 0x3f8
	COM1IRQ  = 4
	// PCIBusCount is the number of bus numbers the root bridge decodes.
	PCIBusCount = 256
)

// PCIINTxGSI is the I/O APIC input that INTx pin (0 = INTA .. 3 = INTD) of the device
// in slot on bus 0 is wired to, as the DSDT's _PRT says: GSIs 16-23, swizzled by slot
// so that devices spread over them. Linux treats them as level-triggered, active low;
// KVM's I/O APIC asserts a line on level 1 whatever its polarity.
func PCIINTxGSI(slot, pin int) uint32 { return 16 + uint32((slot+pin)&7) }

// dsdtTable builds the DSDT: \_SB.PCI0 (PNP0A03: bus 0-255, I/O 0-0xFFFF except the
// config ports, MMIO [PCIHoleStart, IOAPICAddr) and mem64 if not empty, _PRT for 32
// slots) and \_SB.COM1.
func dsdtTable(mem64 memory.Range) []byte {
	var prt [][]byte
	for slot := range 32 {
		for pin := range 4 {
			prt = append(prt, amlPackageOf(amlInt(uint64(slot)<<16|0xffff), amlInt(uint64(pin)), amlInt(0), amlInt(uint64(PCIINTxGSI(slot, pin)))))
		}
	}
	windows := [][]byte{
		resWordAddr(resBus, 0, PCIBusCount-1),
		resIO(0xcf8, 8),
		resWordAddr(resIOSpc, 0, 0xcf7),
		resWordAddr(resIOSpc, 0xd00, 0xffff),
		resDWordMemory(PCIHoleStart, IOAPICAddr-1),
	}
	if mem64.Size != 0 {
		windows = append(windows, resQWordMemory(mem64.GPA, mem64.End()-1))
	}
	pci := amlDeviceOf("PCI0",
		amlNamed("_HID", amlEISAID("PNP0A03")),
		amlNamed("_UID", amlInt(0)),
		amlNamed("_SEG", amlInt(0)),
		amlNamed("_BBN", amlInt(0)),
		amlNamed("_ADR", amlInt(0)),
		amlNamed("_CRS", amlResources(windows...)),
		amlNamed("_PRT", amlPackageOf(prt...)),
	)
	com1 := amlDeviceOf("COM1",
		amlNamed("_HID", amlEISAID("PNP0501")),
		amlNamed("_UID", amlInt(1)),
		amlNamed("_CRS", amlResources(resIO(COM1Port, 8), resIRQ(COM1IRQ))),
	)
	t := sdt("DSDT", 2, 0)
	// \_S5: SLP_TYP for soft-off (both PM1a and PM1b values, then two reserved).
	t = append(t, amlNamed(`\_S5`, amlPackageOf(amlInt(S5SleepType), amlInt(S5SleepType), amlInt(0), amlInt(0)))...)
	t = append(t, amlScopeOf(`\_SB`, pci, com1)...)
	return finish(t)
}

func fadt(dsdt uint64) []byte {
	le := binary.LittleEndian
	t := sdt("FACP", 6, fadtLen-36)
	t = t[:fadtLen]
	// The 32-bit DSDT field stays zero: the spec wants it so when X_DSDT is set.
	le.PutUint16(t[46:], SCIIRQ)
	le.PutUint16(t[109:], fadtBootNoVGA|fadtBootNoCMOSRTC)
	le.PutUint32(t[112:], fadtFlagHWReducedACP|fadtFlagResetRegSup)
	// RESET_REG: value 0xFE to the i8042's port 0x64 pulses the reset line.
	gasIO8(t[116:], 0x64)
	t[128] = 0xfe
	t[131] = 0 // FADT minor version
	gasIO8(t[244:], SleepControlPort)
	gasIO8(t[256:], SleepStatusPort)
	le.PutUint64(t[140:], dsdt)
	copy(t[268:276], "PTVMM\x00\x00\x00")
	return finish(t)
}

// gasIO8 writes a Generic Address Structure for a byte-wide I/O port.
func gasIO8(b []byte, port uint16) {
	b[0], b[1], b[2], b[3] = 1, 8, 0, 1 // system I/O, 8 bits, offset 0, byte access
	binary.LittleEndian.PutUint64(b[4:], uint64(port))
}

// writeACPI writes RSDP, XSDT, RSDT, FADT, MADT and an empty DSDT into [base, limit),
// RSDP first (base must be 16-byte aligned inside 0xE0000-0xFFFFF so the kernel could
// also find it by scanning). It returns the RSDP address.
func writeACPI(m *memory.Memory, base, limit uint64, cpus int, mem64 memory.Range) (uint64, error) {
	if cpus < 1 || cpus > MaxCPUs {
		return 0, fmt.Errorf("boot: %d CPUs; give 1 to %d", cpus, MaxCPUs)
	}
	le := binary.LittleEndian
	next := base + 64 // after the 36-byte RSDP
	var err error
	place := func(t []byte) uint64 {
		a := next
		next = (next + uint64(len(t)) + 15) &^ 15
		if err == nil && next > limit {
			err = fmt.Errorf("boot: ACPI tables do not fit below %#x", limit)
		}
		if err == nil {
			err = m.WriteAt(t, a)
		}
		return a
	}
	dsdt := place(dsdtTable(mem64))
	fadtAddr := place(fadt(dsdt))
	madtAddr := place(madt(cpus))

	xsdt := sdt("XSDT", 1, 16)
	xsdt = le.AppendUint64(xsdt, fadtAddr)
	xsdt = le.AppendUint64(xsdt, madtAddr)
	xsdtAddr := place(finish(xsdt))

	rsdt := sdt("RSDT", 1, 8)
	rsdt = le.AppendUint32(rsdt, uint32(fadtAddr))
	rsdt = le.AppendUint32(rsdt, uint32(madtAddr))
	rsdtAddr := place(finish(rsdt))
	if err != nil {
		return 0, fmt.Errorf("boot: write ACPI tables: %w", err)
	}

	rsdp := make([]byte, 36)
	copy(rsdp, "RSD PTR ")
	copy(rsdp[9:15], acpiOEMID)
	rsdp[15] = 2
	le.PutUint32(rsdp[16:], uint32(rsdtAddr))
	le.PutUint32(rsdp[20:], 36)
	le.PutUint64(rsdp[24:], xsdtAddr)
	rsdp[8] = checksum(rsdp[:20])
	rsdp[32] = checksum(rsdp)
	if err := m.WriteAt(rsdp, base); err != nil {
		return 0, fmt.Errorf("boot: write RSDP: %w", err)
	}
	return base, nil
}
