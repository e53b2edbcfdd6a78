// Interoperability helper for ckpt's tests: reads (and writes) tar archives
// with nothing but Go's standard library archive/tar.
//
// Usage:
//
//	readtar [-offsets] ARCHIVE        print one canonical line per member
//	readtar -write SRC_DIR ARCHIVE    write a PAX archive of SRC_DIR (members "./...")
//
// The canonical line is the same as readtar.py's, fields separated by one TAB:
//
//	name type mode uid gid size mtime linkname devmajor devminor xattrs sha256 [offset]
//
// Name and linkname are the raw bytes, with bytes <= 0x20, 0x7f..0xff, '\\', '=' and ','
// written as \xNN (xattr names likewise); a trailing "/" is removed from names ("./"
// becomes "."). Type is the typeflag character ('\x00' and 'S' are reported as '0'). Mode
// is 4 octal digits (mode & 07777). Mtime is SECONDS.NANOSECONDS (9 digits), from the PAX
// record when there is one. Devmajor and devminor are 0 unless the member is a character or
// block device. Xattrs is "-" or comma-separated NAME=HEX sorted by (escaped) NAME: from the
// LIBARCHIVE.xattr.* records when the member has any (bsdtar), else from SCHILY.xattr.* with
// GNU tar's "%3D"/"%25" escapes of '='/'%' in names undone (see memberXattrs). Sha256 is the
// hex digest of the member's data for regular members, "-" otherwise. Offset (with
// -offsets) is the archive offset of the member's data, counted by a reader that cannot
// seek, right after Next().
//
// Any error prints a message on stderr and exits with status 1.
package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	xattrPrefix      = "SCHILY.xattr."
	libarchivePrefix = "LIBARCHIVE.xattr."
)

// countingReader counts the bytes read through it. It deliberately does not
// implement io.Seeker, so archive/tar reads (and discards) data it skips, and
// the count right after Next() is the offset of the member's data.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func esc(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || c == '\\' || c == '=' || c == ',' {
			fmt.Fprintf(&b, "\\x%02x", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func canonName(name string) string {
	for len(name) > 1 && strings.HasSuffix(name, "/") {
		name = strings.TrimSuffix(name, "/")
	}
	return name
}

// gnuDecode undoes GNU tar's escaping of xattr names in SCHILY.xattr keywords
// (xheader.c xattr_decode_keyword): "%3D" is '=', "%25" is '%', nothing else.
func gnuDecode(s string) string {
	s = strings.ReplaceAll(s, "%3D", "\x00")
	s = strings.ReplaceAll(s, "%25", "%")
	return strings.ReplaceAll(s, "\x00", "=")
}

// gnuEncode is the inverse of gnuDecode: a pax keyword cannot contain '='.
func gnuEncode(s string) string {
	s = strings.ReplaceAll(s, "%", "%25")
	return strings.ReplaceAll(s, "=", "%3D")
}

// urlDecode decodes %XX escapes as libarchive does for LIBARCHIVE.xattr names.
func urlDecode(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(v))
				i += 2
				continue
			}
		}
		b = append(b, s[i])
	}
	return string(b)
}

// memberXattrs returns a member's xattrs. libarchive (bsdtar) writes every xattr twice:
// LIBARCHIVE.xattr.URLENCODED-NAME=BASE64-VALUE, and SCHILY.xattr.URLENCODED-NAME=VALUE, and
// reads the former when present. GNU tar writes SCHILY.xattr.NAME with only '=' and '%'
// escaped. So: LIBARCHIVE.xattr records when a member has any, SCHILY.xattr ones otherwise.
func memberXattrs(recs map[string]string) (map[string]string, error) {
	res := map[string]string{}
	for k, v := range recs {
		if strings.HasPrefix(k, libarchivePrefix) {
			val, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(v, "="))
			if err != nil {
				return nil, fmt.Errorf("bad base64 in %s: %w", k, err)
			}
			res[urlDecode(strings.TrimPrefix(k, libarchivePrefix))] = string(val)
		}
	}
	if len(res) > 0 {
		return res, nil
	}
	for k, v := range recs {
		if strings.HasPrefix(k, xattrPrefix) {
			res[gnuDecode(strings.TrimPrefix(k, xattrPrefix))] = v
		}
	}
	return res, nil
}

func list(path string, offsets bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	cr := &countingReader{r: f}
	tr := tar.NewReader(cr)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading header at offset %d: %w", cr.n, err)
		}
		off := cr.n
		typ := hdr.Typeflag
		if typ == tar.TypeRegA || typ == tar.TypeGNUSparse {
			typ = tar.TypeReg
		}
		sum := "-"
		if typ == tar.TypeReg || typ == tar.TypeCont {
			h := sha256.New()
			n, err := io.Copy(h, tr)
			if err != nil {
				return fmt.Errorf("reading data of %q: %w", hdr.Name, err)
			}
			if n != hdr.Size {
				return fmt.Errorf("%q: read %d bytes, header says %d", hdr.Name, n, hdr.Size)
			}
			sum = hex.EncodeToString(h.Sum(nil))
		}
		var major, minor int64
		if typ == tar.TypeChar || typ == tar.TypeBlock {
			major, minor = hdr.Devmajor, hdr.Devminor
		}
		var xs []string
		xm, err := memberXattrs(hdr.PAXRecords)
		if err != nil {
			return fmt.Errorf("%q: %w", hdr.Name, err)
		}
		for k, v := range xm {
			xs = append(xs, esc(k)+"="+hex.EncodeToString([]byte(v)))
		}
		sort.Strings(xs)
		xattrs := "-"
		if len(xs) > 0 {
			xattrs = strings.Join(xs, ",")
		}
		fmt.Fprintf(out, "%s\t%c\t%04o\t%d\t%d\t%d\t%d.%09d\t%s\t%d\t%d\t%s\t%s",
			esc(canonName(hdr.Name)), typ, hdr.Mode&07777, hdr.Uid, hdr.Gid, hdr.Size,
			hdr.ModTime.Unix(), hdr.ModTime.Nanosecond(), esc(hdr.Linkname),
			major, minor, xattrs, sum)
		if offsets {
			fmt.Fprintf(out, "\t%d", off)
		}
		fmt.Fprintln(out)
	}
	return nil
}

// lxattrs returns the extended attributes of path without following symlinks.
func lxattrs(path string) (map[string]string, error) {
	p, err := syscall.BytePtrFromString(path)
	if err != nil {
		return nil, err
	}
	size := 4096
	var names []byte
	for {
		buf := make([]byte, size)
		n, _, e := syscall.Syscall(syscall.SYS_LLISTXATTR, uintptr(unsafe.Pointer(p)),
			uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
		if e == syscall.ERANGE {
			size *= 4
			continue
		}
		if e == syscall.ENOTSUP {
			return nil, nil
		}
		if e != 0 {
			return nil, fmt.Errorf("llistxattr %s: %w", path, e)
		}
		names = buf[:n]
		break
	}
	res := map[string]string{}
	for _, name := range strings.Split(string(names), "\x00") {
		if name == "" {
			continue
		}
		np, err := syscall.BytePtrFromString(name)
		if err != nil {
			return nil, err
		}
		vsize := 4096
		for {
			buf := make([]byte, vsize)
			n, _, e := syscall.Syscall6(syscall.SYS_LGETXATTR, uintptr(unsafe.Pointer(p)),
				uintptr(unsafe.Pointer(np)), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0)
			if e == syscall.ERANGE {
				vsize *= 4
				continue
			}
			if e != 0 {
				return nil, fmt.Errorf("lgetxattr %s %s: %w", path, name, e)
			}
			res[name] = string(buf[:n])
			break
		}
	}
	return res, nil
}

// write archives src in byte-wise name order as PAX members (sub-second mtimes, hardlinks,
// devices, fifos, symlinks, xattrs as SCHILY.xattr records with GNU tar's name escapes:
// archive/tar refuses a keyword that contains '=').
func write(src, dst string) error {
	var paths []string
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		paths = append(paths, p)
		return nil
	})
	if err != nil {
		return err
	}
	rel := func(p string) string {
		r, _ := filepath.Rel(src, p)
		if r == "." {
			return "./"
		}
		return "./" + r
	}
	// Byte-wise order of member names, as ckpt writes them.
	sort.Slice(paths, func(i, j int) bool { return rel(paths[i]) < rel(paths[j]) })

	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(out)
	type ino struct{ dev, ino uint64 }
	seen := map[ino]string{}
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if fi.Mode()&fs.ModeSocket != 0 {
			continue
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		name := rel(p)
		if fi.IsDir() && !strings.HasSuffix(name, "/") {
			name += "/"
		}
		hdr.Name = name
		hdr.Format = tar.FormatPAX
		hdr.AccessTime = time.Time{}
		hdr.ChangeTime = time.Time{}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			key := ino{uint64(st.Dev), uint64(st.Ino)}
			if first, ok := seen[key]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				hdr.Size = 0
			} else {
				seen[key] = name
			}
		}
		xs, err := lxattrs(p)
		if err != nil {
			return err
		}
		if len(xs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range xs {
				hdr.PAXRecords[xattrPrefix+gnuEncode(k)] = v
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return out.Close()
}

func main() {
	args := os.Args[1:]
	var err error
	switch {
	case len(args) == 1:
		err = list(args[0], false)
	case len(args) == 2 && args[0] == "-offsets":
		err = list(args[1], true)
	case len(args) == 3 && args[0] == "-write":
		err = write(args[1], args[2])
	default:
		err = errors.New("usage: readtar [-offsets] ARCHIVE | readtar -write SRC_DIR ARCHIVE")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "readtar:", err)
		os.Exit(1)
	}
}
