package main

import (
	"fmt"
	"os"
)

// runBench is `vmrun bench`.
func runBench(args []string) int {
	fmt.Fprintln(os.Stderr, "vmrun bench: not available yet")
	return 1
}
