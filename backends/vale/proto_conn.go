package vale

import (
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// sendMsg writes one packet (a whole message) with fds as SCM_RIGHTS. The fds stay
// the caller's.
func sendMsg(c *net.UnixConn, pkt []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		if len(fds) > MaxFDs {
			return fmt.Errorf("vale: send: %d descriptors, at most %d", len(fds), MaxFDs)
		}
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(pkt, oob, nil)
	if err != nil {
		return fmt.Errorf("vale: send: %w", err)
	}
	if n != len(pkt) || oobn != len(oob) {
		return fmt.Errorf("vale: send: short write (%d of %d bytes)", n, len(pkt))
	}
	return nil
}

// recvMsg reads one packet into buf and the descriptors that came with it
// (close-on-exec). A packet that did not fit buf or whose descriptors did not fit
// oob is an error wrapping ErrProto, with its descriptors closed; the connection
// may go on. io.EOF: the peer closed.
func recvMsg(c *net.UnixConn, buf, oob []byte) ([]byte, []int, error) {
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	fds, perr := parseRights(oob[:oobn])
	if err != nil {
		closeFDs(fds)
		if errors.Is(err, io.EOF) {
			return nil, nil, io.EOF
		}
		return nil, nil, err
	}
	if n == 0 && oobn == 0 {
		return nil, nil, io.EOF // SOCK_SEQPACKET: a zero read is the peer's close
	}
	switch {
	case flags&unix.MSG_TRUNC != 0 || n == len(buf):
		closeFDs(fds)
		return nil, nil, protoErr("packet longer than %d bytes", len(buf)-1)
	case flags&unix.MSG_CTRUNC != 0:
		closeFDs(fds)
		return nil, nil, protoErr("more than %d descriptors", MaxFDs)
	case perr != nil:
		closeFDs(fds)
		return nil, nil, perr
	}
	return buf[:n], fds, nil
}

// parseRights collects the SCM_RIGHTS descriptors of a control buffer; other
// control messages are ignored. Descriptors found before an error are returned with
// it, for the caller to close.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, protoErr("control data: %v", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, protoErr("SCM_RIGHTS: %v", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}
