//go:build linux

package ptnet

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/u-root/u-root/pkg/pci"
)

// PCI identity (SPECS 3.1), with the class that tells them apart from the
// devices upstream QEMU later gave the same IDs.
const (
	Vendor        = 0x1b36
	MemdevDevice  = 0x000c
	PtnetDevice   = 0x000d
	memdevClass   = 0xff     // base class "other"
	ptnetClass    = 0x020000 // network, ethernet
	ioresourceIO  = 0x100
	ioresourceMem = 0x200
)

// Kind says which of the two passthrough devices a PCIDevice is.
type Kind int

const (
	KindPtnet Kind = iota
	KindMemdev
)

func (k Kind) String() string {
	if k == KindMemdev {
		return "memdev"
	}
	return "ptnet"
}

// BAR is one base address register as sysfs reports it.
type BAR struct {
	Base, Size uint64
	MMIO       bool // memory space (else I/O)
}

// PCIDevice is a ptnet or memdev found in sysfs.
type PCIDevice struct {
	Addr   string // e.g. 0000:00:03.0
	Kind   Kind
	Driver string // bound driver, "" if none
	Node   string // ptnet bound to ptvmm_ptnet: its device name (ptnet0)
	BAR    [3]BAR
}

// Find lists the ptnet and memdev devices under sysfs (normally "/sys"),
// sorted by address. Safe to call from any goroutine.
func Find(sysfs string) ([]PCIDevice, error) {
	dirs, err := filepath.Glob(filepath.Join(sysfs, "bus/pci/devices/*"))
	if err != nil {
		return nil, fmt.Errorf("ptnet: list PCI devices: %w", err)
	}
	sort.Strings(dirs)
	var out []PCIDevice
	for _, dir := range dirs {
		p, err := pci.OnePCI(dir)
		if err != nil {
			return nil, fmt.Errorf("ptnet: read %s: %w", dir, err)
		}
		d := PCIDevice{Addr: p.Addr}
		switch {
		case p.Vendor == Vendor && p.Device == PtnetDevice && p.Class&0xffff00 == ptnetClass:
			d.Kind = KindPtnet
		case p.Vendor == Vendor && p.Device == MemdevDevice && p.Class>>16 == memdevClass:
			d.Kind = KindMemdev
		default:
			continue
		}
		for _, b := range p.BARS {
			if b.Index < len(d.BAR) && b.Lim >= b.Base {
				d.BAR[b.Index] = BAR{Base: b.Base, Size: b.Lim - b.Base + 1, MMIO: b.Attr&ioresourceMem != 0}
			}
		}
		if link, err := os.Readlink(filepath.Join(dir, "driver")); err == nil {
			d.Driver = filepath.Base(link)
		}
		if d.Kind == KindPtnet {
			if ents, err := os.ReadDir(filepath.Join(dir, "misc")); err == nil && len(ents) > 0 {
				d.Node = ents[0].Name()
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// DefaultDevice is the device node of the first ptnet bound to ptvmm_ptnet.
func DefaultDevice(sysfs string) (string, error) {
	devs, err := Find(sysfs)
	if err != nil {
		return "", err
	}
	n := 0
	for _, d := range devs {
		if d.Kind != KindPtnet {
			continue
		}
		n++
		if d.Node != "" {
			return "/dev/" + d.Node, nil
		}
	}
	if n == 0 {
		return "", fmt.Errorf("ptnet: no ptnet device (%04x:%04x) in %s", Vendor, PtnetDevice, sysfs)
	}
	return "", fmt.Errorf("ptnet: %d ptnet devices but none bound to ptvmm_ptnet: load ptvmm_ptnet.ko", n)
}

// memdevAt finds the memdev whose BAR1 starts at phys.
func memdevAt(devs []PCIDevice, phys uint64) (PCIDevice, bool) {
	for _, d := range devs {
		if d.Kind == KindMemdev && d.BAR[1].MMIO && d.BAR[1].Base == phys {
			return d, true
		}
	}
	return PCIDevice{}, false
}
