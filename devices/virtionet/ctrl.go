package virtionet

import (
	"encoding/binary"
	"fmt"

	"github.com/ptvmm/ptvmm/devices/virtio"
)

// Control queue classes, commands and acks.
const (
	ctrlRx          = 0
	ctrlRxPromisc   = 0
	ctrlRxAllmulti  = 1
	ctrlMAC         = 1
	ctrlMACTableSet = 0
	ctrlMACAddrSet  = 1
	ctrlMQ          = 4
	ctrlMQPairsSet  = 0

	ackOK  = 0
	ackErr = 1
)

// serviceCtrl runs up to ctrlBatch pending control commands; it reports whether it
// must run again without a wakeup. Drain re-arms and re-checks before it gives up: a
// driver that posts its next command as soon as it sees the last one done (Linux's
// virtnet_send_command, spinning under the rtnl lock) may not kick for it.
func (p *pair) serviceCtrl() bool {
	q := p.ctrl
	if q.Broken() != nil {
		return false
	}
	more := q.Drain(&p.ctrlChain, ctrlBatch, func(c *virtio.Chain) virtio.Verdict {
		q.Push(c.Head, p.command(c))
		return virtio.Next
	})
	if err := q.Broken(); err != nil {
		p.broken(q, err)
	}
	if q.NeedInterrupt() {
		_ = q.Interrupt()
	}
	return more
}

// command runs one control chain and returns the bytes written (the ack, or 0).
func (p *pair) command(c *virtio.Chain) uint32 {
	w := c.Writable()
	if len(w) == 0 || c.ReadLen < 2 || c.ReadLen > maxCtrlLength {
		return 0 // nowhere to put the ack, or absurd: drop
	}
	cmd := make([]byte, 0, c.ReadLen)
	for _, b := range c.Readable() {
		cmd = append(cmd, b.Data...)
	}
	ack := byte(ackOK)
	if err := p.d.control(cmd[0], cmd[1], cmd[2:]); err != nil {
		ack = ackErr
		p.d.logf("virtionet %s: control class %d cmd %d: %v", macString(p.d.MAC()), cmd[0], cmd[1], err)
	}
	last := w[len(w)-1].Data
	if len(last) == 0 {
		return 0
	}
	last[len(last)-1] = ack
	return 1
}

// control applies one control command; an error becomes an ERR ack.
func (d *Device) control(class, cmd byte, data []byte) error {
	switch {
	case class == ctrlRx && (cmd == ctrlRxPromisc || cmd == ctrlRxAllmulti):
		if len(data) != 1 {
			return fmt.Errorf("rx command with %d bytes", len(data))
		}
		d.filterMu.Lock()
		if cmd == ctrlRxPromisc {
			d.promisc = data[0] != 0
		} else {
			d.allmulti = data[0] != 0
		}
		d.filterMu.Unlock()
		return nil
	case class == ctrlMAC && cmd == ctrlMACTableSet:
		uni, rest, err := macTable(data)
		if err != nil {
			return err
		}
		multi, rest, err := macTable(rest)
		if err != nil {
			return err
		}
		if len(rest) != 0 {
			return fmt.Errorf("MAC table with %d trailing bytes", len(rest))
		}
		d.filterMu.Lock()
		d.uniTable, d.multiTable = uni, multi
		d.filterMu.Unlock()
		return nil
	case class == ctrlMAC && cmd == ctrlMACAddrSet:
		if len(data) != 6 {
			return fmt.Errorf("MAC address of %d bytes", len(data))
		}
		d.filterMu.Lock()
		copy(d.cfg.MAC[:], data)
		d.filterMu.Unlock()
		return nil
	case class == ctrlMQ && cmd == ctrlMQPairsSet:
		if len(data) != 2 {
			return fmt.Errorf("queue pairs command with %d bytes", len(data))
		}
		n := binary.LittleEndian.Uint16(data)
		if n < 1 || int(n) > d.pairs {
			return fmt.Errorf("%d queue pairs requested, device has %d", n, d.pairs)
		}
		d.activePairs.Store(int32(n))
		return nil
	}
	return fmt.Errorf("unsupported")
}

// macTable parses {u32 entries; u8 mac[entries][6]} and returns the rest.
func macTable(b []byte) ([][6]byte, []byte, error) {
	if len(b) < 4 {
		return nil, nil, fmt.Errorf("MAC table truncated")
	}
	n := uint64(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if n*6 > uint64(len(b)) {
		return nil, nil, fmt.Errorf("MAC table of %d entries in %d bytes", n, len(b))
	}
	t := make([][6]byte, n)
	for i := range t {
		copy(t[i][:], b[6*i:])
	}
	return t, b[6*n:], nil
}

// ActivePairs is the number of queue pairs the driver enabled (VQ_PAIRS_SET).
func (d *Device) ActivePairs() int { return int(d.activePairs.Load()) }
