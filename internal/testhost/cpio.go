package testhost

import (
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// File is one file of an initramfs: the host file Src becomes Dst (absolute
// path inside the image). Data, when non-nil, is used instead of Src.
type File struct {
	Src  string
	Dst  string
	Data []byte
	Mode os.FileMode // permission bits; 0 means 0755
}

// WriteInitramfs writes a newc cpio archive holding files and their parent
// directories. File contents are streamed, not loaded into memory.
func WriteInitramfs(w io.Writer, files []File) error {
	rw := cpio.Newc.Writer(w)
	dirs := map[string]bool{}
	var dirList []string
	for _, f := range files {
		for d := path.Dir(strings.TrimPrefix(f.Dst, "/")); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			dirList = append(dirList, d)
		}
	}
	sort.Strings(dirList) // parents sort before children
	for _, d := range dirList {
		if err := rw.WriteRecord(cpio.Directory(d, 0o755)); err != nil {
			return fmt.Errorf("testhost: cpio %s: %w", d, err)
		}
	}
	for _, f := range files {
		if err := writeFile(rw, f); err != nil {
			return err
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return fmt.Errorf("testhost: cpio trailer: %w", err)
	}
	return nil
}

func writeFile(rw cpio.RecordWriter, f File) error {
	perm := uint64(f.Mode.Perm())
	if perm == 0 {
		perm = 0o755
	}
	name := strings.TrimPrefix(f.Dst, "/")
	if f.Data != nil {
		rec := cpio.StaticRecord(f.Data, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm, NLink: 1})
		if err := rw.WriteRecord(rec); err != nil {
			return fmt.Errorf("testhost: cpio %s: %w", f.Dst, err)
		}
		return nil
	}
	fh, err := os.Open(f.Src)
	if err != nil {
		return fmt.Errorf("testhost: initramfs file: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return fmt.Errorf("testhost: initramfs file: %w", err)
	}
	rec := cpio.Record{ReaderAt: fh, Info: cpio.Info{
		Name: name, Mode: cpio.S_IFREG | perm, NLink: 1, FileSize: uint64(st.Size()),
	}}
	if err := rw.WriteRecord(rec); err != nil {
		return fmt.Errorf("testhost: cpio %s: %w", f.Dst, err)
	}
	return nil
}
