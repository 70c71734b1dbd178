package boot_test

import (
	"testing"

	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// The DSDT's _PRT must route INTA where vmm/pci raises it, or INTx interrupts (uio)
// never reach the guest's handler.
func TestPRTMatchesPCIRouting(t *testing.T) {
	for slot := range 32 {
		if got, want := boot.PCIINTxGSI(slot, 0), pci.IntxGSI(slot); got != want {
			t.Errorf("slot %d INTA: DSDT says GSI %d, vmm/pci raises GSI %d", slot, got, want)
		}
	}
}
