package memstore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/carve-ipam/carve/ipam"
)

// A snapshot is the magic line, a version byte, the store's last
// revision and the number of records (uvarints), then per record its kind
// (a byte), revision, key length, key, value length and value (lengths
// and revisions as uvarints), in kind and key order, and last the CRC-32C
// (Castagnoli) of everything before it, big-endian.
const (
	snapshotMagic   = "carve memstore snapshot\n"
	snapshotVersion = 1
	// maxSnapshotRev bounds the last revision Load accepts, leaving the
	// loaded store room to count on.
	maxSnapshotRev = math.MaxUint64 >> 1
)

// ErrSnapshot is matched (errors.Is) by every error of Load and LoadFile
// about the snapshot's content: not a snapshot, an unknown version,
// truncated, damaged (checksum) or inconsistent. Errors reading r are
// returned as they are.
var ErrSnapshot = errors.New("bad snapshot")

// castagnoli makes the CRC table when a snapshot first needs it, not when
// a program that imports memstore starts.
var castagnoli = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })

// snapRecord is one record of a snapshot.
type snapRecord struct {
	kind  ipam.Kind
	key   string
	value []byte
	rev   ipam.Revision
}

// WriteTo writes a snapshot of the store to w: every record, with its
// value and revision, and the store's last revision. It is one consistent
// copy, taken under the store's lock: writers wait while it copies the
// records (and encodes blocks not encoded yet), not while it writes to w.
// A snapshot taken while allocators work is what a crash of all of them
// at that moment would leave: Check may find handle counts raised for
// block writes still to come, which Repair removes. WriteTo implements
// io.WriterTo; Load reads the snapshot back.
func (s *Store) WriteTo(w io.Writer) (int64, error) {
	recs, last, err := s.copyRecords()
	if err != nil {
		return 0, err
	}
	counted := &countingWriter{w: w}
	cw := &snapWriter{w: bufio.NewWriter(counted), crc: crc32.New(castagnoli())}
	var buf []byte
	buf = append(buf, snapshotMagic...)
	buf = append(buf, snapshotVersion)
	buf = binary.AppendUvarint(buf, last)
	buf = binary.AppendUvarint(buf, uint64(len(recs)))
	cw.write(buf)
	for _, r := range recs {
		buf = append(buf[:0], byte(r.kind))
		buf = binary.AppendUvarint(buf, uint64(r.rev))
		buf = binary.AppendUvarint(buf, uint64(len(r.key)))
		buf = append(buf, r.key...)
		buf = binary.AppendUvarint(buf, uint64(len(r.value)))
		cw.write(buf)
		cw.write(r.value)
	}
	cw.write(binary.BigEndian.AppendUint32(nil, cw.crc.Sum32()))
	if cw.err == nil {
		cw.err = cw.w.Flush()
	}
	return counted.n, cw.err
}

// copyRecords copies every record under the write lock, encoding pending
// blocks, and returns them in kind and key order with the store's last
// revision. Values are immutable once stored, so the copies share them.
func (s *Store) copyRecords() ([]snapRecord, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []snapRecord
	for k := range s.kinds {
		kind := ipam.Kind(k)
		recs := &s.kinds[k]
		keys := make([]string, 0, len(recs.byKey))
		for key := range recs.byKey {
			keys = append(keys, key)
		}
		slices.Sort(keys)
		for _, key := range keys {
			e := recs.byKey[key]
			if err := s.encode(kind, key, e); err != nil {
				return nil, 0, err
			}
			out = append(out, snapRecord{kind: kind, key: key, value: e.value, rev: e.rev})
		}
	}
	return out, s.rev, nil
}

// snapWriter writes to w, summing the bytes into crc, and keeps the first
// error.
type snapWriter struct {
	w   *bufio.Writer
	crc hash.Hash32
	err error
}

func (c *snapWriter) write(p []byte) {
	if c.err != nil {
		return
	}
	_, _ = c.crc.Write(p) // a hash never fails
	_, c.err = c.w.Write(p)
}

// countingWriter counts the bytes that reach w.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Load returns a store holding the records of a snapshot that WriteTo
// wrote, each at the revision it had, and handing out revisions after the
// snapshot's last one: allocators made on it go on as on the store the
// snapshot was taken of. It reads r to its end: data after the snapshot
// is an error too. A snapshot that is truncated, damaged or inconsistent
// is refused whole, with an error matching ErrSnapshot.
func Load(r io.Reader) (*Store, error) {
	s, err := load(r)
	if err != nil {
		return nil, fmt.Errorf("memstore: load snapshot: %w", err)
	}
	return s, nil
}

// load is Load, with errors that do not say what was loaded.
func load(r io.Reader) (*Store, error) {
	d := &snapReader{r: bufio.NewReader(r), crc: crc32.New(castagnoli())}
	s, err := d.load()
	if err != nil {
		return nil, err
	}
	switch _, err := d.r.ReadByte(); {
	case err == nil:
		return nil, d.bad("data after the snapshot's end")
	case !errors.Is(err, io.EOF):
		return nil, err
	}
	return s, nil
}

// snapReader reads a snapshot, summing what it reads into crc.
type snapReader struct {
	r   *bufio.Reader
	crc hash.Hash32
	off int64 // bytes read so far, for errors
}

func (d *snapReader) bad(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrSnapshot, d.off, fmt.Sprintf(format, args...))
}

// read fills p, failing on a short read as truncation.
func (d *snapReader) read(p []byte, what string) error {
	n, err := io.ReadFull(d.r, p)
	_, _ = d.crc.Write(p[:n])
	d.off += int64(n)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return d.bad("truncated in %s", what)
	case err != nil:
		return err
	}
	return nil
}

// uvarint reads a uvarint.
func (d *snapReader) uvarint(what string) (uint64, error) {
	var x uint64
	var b [1]byte
	for i := 0; ; i++ {
		if i == binary.MaxVarintLen64 {
			return 0, d.bad("%s: varint too long", what)
		}
		if err := d.read(b[:], what); err != nil {
			return 0, err
		}
		if i == binary.MaxVarintLen64-1 && b[0] > 1 {
			return 0, d.bad("%s: varint overflows 64 bits", what)
		}
		x |= uint64(b[0]&0x7f) << (7 * i)
		if b[0] < 0x80 {
			if i > 0 && b[0] == 0 {
				return 0, d.bad("%s: varint not in its shortest form", what)
			}
			return x, nil
		}
	}
}

// bytes reads n bytes, growing the buffer as they arrive rather than
// trusting n: a damaged length cannot make Load allocate more than its
// input holds. The buffer grows by doubling, to n at most, so what it
// returns has about its length as capacity: the store keeps it.
func (d *snapReader) bytes(n uint64, what string) ([]byte, error) {
	if n > math.MaxInt64 {
		// More than any reader holds.
		return nil, d.bad("truncated in %s (length %d)", what, n)
	}
	out := make([]byte, 0, min(n, 64<<10))
	for uint64(len(out)) < n {
		left := n - uint64(len(out))
		if len(out) == cap(out) {
			out = slices.Grow(out, int(min(left, uint64(len(out)))))
		}
		end := len(out) + int(min(left, uint64(cap(out)-len(out))))
		if err := d.read(out[len(out):end], what); err != nil {
			return nil, err
		}
		out = out[:end]
	}
	return out, nil
}

func (d *snapReader) load() (*Store, error) {
	head := make([]byte, len(snapshotMagic)+1)
	if err := d.read(head, "the header"); err != nil {
		return nil, err
	}
	if string(head[:len(snapshotMagic)]) != snapshotMagic {
		return nil, d.bad("not a memstore snapshot (it starts %q)", head[:len(snapshotMagic)])
	}
	if v := head[len(snapshotMagic)]; v != snapshotVersion {
		return nil, d.bad("version %d, this memstore reads version %d", v, snapshotVersion)
	}
	last, err := d.uvarint("the last revision")
	if err != nil {
		return nil, err
	}
	if last > maxSnapshotRev {
		return nil, d.bad("last revision %d above %d", last, uint64(maxSnapshotRev))
	}
	n, err := d.uvarint("the record count")
	if err != nil {
		return nil, err
	}
	s := New()
	s.rev = last
	revs := map[uint64]bool{}    // revisions come from one counter: none twice
	var loaded [maxKinds][]keyed // each kind's keys, to be put in order
	var kind [1]byte
	for i := range n {
		what := fmt.Sprintf("record %d", i)
		if err := d.read(kind[:], what); err != nil {
			return nil, err
		}
		k := ipam.Kind(kind[0])
		if checkKind(k) != nil {
			return nil, d.bad("%s: unknown kind %d", what, kind[0])
		}
		rev, err := d.uvarint(what)
		if err != nil {
			return nil, err
		}
		if rev == 0 || rev > last {
			return nil, d.bad("%s: revision %d outside 1..%d", what, rev, last)
		}
		if revs[rev] {
			return nil, d.bad("%s: revision %d given to another record too", what, rev)
		}
		revs[rev] = true
		klen, err := d.uvarint(what)
		if err != nil {
			return nil, err
		}
		key, err := d.bytes(klen, what)
		if err != nil {
			return nil, err
		}
		what = fmt.Sprintf("record %d (%s %q)", i, k, key)
		vlen, err := d.uvarint(what)
		if err != nil {
			return nil, err
		}
		var value []byte
		if vlen > 0 {
			if value, err = d.bytes(vlen, what); err != nil {
				return nil, err
			}
		}
		recs := &s.kinds[k]
		if recs.byKey == nil {
			recs.byKey = make(map[string]*entry)
			recs.lazy = k == ipam.KindHandle
		}
		skey := string(key)
		if _, dup := recs.byKey[skey]; dup {
			return nil, d.bad("%s: given twice", what)
		}
		p := &entry{value: value, rev: ipam.Revision(rev)}
		recs.byKey[skey] = p
		loaded[k] = append(loaded[k], keyed{skey, p})
	}
	want := d.crc.Sum32()
	var sum [4]byte
	if err := d.read(sum[:], "the checksum"); err != nil {
		return nil, err
	}
	if got := binary.BigEndian.Uint32(sum[:]); got != want {
		return nil, d.bad("checksum %08x, the content sums to %08x: the snapshot is damaged", got, want)
	}
	for k, ks := range loaded {
		sortKeyed(ks)
		s.kinds[k].order.reset(ks)
	}
	return s, nil
}

// SaveFile writes a snapshot of the store (see WriteTo) to the file at
// path, atomically: to a new file in the same directory, synced to disk,
// then renamed over path. A crash leaves either the old file or the new
// one, whole. The new file is readable and writable by its owner only
// (0600), whatever the old one's mode; a symbolic link at path is
// replaced, not followed. SaveFiles of one store run one at a time, so
// that once one returns the file holds the store as it was after that
// call began: a save that copied the store earlier never renames its
// file over a later one's. Writers wait only for the copy (see WriteTo).
func (s *Store) SaveFile(path string) (err error) {
	s.saving.Lock()
	defer s.saving.Unlock()
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("memstore: save %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
			err = fmt.Errorf("memstore: save %s: %w", path, err)
		}
	}()
	if _, err = s.WriteTo(f); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	// Make the rename itself durable, where the system allows it.
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// LoadFile returns a store holding the snapshot in the file at path (see
// Load). A missing file is an error matching fs.ErrNotExist, so that a
// first start can tell it from a damaged one.
func LoadFile(path string) (*Store, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("memstore: load %s: %w", path, err)
	}
	defer f.Close()
	s, err := load(f)
	if err != nil {
		return nil, fmt.Errorf("memstore: load %s: %w", path, err)
	}
	return s, nil
}
