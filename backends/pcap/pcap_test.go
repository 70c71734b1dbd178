package pcap

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func frame(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i)
	}
	return b
}

func TestHeaderLayout(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, 1500)
	require.NoError(t, err)
	require.NoError(t, w.Flush())
	h := buf.Bytes()
	require.Len(t, h, 24)
	require.Equal(t, uint32(0xa1b2c3d4), binary.LittleEndian.Uint32(h[0:]))
	require.Equal(t, uint16(2), binary.LittleEndian.Uint16(h[4:]))
	require.Equal(t, uint16(4), binary.LittleEndian.Uint16(h[6:]))
	require.Equal(t, uint32(1500), binary.LittleEndian.Uint32(h[16:]))
	require.Equal(t, uint32(1), binary.LittleEndian.Uint32(h[20:]))
}

func TestRoundTripSnaplenAndFragments(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, 100)
	require.NoError(t, err)
	ts := time.Unix(1700000000, 123456000)
	small, big := frame(60, 1), frame(300, 7)
	require.NoError(t, w.WritePacket(ts, small))
	require.NoError(t, w.WritePacket(ts.Add(time.Microsecond), big))
	frags := [][]byte{frame(40, 3), frame(40, 50), frame(40, 90)}
	require.NoError(t, w.WriteFragments(ts, frags))
	require.NoError(t, w.Close())
	require.Equal(t, uint64(3), w.Packets())
	require.Error(t, w.WritePacket(ts, small), "write after close must fail")

	r, err := NewReader(&buf)
	require.NoError(t, err)
	require.Equal(t, uint32(100), r.Header().SnapLen)
	rec, err := r.Next()
	require.NoError(t, err)
	require.Equal(t, small, rec.Data)
	require.Equal(t, 60, rec.OrigLen)
	require.True(t, rec.Time.Equal(ts), "got %v", rec.Time)
	rec, err = r.Next()
	require.NoError(t, err)
	require.Equal(t, big[:100], rec.Data, "truncated to snaplen")
	require.Equal(t, 300, rec.OrigLen)
	rec, err = r.Next()
	require.NoError(t, err)
	want := append(append(append([]byte{}, frags[0]...), frags[1]...), frags[2][:20]...)
	require.Equal(t, want, rec.Data)
	require.Equal(t, 120, rec.OrigLen)
	_, err = r.Next()
	require.Equal(t, io.EOF, err)
}

func TestConcurrentWritersKeepRecordsWhole(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, 0)
	require.NoError(t, err)
	const writers, per = 4, 500
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			f := frame(64+g, byte(g*40))
			for i := 0; i < per; i++ {
				if err := w.WritePacket(time.Now(), f); err != nil {
					t.Error(err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	require.NoError(t, w.Flush())
	r, err := NewReader(&buf)
	require.NoError(t, err)
	n := 0
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		g := len(rec.Data) - 64
		require.True(t, g >= 0 && g < writers, "record length %d", len(rec.Data))
		require.Equal(t, frame(64+g, byte(g*40)), rec.Data)
		n++
	}
	require.Equal(t, writers*per, n)
}

func TestReaderRejectsGarbage(t *testing.T) {
	_, err := NewReader(bytes.NewReader(make([]byte, 24)))
	require.Error(t, err)
	_, err = NewReader(bytes.NewReader([]byte{1, 2}))
	require.Error(t, err)
	// A record header announcing an absurd length must not allocate it.
	var buf bytes.Buffer
	w, err := NewWriter(&buf, 0)
	require.NoError(t, err)
	require.NoError(t, w.Flush())
	var h [16]byte
	binary.LittleEndian.PutUint32(h[8:], 0xffffffff)
	buf.Write(h[:])
	r, err := NewReader(&buf)
	require.NoError(t, err)
	_, err = r.Next()
	require.Error(t, err)
}

// TestTsharkReadsWriterOutput checks the file against an independent reader.
func TestTsharkReadsWriterOutput(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		t.Skip("tshark not installed (Debian package tshark); the format is still checked by the round-trip tests")
	}
	path := filepath.Join(t.TempDir(), "out.pcap")
	w, err := Create(path, 0)
	require.NoError(t, err)
	lens := []int{60, 1514, 14, 128, 9000}
	for i, n := range lens {
		f := frame(n, byte(i))
		copy(f[12:14], []byte{0x08, 0x00})
		require.NoError(t, w.WritePacket(time.Now(), f))
	}
	require.NoError(t, w.Close())
	out, err := exec.Command(tshark, "-r", path, "-T", "fields", "-e", "frame.len").CombinedOutput()
	require.NoError(t, err, "%s", out)
	var got []int
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		n, err := strconv.Atoi(strings.TrimSpace(line))
		if err != nil {
			continue // tshark may print warnings (e.g. running as root)
		}
		got = append(got, n)
	}
	require.Equal(t, lens, got)
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Greater(t, st.Size(), int64(24))
}

func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, 0)
	_ = w.WritePacket(time.Unix(1, 2), frame(60, 0))
	_ = w.Flush()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		for i := 0; i < 1000; i++ {
			rec, err := r.Next()
			if err != nil {
				return
			}
			if len(rec.Data) > maxReadRecordSize {
				t.Fatalf("record of %d bytes", len(rec.Data))
			}
		}
	})
}

func BenchmarkWritePacket60(b *testing.B) {
	w, err := NewWriter(io.Discard, 0)
	require.NoError(b, err)
	f := frame(60, 0)
	ts := time.Now()
	b.ReportAllocs()
	b.SetBytes(60)
	for b.Loop() {
		if err := w.WritePacket(ts, f); err != nil {
			b.Fatal(err)
		}
	}
}
