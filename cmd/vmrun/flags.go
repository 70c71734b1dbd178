package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// parseFlags parses args with fs. A mistake gets one line on stderr naming -h
// (status 2); -h gets usage and the flag defaults (status 0). ok says to go on.
func parseFlags(fs *flag.FlagSet, args []string, usage string, stderr io.Writer) (status int, ok bool) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // flag calls it on every mistake; we print -h's ourselves
	err := fs.Parse(args)
	switch {
	case err == nil:
		return 0, true
	case errors.Is(err, flag.ErrHelp):
		printUsage(fs, usage, stderr)
		return 0, false
	default:
		fmt.Fprintf(stderr, "%s: %v (see %s -h)\n", fs.Name(), err, fs.Name())
		return 2, false
	}
}

// printUsage writes usage, then fs's flags with their defaults.
func printUsage(fs *flag.FlagSet, usage string, w io.Writer) {
	fmt.Fprint(w, usage)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}
