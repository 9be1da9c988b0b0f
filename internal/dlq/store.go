package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotFound is returned for a sequence that holds no letter (never did, or it was
// replayed, purged or redriven).
var ErrNotFound = errors.New("not found")

// Filter selects letters. Zero fields select everything.
type Filter struct {
	// KeyGlob matches the letter's key ("enrollment/dev-1") or the id part after the
	// kind ("dev-1") with path.Match syntax: "dev-*", "group/line-?", "enrollment/*".
	KeyGlob string
	// Code is the 6-digit DPS error code.
	Code int
	// Class is one of the four classes.
	Class Class
	// Since and Until bound the time of the letter's last failure: Since <= t < Until.
	Since, Until time.Time
	// Limit keeps the first Limit matching letters, oldest first (0: all).
	Limit int
}

// Validate reports a malformed filter.
func (f Filter) Validate() error {
	if f.KeyGlob != "" {
		if _, err := path.Match(f.KeyGlob, ""); err != nil {
			return fmt.Errorf("key glob %q: %w", f.KeyGlob, err)
		}
	}
	if f.Class != "" && !f.Class.Valid() {
		return fmt.Errorf("class %q: not transient, permanent, invalid or held", f.Class)
	}
	if f.Code < 0 {
		return fmt.Errorf("code %d: negative", f.Code)
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return fmt.Errorf("since %s is not before until %s", f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339))
	}
	if f.Limit < 0 {
		return fmt.Errorf("limit %d: negative", f.Limit)
	}
	return nil
}

// Match reports whether l passes the filter (Limit aside).
func (f Filter) Match(l Letter) bool {
	if f.KeyGlob != "" && !keyMatch(f.KeyGlob, l.Key) {
		return false
	}
	if f.Code != 0 && l.Code != f.Code {
		return false
	}
	if f.Class != "" && l.Class != f.Class {
		return false
	}
	t := l.When()
	if !f.Since.IsZero() && t.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !t.Before(f.Until) {
		return false
	}
	return true
}

func keyMatch(glob, key string) bool {
	if ok, _ := path.Match(glob, key); ok {
		return true
	}
	if _, id, found := strings.Cut(key, "/"); found {
		ok, _ := path.Match(glob, id)
		return ok
	}
	return false
}

// StoreOptions configure a Store.
type StoreOptions struct {
	// Stream is the dead-letter stream (default "DPS_DLQ").
	Stream string
	// Now is the clock of Stats' age buckets (default time.Now).
	Now func() time.Time
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Store is the operators' view of a dead-letter stream: list, show, stats, purge and
// replay. Its methods are safe for concurrent use, also with workers and other Stores
// working on the same stream: each letter is removed only by its own sequence, and a
// letter removed by someone else in the meantime is skipped.
type Store struct {
	js     jetstream.JetStream
	s      jetstream.Stream
	opts   StoreOptions
	logger *slog.Logger
}

// OpenStore returns a Store over the existing stream opts.Stream; the error names the
// stream if it does not exist or the server cannot be reached.
func OpenStore(ctx context.Context, js jetstream.JetStream, opts StoreOptions) (*Store, error) {
	if opts.Stream == "" {
		opts.Stream = DefaultStream
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s, err := openStream(ctx, js, opts.Stream)
	if err != nil {
		return nil, err
	}
	return &Store{js: js, s: s, opts: opts, logger: opts.Logger.With("component", "dlq")}, nil
}

// Stream is the name of the store's stream.
func (st *Store) Stream() string { return st.opts.Stream }

// all reads every letter, headers only, in sequence order.
func (st *Store) all(ctx context.Context) ([]Letter, error) {
	ls, _, err := st.allUpTo(ctx)
	return ls, err
}

// allUpTo is all, and the last sequence of the stream when the read started: any letter
// stored since has a higher sequence.
func (st *Store) allUpTo(ctx context.Context) ([]Letter, uint64, error) {
	var out []Letter
	last, err := scan(ctx, st.s, 1, true, func(seq uint64, subject string, stored time.Time, h nats.Header, _ []byte) error {
		l, err := parseLetter(seq, subject, stored, h, nil)
		if err != nil {
			st.logger.Warn("malformed dead letter", "seq", seq, "err", err)
		}
		out = append(out, l)
		return nil
	})
	return out, last, err
}

// List returns the letters that pass f, oldest (lowest sequence) first, without their
// bodies (Data is nil; Size is set). Get reads a letter with its body.
func (st *Store) List(ctx context.Context, f Filter) ([]Letter, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	all, err := st.all(ctx)
	if err != nil {
		return nil, err
	}
	return selectLetters(all, f), nil
}

func selectLetters(all []Letter, f Filter) []Letter {
	var out []Letter
	for _, l := range all {
		if f.Match(l) {
			out = append(out, l)
			if f.Limit > 0 && len(out) == f.Limit {
				break
			}
		}
	}
	return out
}

// Get returns the letter at seq with its body. An unknown sequence returns an error
// wrapping ErrNotFound.
func (st *Store) Get(ctx context.Context, seq uint64) (Letter, error) {
	m, err := st.s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Letter{}, fmt.Errorf("dead letter %d: %w", seq, ErrNotFound)
	}
	if err != nil {
		return Letter{}, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	l, err := ParseLetter(m)
	if err != nil {
		st.logger.Warn("malformed dead letter", "seq", seq, "err", err)
	}
	return l, nil
}

// AgeBuckets are the age buckets of Stats, in order.
var AgeBuckets = [...]string{"<1h", "1-24h", "1-7d", ">7d"}

// Stats counts letters.
type Stats struct {
	Total   int           `json:"total"`
	ByClass map[Class]int `json:"byClass"`
	ByCode  map[int]int   `json:"byCode"` // 0: no DPS code
	// ByAge counts by the age of the last failure, keys from AgeBuckets.
	ByAge  map[string]int `json:"byAge"`
	Oldest time.Time      `json:"oldest,omitzero"` // last failure of the oldest letter
	Keys   int            `json:"keys"`            // distinct keys
}

func ageBucket(d time.Duration) string {
	switch {
	case d < time.Hour:
		return AgeBuckets[0]
	case d < 24*time.Hour:
		return AgeBuckets[1]
	case d < 7*24*time.Hour:
		return AgeBuckets[2]
	}
	return AgeBuckets[3]
}

// Stats counts the letters that pass f by class, code and age (at opts.Now).
func (st *Store) Stats(ctx context.Context, f Filter) (Stats, error) {
	ls, err := st.List(ctx, f)
	if err != nil {
		return Stats{}, err
	}
	return computeStats(ls, st.opts.Now()), nil
}

func computeStats(ls []Letter, now time.Time) Stats {
	s := Stats{ByClass: map[Class]int{}, ByCode: map[int]int{}, ByAge: map[string]int{}}
	keys := map[string]bool{}
	for _, l := range ls {
		s.Total++
		s.ByClass[l.Class]++
		s.ByCode[l.Code]++
		s.ByAge[ageBucket(l.Age(now))]++
		if w := l.When(); s.Oldest.IsZero() || w.Before(s.Oldest) {
			s.Oldest = w
		}
		keys[l.Key] = true
	}
	s.Keys = len(keys)
	return s
}

// Purge deletes the letters that pass f and returns those it removed (without bodies).
// Letters removed by someone else meanwhile are not reported. On error the letters
// removed so far are returned with it.
func (st *Store) Purge(ctx context.Context, f Filter) ([]Letter, error) {
	ls, err := st.List(ctx, f)
	if err != nil {
		return nil, err
	}
	return st.PurgeLetters(ctx, ls)
}

// PurgeLetters deletes the given letters by sequence (a List result the operator
// confirmed) and returns those it removed.
func (st *Store) PurgeLetters(ctx context.Context, ls []Letter) ([]Letter, error) {
	var removed []Letter
	for _, l := range ls {
		err := deleteLetter(ctx, st.s, l.Seq)
		if errors.Is(err, errGone) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("purge dead letter %d: %w", l.Seq, err)
		}
		removed = append(removed, l)
	}
	return removed, nil
}

// byKey groups letters by key, each group in position order; groups are ordered by their
// first letter's sequence. Letters without a key each form their own group.
func byKey(ls []Letter) [][]Letter {
	idx := map[string]int{}
	var groups [][]Letter
	for _, l := range ls {
		k := l.Key
		if k == "" {
			groups = append(groups, []Letter{l})
			continue
		}
		i, ok := idx[k]
		if !ok {
			i = len(groups)
			idx[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], l)
	}
	for _, g := range groups {
		sortByPosition(g)
	}
	sort.SliceStable(groups, func(i, j int) bool { return minSeq(groups[i]) < minSeq(groups[j]) })
	return groups
}

// sortByPosition sorts the letters of one key in their order: by position, then sequence.
func sortByPosition(g []Letter) {
	sort.SliceStable(g, func(i, j int) bool {
		pi, pj := g[i].OrderPosition(), g[j].OrderPosition()
		if pi != pj {
			return pi < pj
		}
		return g[i].Seq < g[j].Seq
	})
}

func minSeq(g []Letter) uint64 {
	m := g[0].Seq
	for _, l := range g {
		m = min(m, l.Seq)
	}
	return m
}
