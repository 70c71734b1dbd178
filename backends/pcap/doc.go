// Package pcap writes and reads capture files in the classic libpcap format
// (magic 0xa1b2c3d4, version 2.4, microsecond timestamps, LINKTYPE_ETHERNET), the
// format tcpdump -w writes and tcpdump, tshark and capinfos read.
//
// A Writer is what a switch port monitor (backends/vale) records into: it satisfies
// vale.Monitor through WriteFragments, so the switch needs no import of this package
// and this package none of the switch.
//
// Concurrency: all Writer methods may be called from any goroutine; records are
// serialised by the Writer's mutex, so packets from concurrent forwarding passes never
// interleave within a record (their order in the file follows the order the callers
// took the mutex, so timestamps may be slightly out of order). The Reader is for one
// goroutine.
package pcap
