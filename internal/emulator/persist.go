package emulator

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/dpsync/dpsync/internal/dps"
)

// Persistence: a data directory holds snapshot-<gen>.json (the whole state when log <gen>
// was started) and log-<gen>.jsonl (every write since, one JSON line each). A write is
// handed to the operating system (one write(2) per request or group of concurrent requests,
// no fsync) before the request is answered, so killing the process loses nothing; Close and
// every snapshot fsync, so a clean stop survives a power cut too. Startup loads the newest
// snapshot, replays the logs after it (ignoring a torn last line) and writes a fresh
// snapshot. The log is compacted into a new snapshot in the background when it grows past
// twice the live state.

// logEntry is one line of the log.
type logEntry struct {
	T   string                               `json:"t"` // e(nrollment), g(roup), r(egistration), reset
	Del bool                                 `json:"d,omitempty"`
	K   string                               `json:"k,omitempty"` // key of a delete
	E   *record[dps.IndividualEnrollment]    `json:"e,omitempty"`
	G   *record[dps.EnrollmentGroup]         `json:"g,omitempty"`
	R   *record[dps.DeviceRegistrationState] `json:"r,omitempty"`
}

// snapshotFile is the content of snapshot-<gen>.json.
type snapshotFile struct {
	E []*record[dps.IndividualEnrollment]    `json:"enrollments"`
	G []*record[dps.EnrollmentGroup]         `json:"groups"`
	R []*record[dps.DeviceRegistrationState] `json:"registrations"`
}

// wal is the write-ahead log of a store. Appends happen under the store lock (so the log
// order is the store order); the write to the file happens after it, grouped.
type wal struct {
	dir string

	pmu     sync.Mutex // guards pending and next
	pending []logEntry
	next    uint64 // sequence number of the last appended entry

	fmu       sync.Mutex // guards the fields below
	f         *os.File
	gen       uint64
	flushed   uint64
	sinceSnap int
	err       error // sticky: once a write fails, every later sync reports it
	buf       bytes.Buffer
}

func (w *wal) append(e logEntry) {
	w.pmu.Lock()
	w.pending = append(w.pending, e)
	w.next++
	w.pmu.Unlock()
}

func (w *wal) lsn() uint64 {
	w.pmu.Lock()
	defer w.pmu.Unlock()
	return w.next
}

// sync writes every pending entry up to at least lsn to the log file.
func (w *wal) sync(lsn uint64) error {
	w.fmu.Lock()
	defer w.fmu.Unlock()
	if w.err != nil || w.flushed >= lsn {
		return w.err
	}
	if w.f == nil {
		return errors.New("write log: the emulator is closed")
	}
	w.pmu.Lock()
	batch := w.pending
	w.pending = nil
	last := w.next
	w.pmu.Unlock()
	w.buf.Reset()
	enc := json.NewEncoder(&w.buf)
	for i := range batch {
		if err := enc.Encode(&batch[i]); err != nil {
			w.err = fmt.Errorf("encode log entry: %w", err)
			return w.err
		}
	}
	if _, err := w.f.Write(w.buf.Bytes()); err != nil {
		w.err = fmt.Errorf("write log: %w", err)
		return w.err
	}
	w.flushed = last
	w.sinceSnap += len(batch)
	return nil
}

// needsCompaction reports whether the log has grown past twice the live state.
func (w *wal) needsCompaction(live int) bool {
	w.fmu.Lock()
	defer w.fmu.Unlock()
	return w.err == nil && w.sinceSnap > max(10000, 2*live)
}

func logName(gen uint64) string  { return fmt.Sprintf("log-%d.jsonl", gen) }
func snapName(gen uint64) string { return fmt.Sprintf("snapshot-%d.json", gen) }

// openStore loads the state kept in dir (created if missing) into s and starts a new
// generation of the log.
func openStore(s *store, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	var snaps, logs []uint64
	for _, e := range entries {
		name := e.Name()
		if g, ok := genOf(name, "snapshot-", ".json"); ok {
			snaps = append(snaps, g)
		} else if g, ok := genOf(name, "log-", ".jsonl"); ok {
			logs = append(logs, g)
		}
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i] > snaps[j] })
	sort.Slice(logs, func(i, j int) bool { return logs[i] < logs[j] })
	var base uint64
	if len(snaps) > 0 {
		base = snaps[0]
		if err := loadSnapshot(s, filepath.Join(dir, snapName(base))); err != nil {
			return err
		}
	}
	maxGen := base
	for _, g := range logs {
		maxGen = max(maxGen, g)
		if g < base {
			continue
		}
		if err := replayLog(s, filepath.Join(dir, logName(g))); err != nil {
			return err
		}
	}
	s.log = &wal{dir: dir, gen: maxGen}
	// A fresh snapshot makes the loaded state the base and leaves torn tails behind.
	return s.compact()
}

func genOf(name, prefix, suffix string) (uint64, bool) {
	if !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
		return 0, false
	}
	g, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, prefix), suffix), 10, 64)
	return g, err == nil
}

func loadSnapshot(s *store, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	var snap snapshotFile
	if err := json.Unmarshal(b, &snap); err != nil {
		return fmt.Errorf("decode snapshot %s: %w", filepath.Base(path), err)
	}
	for _, r := range snap.E {
		s.replayPut(logEntry{T: "e", E: r})
	}
	for _, r := range snap.G {
		s.replayPut(logEntry{T: "g", G: r})
	}
	for _, r := range snap.R {
		s.replayPut(logEntry{T: "r", R: r})
	}
	return nil
}

func replayLog(s *store, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	line := 0
	for {
		b, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			// A last line without newline is a torn write of a killed process: ignore it.
			return nil
		}
		if err != nil {
			return fmt.Errorf("read log: %w", err)
		}
		line++
		var e logEntry
		if err := json.Unmarshal(b, &e); err != nil {
			return fmt.Errorf("log %s line %d: %w", filepath.Base(path), line, err)
		}
		s.replayPut(e)
	}
}

// replayPut applies one log entry to s, outside the normal write path.
func (s *store) replayPut(e logEntry) {
	switch {
	case e.T == "reset":
		s.enr = newTable[dps.IndividualEnrollment]()
		s.grp = newTable[dps.EnrollmentGroup]()
		s.reg = newTable[dps.DeviceRegistrationState]()
	case e.Del && e.T == "e":
		s.enr.del(e.K)
	case e.Del && e.T == "g":
		s.grp.del(e.K)
	case e.Del && e.T == "r":
		s.reg.del(e.K)
	case e.E != nil:
		replayOne(s, &s.enr, keyOf(e.E.V.RegistrationID), e.E)
	case e.G != nil:
		replayOne(s, &s.grp, keyOf(e.G.V.EnrollmentGroupID), e.G)
	case e.R != nil:
		replayOne(s, &s.reg, keyOf(e.R.V.RegistrationID), e.R)
	}
}

func replayOne[T any](s *store, t *table[T], key string, r *record[T]) {
	if cur := t.m[key]; cur != nil {
		r.seq = cur.seq
	} else {
		s.seq++
		r.seq = s.seq
	}
	t.put(r, key)
}

// compact writes a snapshot of the current state and starts a new log generation. The
// store is locked only to flush the log, switch files and collect record pointers; the
// snapshot is encoded after.
func (s *store) compact() error {
	w := s.log
	s.mu.Lock()
	if err := w.sync(w.lsn()); err != nil {
		s.mu.Unlock()
		return err
	}
	snap := snapshotFile{E: s.enr.all(), G: s.grp.all(), R: s.reg.all()}
	w.fmu.Lock()
	gen := w.gen + 1
	f, err := os.OpenFile(filepath.Join(w.dir, logName(gen)), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		w.fmu.Unlock()
		s.mu.Unlock()
		return fmt.Errorf("open log: %w", err)
	}
	old := w.f
	w.f, w.gen, w.sinceSnap = f, gen, 0
	w.fmu.Unlock()
	s.mu.Unlock()

	if old != nil {
		if err := old.Sync(); err != nil {
			return fmt.Errorf("sync log: %w", err)
		}
		if err := old.Close(); err != nil {
			return fmt.Errorf("close log: %w", err)
		}
	}
	if err := writeSnapshot(filepath.Join(w.dir, snapName(gen)), &snap); err != nil {
		return err
	}
	// The new snapshot covers every older file.
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	for _, e := range entries {
		if g, ok := genOf(e.Name(), "snapshot-", ".json"); ok && g < gen {
			_ = os.Remove(filepath.Join(w.dir, e.Name()))
		} else if g, ok := genOf(e.Name(), "log-", ".jsonl"); ok && g < gen {
			_ = os.Remove(filepath.Join(w.dir, e.Name()))
		}
	}
	return nil
}

func writeSnapshot(path string, snap *snapshotFile) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = json.NewEncoder(bw).Encode(snap)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("install snapshot: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// closeLog flushes, snapshots and closes the log.
func (s *store) closeLog() error {
	if s.log == nil {
		return nil
	}
	err := s.compact()
	w := s.log
	w.fmu.Lock()
	defer w.fmu.Unlock()
	if w.f != nil {
		if serr := w.f.Sync(); err == nil && serr != nil {
			err = fmt.Errorf("sync log: %w", serr)
		}
		if cerr := w.f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close log: %w", cerr)
		}
		w.f = nil
	}
	return err
}
