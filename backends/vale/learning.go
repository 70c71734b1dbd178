package vale

import (
	"encoding/binary"
	"sync/atomic"
)

// Lookup results besides a port index (0..MaxPorts-1), as VALE's NM_BDG_BROADCAST and
// NM_BDG_NOPORT.
const (
	Broadcast = 254 // flood to every other port
	Drop      = 255 // discard (counted as a lookup drop on the source port)
)

// HashSize is the number of learning table buckets (VALE's NM_BDG_HASH).
const HashSize = 1024

// Lookup decides where a frame goes: a port index, Broadcast or Drop. frame is the
// first fragment of the packet, at least 14 bytes (an Ethernet header); src is the
// index of the port that sent it. A Lookup runs inside forwarding passes, possibly on
// several goroutines at once (one per source port being synced): it must be safe for
// concurrent calls, must not block, must not retain frame and must not write to it,
// and must not call methods of the Switch or its Ports (they take the switch lock,
// which the calling pass holds; Learning's methods are fine).
// A result naming src itself or a port index with no port attached drops the frame.
type Lookup func(frame []byte, src int) int

// rthash is VALE's bucket hash: Bob Jenkins' 96-bit mix of the six MAC bytes.
func rthash(m []byte) uint32 { return rthash48(mac48(m)) }

// rthash48 hashes a MAC packed by mac48: its low 32 bits are m[3]<<24|..|m[0] and
// the next 16 are m[5]<<8|m[4], the two words VALE adds to the golden ratio.
func rthash48(mac uint64) uint32 {
	a := uint32(0x9e3779b9) + uint32(mac)
	b := uint32(0x9e3779b9) + uint32(mac>>32)&0xffff
	c := uint32(0)
	a -= b
	a -= c
	a ^= c >> 13
	b -= c
	b -= a
	b ^= a << 8
	c -= a
	c -= b
	c ^= b >> 13
	a -= b
	a -= c
	a ^= c >> 12
	b -= c
	b -= a
	b ^= a << 16
	c -= a
	c -= b
	c ^= b >> 5
	a -= b
	a -= c
	a ^= c >> 3
	b -= c
	b -= a
	b ^= a << 10
	c -= a
	c -= b
	c ^= b >> 15
	return c & (HashSize - 1)
}

// mac48 packs six MAC bytes into the low 48 bits (byte 0 lowest, so bit 0 is the
// group bit).
func mac48(m []byte) uint64 {
	return uint64(binary.LittleEndian.Uint32(m)) | uint64(binary.LittleEndian.Uint16(m[4:6]))<<32
}

const (
	entryValid = 1 << 63
	portShift  = 48
	macMask    = 1<<48 - 1
	noMAC      = 1 << 62 // a lastSrc value no MAC equals
)

// Learning is VALE's learning table: one entry {MAC, port} per hash bucket, written when
// a unicast source MAC is seen on a port, never aged (a collision or a move overwrites).
// Concurrency: Learn, Lookup and Forget may be called from any goroutine; each bucket is
// one atomic word (valid bit | port<<48 | MAC), so a reader sees either the old or the
// new entry whole.
type Learning struct {
	table [HashSize]atomic.Uint64
	// lastSrc caches each port's last learned source MAC so a steady flow skips the hash
	// and the store (VALE's last_smac). Only a cache: a stale value costs a relearn.
	lastSrc [MaxPorts]atomic.Uint64
	// lastDst caches, per source port, the bucket of the last destination MAC looked
	// up (valid | bucket<<48 | MAC), so a steady flow skips the hash here too.
	lastDst [MaxPorts]atomic.Uint64
}

// NewLearning returns an empty table.
func NewLearning() *Learning {
	l := &Learning{}
	for i := range l.lastSrc {
		l.lastSrc[i].Store(noMAC)
	}
	return l
}

// Lookup is the default switch lookup: learn the source, then forward a unicast
// destination to its learned port and everything else (group addresses, unknown
// unicast) to Broadcast. It has the Lookup signature, so a custom lookup can wrap it.
func (l *Learning) Lookup(frame []byte, src int) int { return l.lookup(frame, src, true) }

// LookupNoLearn is Lookup without learning the source (netmap's NS_NO_LEARN).
func (l *Learning) LookupNoLearn(frame []byte, src int) int { return l.lookup(frame, src, false) }

func (l *Learning) lookup(frame []byte, src int, learn bool) int {
	if len(frame) < 14 {
		return Drop
	}
	// Both MACs with two 8-byte loads: bytes 0..5 and 6..11.
	dmac := binary.LittleEndian.Uint64(frame[0:8]) & macMask
	if learn {
		l.learn48(binary.LittleEndian.Uint64(frame[4:12])>>16, src)
	}
	if dmac&1 != 0 {
		return Broadcast
	}
	var bucket uint32
	if uint(src) < MaxPorts {
		if c := l.lastDst[src].Load(); c&entryValid != 0 && c&macMask == dmac {
			bucket = uint32(c>>portShift) & (HashSize - 1)
		} else {
			bucket = rthash48(dmac)
			l.lastDst[src].Store(entryValid | uint64(bucket)<<portShift | dmac)
		}
	} else {
		bucket = rthash48(dmac)
	}
	e := l.table[bucket].Load()
	if e&entryValid != 0 && e&macMask == dmac {
		return int(e>>portShift) & 0xff
	}
	return Broadcast
}

// Learn records that the unicast MAC m (6 bytes) lives behind port.
func (l *Learning) Learn(m []byte, port int) { l.learn48(mac48(m), port) }

func (l *Learning) learn48(smac uint64, port int) {
	if smac&1 != 0 || uint(port) >= MaxPorts {
		return
	}
	if l.lastSrc[port].Load() == smac {
		return
	}
	want := entryValid | uint64(port)<<portShift | smac
	b := &l.table[rthash48(smac)]
	if b.Load() != want {
		b.Store(want)
	}
	l.lastSrc[port].Store(smac)
}

// Where returns the port the table maps the MAC m to, if any.
func (l *Learning) Where(m []byte) (int, bool) {
	e := l.table[rthash(m)].Load()
	if e&entryValid != 0 && e&macMask == mac48(m) {
		return int(e>>portShift) & 0xff, true
	}
	return 0, false
}

// Forget removes every entry pointing at port (the port left the switch: its index
// may be reused by another port, which must not receive the old port's traffic).
func (l *Learning) Forget(port int) {
	for i := range l.table {
		e := l.table[i].Load()
		if e&entryValid != 0 && int(e>>portShift)&0xff == port {
			l.table[i].CompareAndSwap(e, 0)
		}
	}
	if uint(port) < MaxPorts {
		l.lastSrc[port].Store(noMAC)
		l.lastDst[port].Store(0)
	}
}
