package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// AgentPackage is the import path of the standalone guest agent command.
const AgentPackage = "github.com/ptvmm/ptvmm/guest/agent/cmd/ptvmm-agent"

// BuildAgent compiles the guest agent into a static linux/amd64 binary at
// outPath with the go command found in PATH. It runs in the module root (see
// ModuleRoot); Go's build cache makes a rebuild cheap, so nothing is cached
// here.
func BuildAgent(outPath string) error {
	root, err := ModuleRoot()
	if err != nil {
		return fmt.Errorf("initramfs: build agent: %w", err)
	}
	abs, err := filepath.Abs(outPath)
	if err != nil {
		return fmt.Errorf("initramfs: build agent: %w", err)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("initramfs: build agent: the go command is needed to build the guest agent: %w", err)
	}
	cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags", "-s -w", "-o", abs, AgentPackage)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initramfs: build agent: go build %s: %w\n%s", AgentPackage, err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// ModuleRoot returns the nearest directory at or above the working directory
// that holds a go.mod file.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if st, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && st.Mode().IsRegular() {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod at or above the working directory; run from inside the ptvmm module")
		}
		dir = parent
	}
}
