package main

import (
	"fmt"
	"os"
)

// runSwitch is `vmrun switch`.
func runSwitch(args []string) int {
	fmt.Fprintln(os.Stderr, "vmrun switch: not available yet")
	return 1
}
