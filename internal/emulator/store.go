package emulator

import (
	"sort"
	"sync"
	"time"

	"github.com/dpsync/dpsync/internal/dps"
)

// record is one stored entity. A record is never changed once it is in a table: a write
// stores a new record, so readers may keep and encode a record after releasing the lock.
type record[T any] struct {
	V T `json:"v"`
	// ProvNull records that provisioningStatus was sent as null: the service echoes it as
	// null (DPS.md, "Response shapes").
	ProvNull bool `json:"pn,omitempty"`
	// GroupID is the enrollment group a registration state belongs to ("" = individual).
	GroupID string `json:"gid,omitempty"`
	seq     uint64 // creation order: query order and continuation position
}

// stamps returns pointers to the server-maintained fields of v.
func stamps(v any) (etag *string, created, updated **dps.DateTime) {
	switch x := v.(type) {
	case *dps.IndividualEnrollment:
		return &x.ETag, &x.CreatedDateTimeUTC, &x.LastUpdatedDateTimeUTC
	case *dps.EnrollmentGroup:
		return &x.ETag, &x.CreatedDateTimeUTC, &x.LastUpdatedDateTimeUTC
	case *dps.DeviceRegistrationState:
		return &x.ETag, &x.CreatedDateTimeUTC, &x.LastUpdatedDateTimeUTC
	}
	panic("emulator: stamps of an unknown type")
}

func (r *record[T]) etag() string {
	e, _, _ := stamps(&r.V)
	return *e
}

// orderIndex lists the keys of a table in creation order. Deleted or re-created keys leave
// stale entries that readers skip and compaction drops.
type orderIndex struct {
	seqs []uint64
	keys []string
	dead int
}

func (x *orderIndex) add(seq uint64, key string) {
	x.seqs = append(x.seqs, seq)
	x.keys = append(x.keys, key)
}

// after returns the position of the first entry with a sequence number above seq.
func (x *orderIndex) after(seq uint64) int {
	return sort.Search(len(x.seqs), func(i int) bool { return x.seqs[i] > seq })
}

// table is a map of records keyed by lower-cased id, with its creation-order index.
type table[T any] struct {
	m   map[string]*record[T]
	idx orderIndex
}

func newTable[T any]() table[T] { return table[T]{m: map[string]*record[T]{}} }

func (t *table[T]) live(i int) *record[T] {
	r := t.m[t.idx.keys[i]]
	if r == nil || r.seq != t.idx.seqs[i] {
		return nil
	}
	return r
}

func (t *table[T]) put(r *record[T], key string) {
	if _, ok := t.m[key]; !ok {
		t.idx.add(r.seq, key)
	}
	t.m[key] = r
}

func (t *table[T]) del(key string) {
	delete(t.m, key)
	t.idx.dead++
	if t.idx.dead > 1024 && t.idx.dead > len(t.idx.seqs)/2 {
		var nx orderIndex
		for i := range t.idx.seqs {
			if r := t.live(i); r != nil {
				nx.add(r.seq, t.idx.keys[i])
			}
		}
		t.idx = nx
	}
}

// all returns the live records in creation order.
func (t *table[T]) all() []*record[T] {
	out := make([]*record[T], 0, len(t.m))
	for i := range t.idx.seqs {
		if r := t.live(i); r != nil {
			out = append(out, r)
		}
	}
	return out
}

// page returns up to n records created after seq that pass keep, and whether more remain.
func (t *table[T]) page(seq uint64, n int, keep func(*record[T]) bool) ([]*record[T], bool) {
	var out []*record[T]
	for i := t.idx.after(seq); i < len(t.idx.seqs); i++ {
		r := t.live(i)
		if r == nil || (keep != nil && !keep(r)) {
			continue
		}
		if len(out) == n {
			return out, true
		}
		out = append(out, r)
	}
	return out, false
}

// store holds the state of one emulated instance. One RWMutex guards it; bulk calls take
// it once for all their items. Writes are appended to the log (when persisting) inside the
// lock, so the log order is the store order.
type store struct {
	mu  sync.RWMutex
	seq uint64
	enr table[dps.IndividualEnrollment]
	grp table[dps.EnrollmentGroup]
	reg table[dps.DeviceRegistrationState]
	log *wal // nil: memory only
	ids *idGen
}

func newStore(ids *idGen) *store {
	return &store{enr: newTable[dps.IndividualEnrollment](), grp: newTable[dps.EnrollmentGroup](), reg: newTable[dps.DeviceRegistrationState](), ids: ids}
}

// write runs fn under the write lock, then waits until the log holds what fn wrote.
func (s *store) write(fn func()) error {
	s.mu.Lock()
	fn()
	var lsn uint64
	if s.log != nil {
		lsn = s.log.lsn()
	}
	s.mu.Unlock()
	if s.log != nil {
		return s.log.sync(lsn)
	}
	return nil
}

// clear drops all state (admin reset). Caller holds mu.
func (s *store) clear() {
	s.enr = newTable[dps.IndividualEnrollment]()
	s.grp = newTable[dps.EnrollmentGroup]()
	s.reg = newTable[dps.DeviceRegistrationState]()
	if s.log != nil {
		s.log.append(logEntry{T: "reset"})
	}
}

// applyMode is how a write treats an existing record and an etag.
type applyMode int

const (
	modePut           applyMode = iota // single PUT: etag is the If-Match header
	modeCreate                         // bulk create
	modeUpdate                         // bulk update
	modeUpdateIfMatch                  // bulk updateIfMatchETag
	modeDelete                         // DELETE and bulk delete
)

func modeOf(m dps.BulkMode) applyMode {
	switch m {
	case dps.BulkModeCreate:
		return modeCreate
	case dps.BulkModeUpdate:
		return modeUpdate
	case dps.BulkModeUpdateIfMatchETag:
		return modeUpdateIfMatch
	}
	return modeDelete
}

// codes are the error codes of one kind of entity.
type codes struct {
	exists   int
	notFound int
}

func enrCodes() codes { return codes{exists: CodeEnrollmentExists, notFound: CodeEnrollmentNotFound} }
func grpCodes() codes {
	return codes{exists: CodeEnrollmentGroupExists, notFound: CodeEnrollmentGroupNotFound}
}

// apply performs one write on t under s.mu. in is a fresh record (not yet shared) holding
// the client's content; apply fills the server fields. It returns the stored record (nil
// for a delete) or an error code. The semantics follow DPS.md:
//
//   - put: no etag creates, or 409 when the id exists; an etag (If-Match) replaces when it
//     matches (412 otherwise) and gives 404 when the id is absent (unconfirmed; the safest).
//   - create: 409 when the id exists.
//   - update: creates when absent; replaces when the item's etag matches ("*" included);
//     otherwise 409 (seen live for an item without etag; unconfirmed for a stale one).
//   - updateIfMatchETag: replaces only when the etag matches (412 otherwise); absent with an
//     etag is 404, absent without one creates (unconfirmed).
//   - delete: 404 when absent; 412 when an etag is given and does not match.
func apply[T any](s *store, t *table[T], c codes, m applyMode, key, etag string, in *record[T], now time.Time) (*record[T], int) {
	cur := t.m[key]
	replace := false
	switch m {
	case modePut:
		switch {
		case etag == "" && cur != nil:
			return nil, c.exists
		case etag == "":
		case cur == nil:
			return nil, c.notFound
		case !etagMatches(etag, cur.etag()):
			return nil, CodePreconditionFailed
		default:
			replace = true
		}
	case modeCreate:
		if cur != nil {
			return nil, c.exists
		}
	case modeUpdate:
		if cur != nil {
			if etag == "" || !etagMatches(etag, cur.etag()) {
				return nil, c.exists
			}
			replace = true
		}
	case modeUpdateIfMatch:
		switch {
		case cur == nil && etag != "":
			return nil, c.notFound
		case cur == nil:
		case etag == "" || !etagMatches(etag, cur.etag()):
			return nil, CodePreconditionFailed
		default:
			replace = true
		}
	case modeDelete:
		if cur == nil {
			return nil, c.notFound
		}
		if etag != "" && !etagMatches(etag, cur.etag()) {
			return nil, CodePreconditionFailed
		}
		t.del(key)
		s.logDel(in, key)
		return nil, 0
	}
	e, created, updated := stamps(&in.V)
	*e = s.ids.etag()
	ts := dps.NewDateTime(now)
	*updated = ts
	if replace {
		_, cc, _ := stamps(&cur.V)
		*created = *cc
		in.seq = cur.seq
	} else {
		*created = ts
		s.seq++
		in.seq = s.seq
	}
	t.put(in, key)
	s.logPut(in)
	return in, 0
}

// logPut and logDel append a write to the log, if the store persists.
func (s *store) logPut(r any) {
	if s.log == nil {
		return
	}
	switch x := r.(type) {
	case *record[dps.IndividualEnrollment]:
		s.log.append(logEntry{T: "e", E: x})
	case *record[dps.EnrollmentGroup]:
		s.log.append(logEntry{T: "g", G: x})
	case *record[dps.DeviceRegistrationState]:
		s.log.append(logEntry{T: "r", R: x})
	}
}

func (s *store) logDel(kind any, key string) {
	if s.log == nil {
		return
	}
	switch kind.(type) {
	case *record[dps.IndividualEnrollment]:
		s.log.append(logEntry{T: "e", Del: true, K: key})
	case *record[dps.EnrollmentGroup]:
		s.log.append(logEntry{T: "g", Del: true, K: key})
	case *record[dps.DeviceRegistrationState]:
		s.log.append(logEntry{T: "r", Del: true, K: key})
	}
}

// deleteRegistrations drops the registration state of an individual enrollment (groupID
// "") or of every device of a group, as deleting the enrollment does. Caller holds s.mu.
func (s *store) deleteRegistrations(key, groupKey string) {
	if groupKey == "" {
		if r := s.reg.m[key]; r != nil && r.GroupID == "" {
			s.reg.del(key)
			s.logDel(r, key)
		}
		return
	}
	for k, r := range s.reg.m {
		if r.GroupID != "" && keyOf(r.GroupID) == groupKey {
			s.reg.del(k)
			s.logDel(r, k)
		}
	}
}
