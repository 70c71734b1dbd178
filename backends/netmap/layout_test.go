package netmap

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// The offsets from SPECS.md section 1 (gcc offsetof of netmap.h), written out here
// independently of the constants under test.
func TestStructOffsets(t *testing.T) {
	cases := []struct {
		name      string
		got, want int
	}{
		{"sizeof(netmap_slot)", SlotSize, 16},
		{"slot.buf_idx", SlotBufIdxOff, 0},
		{"slot.len", SlotLenOff, 4},
		{"slot.flags", SlotFlagsOff, 6},
		{"slot.ptr", SlotPtrOff, 8},
		{"ring header", RingHeaderSize, 256},
		{"ring.buf_ofs", RingBufOfsOff, 0},
		{"ring.num_slots", RingNumSlotsOff, 8},
		{"ring.nr_buf_size", RingBufSizeOff, 12},
		{"ring.ringid", RingIDOff, 16},
		{"ring.dir", RingDirOff, 18},
		{"ring.head", RingHeadOff, 20},
		{"ring.cur", RingCurOff, 24},
		{"ring.tail", RingTailOff, 28},
		{"ring.flags", RingFlagsOff, 32},
		{"ring.ts", RingTSOff, 40},
		{"ring.offset_mask", RingOffsetMaskOff, 56},
		{"ring.buf_align", RingBufAlignOff, 64},
		{"ring.sem", RingSemOff, 128},
		{"ring.slot", RingSlotsOff, 256},
		{"netmap_if header", IfHeaderSize, 56},
		{"if.ni_name", IfNameOff, 0},
		{"IFNAMSIZ", IfNameSize, 16},
		{"if.ni_version", IfVersionOff, 16},
		{"if.ni_flags", IfFlagsOff, 20},
		{"if.ni_tx_rings", IfTxRingsOff, 24},
		{"if.ni_rx_rings", IfRxRingsOff, 28},
		{"if.ni_bufs_head", IfBufsHeadOff, 32},
		{"if.ni_host_tx_rings", IfHostTxRingsOff, 36},
		{"if.ni_host_rx_rings", IfHostRxRingsOff, 40},
		{"if.spare", IfSpareOff, 44},
		{"if.ring_ofs", IfRingOfsOff, 56},
		{"sizeof(nmreq_pools_info)", PoolsInfoSize, 64},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	flags := []struct {
		name      string
		got, want int
	}{
		{"NS_BUF_CHANGED", NSBufChanged, 1}, {"NS_REPORT", NSReport, 2}, {"NS_FORWARD", NSForward, 4},
		{"NS_NO_LEARN", NSNoLearn, 8}, {"NS_INDIRECT", NSIndirect, 0x10}, {"NS_MOREFRAG", NSMoreFrag, 0x20},
		{"NS_TXMON", NSTxMon, 0x40}, {"NS_PORT_SHIFT", NSPortShift, 8}, {"NS_PORT_MASK", NSPortMask, 0xff00},
		{"NR_TIMESTAMP", NRTimestamp, 2}, {"NR_FORWARD", NRForward, 4}, {"NI_PRIV_MEM", NIPrivMem, 1},
	}
	for _, c := range flags {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestSlotEncoding(t *testing.T) {
	b := make([]byte, 32)
	putSlot(b, 16, Slot{BufIdx: 0x11223344, Len: 0x5566, Flags: 0x7788, Ptr: 0x99aabbccddeeff00})
	want := []byte{0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x88, 0x77, 0x00, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99}
	for i, w := range want {
		if b[16+i] != w {
			t.Fatalf("slot byte %d = %#x, want %#x (% x)", i, b[16+i], w, b[16:])
		}
	}
	if s := getSlot(b, 16); s.BufIdx != 0x11223344 || s.Len != 0x5566 || s.Flags != 0x7788 || s.Ptr != 0x99aabbccddeeff00 {
		t.Fatalf("decode: %+v", s)
	}
}

func TestPoolsInfoEncoding(t *testing.T) {
	p := PoolsInfo{MemSize: 0x0102030405060708, MemID: 0x0a0b, IfPoolOffset: 0x10, IfObjTotal: 0x20, IfObjSize: 0x30,
		RingPoolOffset: 0x40, RingObjTotal: 0x50, RingObjSize: 0x60, BufPoolOffset: 0x70, BufObjTotal: 0x80, BufObjSize: 0x90}
	b := make([]byte, 64)
	for i := range b {
		b[i] = 0xee
	}
	p.Encode(b)
	le := binary.LittleEndian
	checks := []struct {
		off  int
		size int
		want uint64
	}{{0, 8, p.MemSize}, {8, 2, 0x0a0b}, {10, 6, 0}, {16, 8, 0x10}, {24, 4, 0x20}, {28, 4, 0x30}, {32, 8, 0x40},
		{40, 4, 0x50}, {44, 4, 0x60}, {48, 8, 0x70}, {56, 4, 0x80}, {60, 4, 0x90}}
	for _, c := range checks {
		var got uint64
		switch c.size {
		case 2:
			got = uint64(le.Uint16(b[c.off:]))
		case 4:
			got = uint64(le.Uint32(b[c.off:]))
		case 6:
			got = uint64(le.Uint32(b[c.off:])) | uint64(le.Uint16(b[c.off+4:]))<<32
		case 8:
			got = le.Uint64(b[c.off:])
		}
		if got != c.want {
			t.Errorf("pools info @%d = %#x, want %#x", c.off, got, c.want)
		}
	}
	q, err := DecodePoolsInfo(b)
	if err != nil || q != p {
		t.Fatalf("decode = %+v, %v", q, err)
	}
	if _, err := DecodePoolsInfo(b[:63]); err == nil {
		t.Fatal("short pools info decoded")
	}
}

// A default VALE-style port gets exactly netmap's private minimum allocator.
func TestPrivateRegionLayout(t *testing.T) {
	if unix.Getpagesize() != 4096 {
		t.Skip("layout figures assume 4 KiB pages")
	}
	p, err := NewPort(PortConfig{Name: "vale0:a"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pi := p.Region().PoolsInfo()
	if pi.IfPoolOffset != 0 || pi.IfObjSize != 1024 || pi.IfObjTotal != 4 {
		t.Errorf("if pool %+v: want offset 0, 4 x 1024 (2 rounded to a 4 KiB cluster)", pi)
	}
	if pi.RingPoolOffset != 4096 || pi.RingObjSize != 20480 || pi.RingObjTotal != 4 {
		t.Errorf("ring pool %+v: want offset 4096, 4 x 20480", pi)
	}
	if pi.BufPoolOffset != 4096+4*20480 || pi.BufObjSize != 2048 || pi.BufObjTotal != 4098 {
		t.Errorf("buf pool %+v: want offset %d, 4098 x 2048", pi, 4096+4*20480)
	}
	if pi.MemSize != pi.BufPoolOffset+4098*2048 || pi.MemSize != p.Region().Size() {
		t.Errorf("memsize %d, region %d", pi.MemSize, p.Region().Size())
	}
	if pi.MemID < 2 || pi.MemID != p.Region().ID() {
		t.Errorf("mem id %d", pi.MemID)
	}
	var st unix.Stat_t
	want := uint64(16 << 20) // 8.4 MB rounded up to a power of two for a BAR
	if err := unix.Fstat(p.Region().FD(), &st); err != nil || uint64(st.Size) != want || p.Region().MapSize() != want {
		t.Errorf("memfd size %d (%v), MapSize %d, want %d", st.Size, err, p.Region().MapSize(), want)
	}
	// The memfd is the region: a second mapping sees what the port wrote.
	m2, err := unix.Mmap(p.Region().FD(), 0, int(want), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m2)
	if binary.LittleEndian.Uint32(m2[p.NifpOffset()+IfVersionOff:]) != APIVersion {
		t.Error("second mapping of the memfd does not show the netmap_if")
	}
	// 1 tx + 1 rx ring of 1024 slots use 2048 buffers, besides the 2 reserved.
	if free := p.Region().FreeBufs(); free != 4098-2-2048 {
		t.Errorf("free buffers %d, want %d", free, 4098-2-2048)
	}
}

func TestPoolClusters(t *testing.T) {
	const page = 4096
	cases := []struct {
		size, num         uint32
		wantSize, wantNum uint32
	}{
		{1024, 2, 1024, 4},   // 4 per page
		{100, 1, 128, 32},    // 64-B rounding, 32 per page
		{20480, 3, 20480, 3}, // whole pages: 1 per cluster
		{2048, 4097, 2048, 4098},
		{3000, 1, 3008, 64}, // 3008 = 47*64: 64 objects fill 47 pages
		{65536, 5, 65536, 5},
	}
	for _, c := range cases {
		p, err := poolLayout(c.size, c.num, page, "test")
		if err != nil {
			t.Fatalf("%d x %d: %v", c.size, c.num, err)
		}
		if p.objSize != c.wantSize || p.objNum != c.wantNum {
			t.Errorf("%d x %d -> %d x %d, want %d x %d", c.size, c.num, p.objSize, p.objNum, c.wantSize, c.wantNum)
		}
		if p.bytes()%page != 0 {
			t.Errorf("%d x %d: pool of %d bytes is not whole pages", c.size, c.num, p.bytes())
		}
	}
}

func TestNetmapIfLayout(t *testing.T) {
	p, err := NewPort(PortConfig{Name: "a-rather-long-port-name", TxRings: 2, RxRings: 3, HostRings: 1, TxSlots: 64, RxSlots: 128, ExtraBufs: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	mem := p.Region().Bytes()
	ni := mem[p.NifpOffset():]
	le := binary.LittleEndian
	if got := string(ni[:15]); got != "a-rather-long-p" || ni[15] != 0 {
		t.Errorf("ni_name %q (NUL-terminated in 16 bytes)", ni[:16])
	}
	want := map[int]uint32{16: APIVersion, 20: NIPrivMem, 24: 2, 28: 3, 36: 1, 40: 1}
	for off, w := range want {
		if got := le.Uint32(ni[off:]); got != w {
			t.Errorf("netmap_if u32 @%d = %d, want %d", off, got, w)
		}
	}
	// ring_ofs: HW tx 0,1, host tx, HW rx 0,1,2, host rx.
	order := []*Kring{p.TxRing(0), p.TxRing(1), p.TxRing(2), p.RxRing(0), p.RxRing(1), p.RxRing(2), p.RxRing(3)}
	for i, k := range order {
		ofs := int64(le.Uint64(ni[56+8*i:]))
		if uint64(int64(p.NifpOffset())+ofs) != k.Offset() {
			t.Errorf("ring_ofs[%d] -> %#x, want %s at %#x", i, int64(p.NifpOffset())+ofs, k.Name(), k.Offset())
		}
		h := mem[k.Offset():]
		if int64(le.Uint64(h[0:]))+int64(k.Offset()) != int64(p.Region().PoolsInfo().BufPoolOffset) {
			t.Errorf("%s: buf_ofs does not point at buffer 0", k.Name())
		}
		wantSlots := uint32(64)
		if k.Dir() == RX {
			wantSlots = 128
		}
		if le.Uint32(h[8:]) != wantSlots || le.Uint32(h[12:]) != 2048 || le.Uint16(h[18:]) != uint16(k.Dir()) {
			t.Errorf("%s: header num_slots %d buf_size %d dir %d", k.Name(), le.Uint32(h[8:]), le.Uint32(h[12:]), le.Uint16(h[18:]))
		}
		wantID := uint16(i)
		if k.Dir() == RX {
			wantID = uint16(i - 3)
		}
		if le.Uint16(h[16:]) != wantID || k.IsHost() != (i == 2 || i == 6) {
			t.Errorf("%s: ringid %d host %v", k.Name(), le.Uint16(h[16:]), k.IsHost())
		}
	}
	// The user view finds the same rings.
	f, err := OpenIf(mem, p.NifpOffset())
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.RxRing(1)
	if err != nil || r.off != p.RxRing(1).Offset() {
		t.Fatalf("RXRING(1) = %v, %v", r, err)
	}
	if _, err := f.RxRing(4); err == nil {
		t.Error("RXRING(4) of 3+1 rings accepted")
	}
	// Extra buffers: a 5-long list from ni_bufs_head, all distinct and valid.
	seen := map[uint32]bool{}
	for b := f.BufsHead(); b != 0; b = le.Uint32(p.Region().Buf(b)) {
		if !p.Region().ValidBuf(b) || seen[b] || len(seen) > 5 {
			t.Fatalf("extra buffer list broken at %d", b)
		}
		seen[b] = true
	}
	if len(seen) != 5 {
		t.Errorf("extra buffers %d, want 5", len(seen))
	}
}

// The user view and the kernel side meet at the literal SPECS offsets.
func TestRingHeaderBytes(t *testing.T) {
	p, err := NewPort(PortConfig{Name: "hb", TxSlots: 10, RxSlots: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	le := binary.LittleEndian
	mem := p.Region().Bytes()
	k := p.RxRing(0)
	h := mem[k.Offset():]
	r := p.UserRing(k)
	l := k.RxReserve(3)
	k.RxFill(l.Start, []byte("abc"), NSMoreFrag)
	k.RxFill(l.Start+1, []byte("de"), 0)
	k.RxComplete(l, 2)
	r.SetFlags(NRTimestamp)
	if le.Uint32(h[32:]) != NRTimestamp {
		t.Fatal("flags not at offset 32")
	}
	if err := k.Sync(0); err != nil {
		t.Fatal(err)
	}
	if le.Uint32(h[28:]) != 2 {
		t.Errorf("tail at offset 28 = %d, want 2", le.Uint32(h[28:]))
	}
	if le.Uint64(h[40:]) == 0 {
		t.Error("no timestamp at offset 40 with NR_TIMESTAMP")
	}
	// slot[1] at 256+16: len 2 at +4, flags 0 at +6; slot[0] flags MOREFRAG.
	if le.Uint16(h[256+16+4:]) != 2 || le.Uint16(h[256+6:]) != NSMoreFrag || le.Uint16(h[256+4:]) != 3 {
		t.Errorf("slot bytes % x", h[256:256+32])
	}
	buf0 := int64(k.Offset()) + int64(le.Uint64(h[0:]))
	idx := le.Uint32(h[256:])
	if got := string(mem[buf0+int64(idx)*int64(le.Uint32(h[12:])):][:3]); got != "abc" {
		t.Errorf("BUF(ring, slot[0].buf_idx) holds %q", got)
	}
	r.SetHeadCur(1, 2)
	if le.Uint32(h[20:]) != 1 || le.Uint32(h[24:]) != 2 {
		t.Errorf("head/cur at 20/24 = %d/%d", le.Uint32(h[20:]), le.Uint32(h[24:]))
	}
	if err := k.Sync(0); err != nil || k.State().HwCur != 1 || k.State().RCur != 2 {
		t.Fatalf("sync %v state %+v", err, k.State())
	}
}

// Without host rings the netmap_if still reports one per direction, with ring_ofs 0.
func TestNoHostRings(t *testing.T) {
	p, err := NewPort(PortConfig{Name: "p", TxSlots: 8, RxSlots: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f, err := OpenIf(p.Region().Bytes(), p.NifpOffset())
	if err != nil {
		t.Fatal(err)
	}
	if f.HostTxRings() != 1 || f.HostRxRings() != 1 || p.NumHostRings() != 0 {
		t.Fatalf("host rings reported %d/%d", f.HostTxRings(), f.HostRxRings())
	}
	if _, err := f.TxRing(1); err == nil {
		t.Error("unbound host tx ring opened")
	}
	if r, err := f.RxRing(0); err != nil || r.off != p.RxRing(0).Offset() {
		t.Errorf("RXRING(0): %v", err)
	}
}

func TestPortCloseFreesEverything(t *testing.T) {
	r, err := NewRegion(RegionConfig{IfSize: 1024, IfNum: 4, RingSize: 4096, RingNum: 8, BufSize: 2048, BufNum: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	free := r.FreeBufs()
	p, err := NewPort(PortConfig{Name: "x", Region: r, TxSlots: 100, RxSlots: 100, ExtraBufs: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.FreeBufs(); got != free-210 {
		t.Fatalf("free after open %d, want %d", got, free-210)
	}
	if p.PrivateRegion() {
		t.Error("port in a shared region says private")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := r.FreeBufs(); got != free {
		t.Fatalf("free after close %d, want %d", got, free)
	}
	if p.Close() == nil {
		t.Error("second close succeeded")
	}
	// A ring too large for the region's ring objects is refused.
	if _, err := NewPort(PortConfig{Name: "big", Region: r, TxSlots: 1024}); err == nil {
		t.Error("1024-slot ring in 4096-byte ring objects accepted")
	}
	if got := r.FreeBufs(); got != free {
		t.Fatalf("failed open leaked buffers: %d free, want %d", got, free)
	}
}

func TestPortInfo(t *testing.T) {
	p, err := NewPort(PortConfig{Name: "pi", TxRings: 2, RxRings: 3, TxSlots: 64, RxSlots: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	in := p.Info()
	if in.MemSize != p.Region().Size() || in.MemID != p.Region().ID() || in.TxSlots != 64 || in.RxSlots != 128 ||
		in.TxRings != 2 || in.RxRings != 3 || in.HostTxRings != 1 || in.HostRxRings != 1 {
		t.Fatalf("info %+v", in)
	}
	b := make([]byte, 32)
	for i := range b {
		b[i] = 0xee
	}
	in.Encode(b)
	le := binary.LittleEndian
	if le.Uint64(b[0:]) != in.MemSize || le.Uint32(b[8:]) != 64 || le.Uint32(b[12:]) != 128 || le.Uint16(b[16:]) != 2 ||
		le.Uint16(b[18:]) != 3 || le.Uint16(b[20:]) != 1 || le.Uint16(b[22:]) != 1 || le.Uint16(b[24:]) != in.MemID ||
		le.Uint16(b[26:]) != 0 || le.Uint32(b[28:]) != 0 {
		t.Fatalf("encoded % x", b)
	}
}
