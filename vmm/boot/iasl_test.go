package boot

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestACPIDisassembles runs ACPICA's disassembler (iasl, package acpica-tools) over
// every table LoadLinux writes: it must parse them without errors, and the DSDT must
// decode to the devices and wiring the loader promises.
func TestACPIDisassembles(t *testing.T) {
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		t.Skip("iasl not installed (apt-get install acpica-tools) - skipping the ACPICA cross-check")
	}
	m := newMem(t, 256*mib)
	_, err = LoadLinux(m, LinuxConfig{Kernel: fakeBzImage(defaultBz()), CPUs: 3,
		PCIMem64: memory.Range{GPA: 64 << 30, Size: 64 << 30}})
	require.NoError(t, err)
	rsdp, err := m.Slice(ACPIAddr, 36)
	require.NoError(t, err)
	xsdt := readTable(t, m, le.Uint64(rsdp[24:]), "XSDT")
	addrs := map[string]uint64{"xsdt": le.Uint64(rsdp[24:])}
	for i := 36; i < len(xsdt); i += 8 {
		a := le.Uint64(xsdt[i:])
		h, err := m.Slice(a, 4)
		require.NoError(t, err)
		addrs[strings.ToLower(string(h))] = a
	}
	fadt := readTable(t, m, addrs["facp"], "FACP")
	addrs["dsdt"] = le.Uint64(fadt[140:])

	dir := t.TempDir()
	out := map[string]string{}
	for name, a := range addrs {
		h, err := m.Slice(a, 8)
		require.NoError(t, err)
		b, err := m.Slice(a, uint64(le.Uint32(h[4:])))
		require.NoError(t, err)
		f := filepath.Join(dir, name+".dat")
		require.NoError(t, os.WriteFile(f, b, 0o644))
		cmd := exec.Command(iasl, "-d", f)
		cmd.Dir = dir
		log, err := cmd.CombinedOutput()
		require.NoError(t, err, "iasl -d %s:\n%s", name, log)
		dsl, err := os.ReadFile(filepath.Join(dir, name+".dsl"))
		require.NoError(t, err)
		assert.NotContains(t, string(dsl), "**** ", "%s: disassembler complaint", name)
		assert.NotContains(t, strings.ToLower(string(log)), "error", "%s:\n%s", name, log)
		out[name] = string(dsl)
	}
	d := out["dsdt"]
	for _, want := range []string{
		`EisaId ("PNP0A03")`, `EisaId ("PNP0501")`,
		"0x03F8", "IRQNoFlags ()\n", "{4}",
		"0xC0000000", "0xFEBFFFFF",
		"Package (0x04)", "_PRT", "0x001FFFFF",
		`Name (\_S5, Package (0x04)`, "0x05, \n",
		"QWordMemory", "0x0000001000000000", "0x0000001FFFFFFFFF",
	} {
		assert.True(t, strings.Contains(d, want), "DSDT lacks %q", want)
	}
	for _, want := range []string{"Hardware Reduced (V5) : 1", "Address : 0000000000000600", "Address : 0000000000000601"} {
		assert.True(t, strings.Contains(out["facp"], want), "FADT lacks %q", want)
	}
	assert.Contains(t, out["apic"], "Local Apic Address : FEE00000")
	if t.Failed() || os.Getenv("PTVMM_SHOW_ACPI") != "" {
		t.Logf("FADT:\n%s\nMADT:\n%s", out["facp"], out["apic"])
		t.Logf("DSDT:\n%s", d)
	}
}
