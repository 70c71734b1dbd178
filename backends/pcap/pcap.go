package pcap

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// File format constants (pcap-savefile(5)).
const (
	MagicMicro        = 0xa1b2c3d4 // microsecond timestamps; the one Writer produces
	MagicNano         = 0xa1b23c4d // nanosecond timestamps; Reader accepts it
	VersionMajor      = 2
	VersionMinor      = 4
	LinkTypeEthernet  = 1
	DefaultSnapLen    = 65535
	fileHeaderLen     = 24
	recordHeaderLen   = 16
	maxReadRecordSize = 1 << 24 // a record larger than this is a corrupt file
)

// Writer appends packet records to a pcap stream. Safe for concurrent use (see the
// package comment).
type Writer struct {
	mu      sync.Mutex
	bw      *bufio.Writer
	closer  io.Closer // nil when the caller owns the underlying writer
	snaplen uint32
	hdr     [recordHeaderLen]byte
	one     [1][]byte // scratch for WritePacket, avoids a slice allocation per packet
	packets uint64
	err     error // first write error; sticky, later writes return it
}

// NewWriter writes the file header to w and returns a Writer that truncates packets to
// snaplen bytes (0 means DefaultSnapLen). The caller keeps ownership of w: Close
// flushes but does not close it.
func NewWriter(w io.Writer, snaplen int) (*Writer, error) {
	if snaplen < 0 {
		return nil, fmt.Errorf("pcap: snaplen %d is negative", snaplen)
	}
	if snaplen == 0 {
		snaplen = DefaultSnapLen
	}
	pw := &Writer{bw: bufio.NewWriterSize(w, 64<<10), snaplen: uint32(snaplen)}
	var h [fileHeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], MagicMicro)
	binary.LittleEndian.PutUint16(h[4:], VersionMajor)
	binary.LittleEndian.PutUint16(h[6:], VersionMinor)
	// thiszone (int32) and sigfigs (uint32) stay 0, as every current writer does.
	binary.LittleEndian.PutUint32(h[16:], pw.snaplen)
	binary.LittleEndian.PutUint32(h[20:], LinkTypeEthernet)
	if _, err := pw.bw.Write(h[:]); err != nil {
		return nil, fmt.Errorf("pcap: write file header: %w", err)
	}
	return pw, nil
}

// Create creates (or truncates) the file at path and returns a Writer on it; Close
// closes the file.
func Create(path string, snaplen int) (*Writer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("pcap: %w", err)
	}
	w, err := NewWriter(f, snaplen)
	if err != nil {
		f.Close()
		return nil, err
	}
	w.closer = f
	return w, nil
}

// WritePacket records one frame captured at ts.
func (w *Writer) WritePacket(ts time.Time, frame []byte) error {
	w.mu.Lock()
	w.one[0] = frame
	err := w.writeLocked(ts, w.one[:])
	w.one[0] = nil
	w.mu.Unlock()
	return err
}

// WriteFragments records one packet made of the concatenation of frags (a netmap
// NS_MOREFRAG chain), captured at ts. The record keeps at most snaplen bytes and
// carries the full length as the original length. frags is not retained.
func (w *Writer) WriteFragments(ts time.Time, frags [][]byte) error {
	w.mu.Lock()
	err := w.writeLocked(ts, frags)
	w.mu.Unlock()
	return err
}

func (w *Writer) writeLocked(ts time.Time, frags [][]byte) error {
	if w.err != nil {
		return w.err
	}
	total := 0
	for _, f := range frags {
		total += len(f)
	}
	if uint64(total) > 0xffffffff {
		return fmt.Errorf("pcap: packet of %d bytes is too large for a record", total)
	}
	incl := uint32(total)
	if incl > w.snaplen {
		incl = w.snaplen
	}
	usec := ts.UnixMicro()
	h := w.hdr[:]
	binary.LittleEndian.PutUint32(h[0:], uint32(usec/1e6))
	binary.LittleEndian.PutUint32(h[4:], uint32(usec%1e6))
	binary.LittleEndian.PutUint32(h[8:], incl)
	binary.LittleEndian.PutUint32(h[12:], uint32(total))
	if _, err := w.bw.Write(h); err != nil {
		w.err = fmt.Errorf("pcap: write record: %w", err)
		return w.err
	}
	left := int(incl)
	for _, f := range frags {
		if left == 0 {
			break
		}
		if len(f) > left {
			f = f[:left]
		}
		if _, err := w.bw.Write(f); err != nil {
			w.err = fmt.Errorf("pcap: write record: %w", err)
			return w.err
		}
		left -= len(f)
	}
	w.packets++
	return nil
}

// Packets is the number of records written so far.
func (w *Writer) Packets() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.packets
}

// Flush writes buffered records to the underlying writer.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

func (w *Writer) flushLocked() error {
	if w.err != nil {
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.err = fmt.Errorf("pcap: flush: %w", err)
	}
	return w.err
}

// Close flushes and, for a Writer made by Create, closes the file. Later writes fail.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.flushLocked()
	if w.closer != nil {
		if cerr := w.closer.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("pcap: close: %w", cerr)
		}
		w.closer = nil
	}
	if w.err == nil {
		w.err = errors.New("pcap: writer closed")
	}
	return err
}

// Header is the file header a Reader found.
type Header struct {
	Nano     bool // timestamps are in nanoseconds
	Major    uint16
	Minor    uint16
	SnapLen  uint32
	LinkType uint32
}

// Record is one packet record.
type Record struct {
	Time    time.Time
	OrigLen int    // length of the packet on the wire
	Data    []byte // captured bytes (at most SnapLen); valid until the next Next
}

// Reader reads a pcap stream of either byte order and either timestamp resolution.
type Reader struct {
	r     io.Reader
	order binary.ByteOrder
	hdr   Header
	buf   []byte
}

// NewReader reads and checks the file header.
func NewReader(r io.Reader) (*Reader, error) {
	var h [fileHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, fmt.Errorf("pcap: read file header: %w", err)
	}
	rd := &Reader{r: r}
	switch {
	case binary.LittleEndian.Uint32(h[0:]) == MagicMicro:
		rd.order = binary.LittleEndian
	case binary.LittleEndian.Uint32(h[0:]) == MagicNano:
		rd.order, rd.hdr.Nano = binary.LittleEndian, true
	case binary.BigEndian.Uint32(h[0:]) == MagicMicro:
		rd.order = binary.BigEndian
	case binary.BigEndian.Uint32(h[0:]) == MagicNano:
		rd.order, rd.hdr.Nano = binary.BigEndian, true
	default:
		return nil, fmt.Errorf("pcap: bad magic %#x: not a classic pcap file", binary.LittleEndian.Uint32(h[0:]))
	}
	rd.hdr.Major = rd.order.Uint16(h[4:])
	rd.hdr.Minor = rd.order.Uint16(h[6:])
	rd.hdr.SnapLen = rd.order.Uint32(h[16:])
	rd.hdr.LinkType = rd.order.Uint32(h[20:])
	if rd.hdr.Major != VersionMajor {
		return nil, fmt.Errorf("pcap: unsupported version %d.%d", rd.hdr.Major, rd.hdr.Minor)
	}
	return rd, nil
}

// Header returns the file header.
func (r *Reader) Header() Header { return r.hdr }

// Next returns the next record, or io.EOF at a clean end of file.
func (r *Reader) Next() (Record, error) {
	var h [recordHeaderLen]byte
	if _, err := io.ReadFull(r.r, h[:]); err != nil {
		if err == io.EOF {
			return Record{}, io.EOF
		}
		return Record{}, fmt.Errorf("pcap: read record header: %w", err)
	}
	sec := r.order.Uint32(h[0:])
	frac := r.order.Uint32(h[4:])
	incl := r.order.Uint32(h[8:])
	orig := r.order.Uint32(h[12:])
	if incl > maxReadRecordSize {
		return Record{}, fmt.Errorf("pcap: record of %d bytes: corrupt file", incl)
	}
	if cap(r.buf) < int(incl) {
		r.buf = make([]byte, incl)
	}
	r.buf = r.buf[:incl]
	if _, err := io.ReadFull(r.r, r.buf); err != nil {
		return Record{}, fmt.Errorf("pcap: read record data: %w", err)
	}
	nsec := int64(frac) * 1000
	if r.hdr.Nano {
		nsec = int64(frac)
	}
	return Record{Time: time.Unix(int64(sec), nsec), OrigLen: int(orig), Data: r.buf}, nil
}
