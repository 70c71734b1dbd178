package initramfs

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestModuleRoot(t *testing.T) {
	root, err := ModuleRoot()
	require.NoError(t, err)
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	assert.Contains(t, string(data), "module github.com/ptvmm/ptvmm")

	t.Chdir(t.TempDir())
	_, err = ModuleRoot()
	// A temp dir may sit under some go.mod, but usually none: then it fails.
	if err != nil {
		assert.Contains(t, err.Error(), "go.mod")
	}
}

// TestBuildAgentStatic builds the real agent and checks that it can run as
// /init of a bare initramfs: a static x86-64 executable without an ELF
// interpreter or shared library dependencies.
func TestBuildAgentStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent with the go command; skipped with -short")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command in PATH")
	}
	out := filepath.Join(t.TempDir(), "agent")
	require.NoError(t, BuildAgent(out))

	f, err := elf.Open(out)
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, elf.EM_X86_64, f.Machine)
	assert.Equal(t, elf.ET_EXEC, f.Type, "static executables are ET_EXEC")
	for _, p := range f.Progs {
		assert.NotEqual(t, elf.PT_INTERP, p.Type, "agent has an ELF interpreter")
		assert.NotEqual(t, elf.PT_DYNAMIC, p.Type, "agent is dynamically linked")
	}
	libs, err := f.ImportedLibraries()
	require.NoError(t, err)
	assert.Empty(t, libs, "agent needs shared libraries")
	assert.Nil(t, f.Section(".symtab"), "agent should be stripped (-s)")

	// The binary runs its built-in commands off PID 1.
	got, err := exec.Command(out, "echo", "hello", "agent").Output()
	require.NoError(t, err)
	assert.Equal(t, "hello agent\n", string(got))
}
