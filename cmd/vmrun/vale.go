package main

import (
	"fmt"
	"os"
)

// runVale is `vmrun vale`.
func runVale(args []string) int {
	fmt.Fprintln(os.Stderr, "vmrun vale: not available yet")
	return 1
}
