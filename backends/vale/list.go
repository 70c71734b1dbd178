package vale

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteList writes a table of the switches and their ports with counters, for a
// `vmrun vale` listing:
//
//	SWITCH  PORT  NAME  RX_FRAMES  RX_BYTES  TX_FRAMES  TX_BYTES  DROPS  NOSPACE  BAD
//	vale0   0     vm1   10         600       12         720       0      0        0
//
// A switch without ports gets one line with "-" columns. Safe to call while the
// switches forward (counters are read atomically, one port at a time).
func WriteList(w io.Writer, switches []*Switch) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SWITCH\tPORT\tNAME\tRX_FRAMES\tRX_BYTES\tTX_FRAMES\tTX_BYTES\tDROPS\tNOSPACE\tBAD")
	for _, s := range switches {
		ports := s.Ports()
		if len(ports) == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\n", s.name)
			continue
		}
		for _, p := range ports {
			c := p.Counters()
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", s.name, p.idx, p.name,
				c.RxFrames, c.RxBytes, c.TxFrames, c.TxBytes, c.Drops(), c.DropNoSpace, c.BadSlots)
		}
	}
	return tw.Flush()
}

// WriteList writes the listing of every switch in the registry (see WriteList).
func (r *Registry) WriteList(w io.Writer) error { return WriteList(w, r.Switches()) }
