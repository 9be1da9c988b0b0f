package batcher

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

func mustNew(t testing.TB, cfg Config) *Batcher {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return b
}

func mustAdd(t testing.TB, b *Batcher, now time.Time, key string, op Op, v any) {
	t.Helper()
	if err := b.Add(now, Item{Key: key, Kind: kindOf(key), Op: op, Value: v}); err != nil {
		t.Fatalf("Add(%s, %v): %v", key, op, err)
	}
}

func kindOf(key string) string {
	if k, _, ok := strings.Cut(key, "/"); ok {
		return k
	}
	return "enrollment"
}

// values returns the Values of the items of an entry.
func values(e Entry) []any {
	var vs []any
	for _, it := range e.Items {
		vs = append(vs, it.Value)
	}
	return vs
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		field string // "" = valid
	}{
		{"zero takes defaults", Config{}, ""},
		{"defaults", DefaultConfig(), ""},
		{"one item", Config{MaxItems: 1}, ""},
		{"eleven items", Config{MaxItems: 11}, "MaxItems"},
		{"negative items", Config{MaxItems: -1}, "MaxItems"},
		{"negative linger", Config{Linger: -time.Millisecond}, "Linger"},
		{"linger too long", Config{Linger: MaxLinger + 1}, "Linger"},
		{"negative in flight", Config{MaxInFlight: -2}, "MaxInFlight"},
		{"in flight unbounded", Config{MaxInFlight: MaxInFlightLimit + 1}, "MaxInFlight"},
		{"negative pending", Config{MaxPending: -1}, "MaxPending"},
		{"pending unbounded", Config{MaxPending: MaxPendingLimit + 1}, "MaxPending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				if _, err := New(tt.cfg); err != nil {
					t.Fatalf("New() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.field+":") {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.field)
			}
			if _, err := New(tt.cfg); err == nil {
				t.Fatalf("New() accepted an invalid config")
			}
		})
	}
}

func TestNewAppliesDefaults(t *testing.T) {
	b := mustNew(t, Config{})
	got := b.Config()
	want := Config{MaxItems: 10, Linger: 25 * time.Millisecond, MaxInFlight: 4, MaxPending: 10000}
	if got.MaxItems != want.MaxItems || got.Linger != want.Linger || got.MaxInFlight != want.MaxInFlight ||
		got.MaxPending != want.MaxPending || got.Coalesce != want.Coalesce || got.Class != nil {
		t.Fatalf("Config() = %+v, want %+v", got, want)
	}
}

func TestAddRejectsInvalidItems(t *testing.T) {
	b := mustNew(t, Config{})
	for _, it := range []Item{{Key: "", Op: OpCreate}, {Key: "k", Op: 0}, {Key: "k", Op: 9}} {
		if err := b.Add(t0, it); !errors.Is(err, ErrInvalidItem) {
			t.Errorf("Add(%+v) = %v, want ErrInvalidItem", it, err)
		}
	}
	if b.Pending() != 0 {
		t.Fatalf("Pending() = %d, want 0", b.Pending())
	}
}

func TestReadyByCountLingerAndFlush(t *testing.T) {
	linger := 25 * time.Millisecond
	tests := []struct {
		name    string
		n       int
		at      time.Duration // time of Ready after the adds
		flush   bool
		batches []int // sizes
	}{
		{"partial before linger", 3, linger - time.Nanosecond, false, nil},
		{"partial at linger", 3, linger, false, []int{3}},
		{"full before linger", 10, 0, false, []int{10}},
		{"eleven before linger", 11, 0, false, []int{10}},
		{"eleven at linger", 11, linger, false, []int{10, 1}},
		{"partial flushed", 3, 0, true, []int{3}},
		{"25 flushed", 25, 0, true, []int{10, 10, 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustNew(t, Config{Linger: linger})
			for i := range tt.n {
				mustAdd(t, b, t0, fmt.Sprint("k", i), OpCreate, i)
			}
			if tt.flush {
				b.Flush()
			}
			var sizes []int
			for _, bt := range b.Ready(t0.Add(tt.at)) {
				sizes = append(sizes, len(bt.Entries))
			}
			if !reflect.DeepEqual(sizes, tt.batches) {
				t.Fatalf("batch sizes = %v, want %v", sizes, tt.batches)
			}
		})
	}
}

func TestFlushCoversOnlyEarlierItems(t *testing.T) {
	b := mustNew(t, Config{Linger: time.Second})
	mustAdd(t, b, t0, "a", OpCreate, 1)
	b.Flush()
	mustAdd(t, b, t0, "b", OpDelete, 2)
	got := b.Ready(t0)
	if len(got) != 1 || got[0].Entries[0].Key != "a" {
		t.Fatalf("Ready after Flush = %+v, want only key a", got)
	}
	if d, ok := b.UntilNext(t0); !ok || d != time.Second {
		t.Fatalf("UntilNext = %v, %v, want 1s, true (b was added after the flush)", d, ok)
	}
}

func TestBatchesSeparateKindAndOp(t *testing.T) {
	b := mustNew(t, Config{})
	mustAdd(t, b, t0, "enrollment/a", OpCreate, 1)
	mustAdd(t, b, t0, "group/a", OpCreate, 2)
	mustAdd(t, b, t0, "enrollment/b", OpDelete, 3)
	mustAdd(t, b, t0, "enrollment/c", OpCreate, 4)
	b.Flush()
	got := b.Ready(t0)
	type shape struct {
		kind string
		op   Op
		keys []string
	}
	var shapes []shape
	for _, bt := range got {
		s := shape{kind: bt.Kind, op: bt.Op}
		for _, e := range bt.Entries {
			s.keys = append(s.keys, e.Key)
			if e.Kind != bt.Kind || e.Op != bt.Op {
				t.Errorf("entry %s is %s/%v in batch %s/%v", e.Key, e.Kind, e.Op, bt.Kind, bt.Op)
			}
		}
		shapes = append(shapes, s)
	}
	want := []shape{
		{"enrollment", OpCreate, []string{"enrollment/a", "enrollment/c"}},
		{"group", OpCreate, []string{"group/a"}},
		{"enrollment", OpDelete, []string{"enrollment/b"}},
	}
	if !reflect.DeepEqual(shapes, want) {
		t.Fatalf("batches = %+v, want %+v (oldest group first)", shapes, want)
	}
}

func TestOneItemPerKeyInFlight(t *testing.T) {
	b := mustNew(t, Config{Coalesce: false})
	mustAdd(t, b, t0, "a", OpCreate, 1)
	mustAdd(t, b, t0, "a", OpCreate, 2) // same op, same key: must not share the batch
	mustAdd(t, b, t0, "b", OpCreate, 3)
	b.Flush()
	got := b.Ready(t0)
	if len(got) != 1 || len(got[0].Entries) != 2 {
		t.Fatalf("Ready = %+v, want one batch of a and b", got)
	}
	if v := got[0].Entries[0].Value; v != 1 {
		t.Fatalf("first entry of a = %v, want 1", v)
	}
	if more := b.Ready(t0); len(more) != 0 {
		t.Fatalf("Ready while a is in flight = %+v, want nothing", more)
	}
	if d, ok := b.UntilNext(t0); ok {
		t.Fatalf("UntilNext while the only pending key is in flight = %v, true, want false", d)
	}
	b.Finish(got[0].ID)
	next := b.Ready(t0)
	if len(next) != 1 || len(next[0].Entries) != 1 || next[0].Entries[0].Value != 2 {
		t.Fatalf("Ready after Finish = %+v, want a's second item", next)
	}
}

func TestMaxInFlight(t *testing.T) {
	b := mustNew(t, Config{MaxItems: 1, MaxInFlight: 2})
	for i := range 5 {
		mustAdd(t, b, t0, fmt.Sprint("k", i), OpUpdate, i)
	}
	b.Flush()
	first := b.Ready(t0)
	if len(first) != 2 || b.InFlight() != 2 {
		t.Fatalf("Ready = %d batches, InFlight = %d, want 2, 2", len(first), b.InFlight())
	}
	if _, ok := b.UntilNext(t0); ok {
		t.Fatal("UntilNext at MaxInFlight = true, want false")
	}
	b.Finish(first[0].ID)
	b.Finish(first[0].ID) // twice: no effect
	if got := b.Ready(t0); len(got) != 1 || got[0].Entries[0].Value != 2 {
		t.Fatalf("Ready after one Finish = %+v, want the batch of k2", got)
	}
}

func TestHoldAndRelease(t *testing.T) {
	b := mustNew(t, Config{Coalesce: false})
	mustAdd(t, b, t0, "a", OpCreate, 1)
	mustAdd(t, b, t0, "a", OpUpdate, 2)
	mustAdd(t, b, t0, "b", OpCreate, 3)
	mustAdd(t, b, t0, "b", OpUpdate, 4)
	b.Flush()
	bt := b.Ready(t0)[0]
	b.Finish(bt.ID, "a", "zzz-not-in-batch")
	if !b.Held("a") || b.Held("b") || b.Held("zzz-not-in-batch") {
		t.Fatalf("Held(a, b, other) = %v %v %v, want true false false", b.Held("a"), b.Held("b"), b.Held("zzz-not-in-batch"))
	}
	got := b.Ready(t0)
	if len(got) != 1 || len(got[0].Entries) != 1 || got[0].Entries[0].Key != "b" {
		t.Fatalf("Ready with a held = %+v, want only b", got)
	}
	b.Finish(got[0].ID)
	b.Release("a")
	b.Release("a") // twice: no effect
	got = b.Ready(t0)
	if len(got) != 1 || got[0].Entries[0].Key != "a" || got[0].Entries[0].Value != 2 {
		t.Fatalf("Ready after Release = %+v, want a's update", got)
	}
}

func TestTakeKey(t *testing.T) {
	b := mustNew(t, Config{Coalesce: false})
	mustAdd(t, b, t0, "a", OpCreate, 1)
	mustAdd(t, b, t0, "a", OpDelete, 2)
	mustAdd(t, b, t0, "a", OpCreate, 3)
	mustAdd(t, b, t0, "b", OpCreate, 4)
	b.Flush()
	bt := b.Ready(t0)[0] // a:1 and b:4 in flight
	b.Finish(bt.ID, "a")
	if got, want := b.Len("a"), 2; got != want {
		t.Fatalf("Len(a) = %d, want %d", got, want)
	}
	taken := b.TakeKey("a")
	var vs []any
	for _, e := range taken {
		vs = append(vs, e.Value)
	}
	if want := []any{2, 3}; !reflect.DeepEqual(vs, want) {
		t.Fatalf("TakeKey(a) values = %v, want %v", vs, want)
	}
	if b.Pending() != 0 || b.Len("a") != 0 {
		t.Fatalf("Pending, Len(a) = %d, %d, want 0, 0", b.Pending(), b.Len("a"))
	}
	if !b.Held("a") {
		t.Fatal("TakeKey lifted the hold")
	}
	// An eligible head can be taken too: it must leave the group.
	mustAdd(t, b, t0, "c", OpCreate, 5)
	b.TakeKey("c")
	b.Flush()
	if got := b.Ready(t0); len(got) != 0 {
		t.Fatalf("Ready after TakeKey(c) = %+v, want nothing", got)
	}
	if got := b.TakeKey("nope"); got != nil {
		t.Fatalf("TakeKey(unknown) = %v, want nil", got)
	}
}

func TestErrFull(t *testing.T) {
	b := mustNew(t, Config{MaxPending: 3, MaxItems: 2})
	for i := range 3 {
		mustAdd(t, b, t0, fmt.Sprint("k", i), OpDelete, i)
	}
	if err := b.Add(t0, Item{Key: "k9", Op: OpDelete}); !errors.Is(err, ErrFull) {
		t.Fatalf("Add at MaxPending = %v, want ErrFull", err)
	}
	b.Ready(t0) // two go in flight: they no longer count as pending
	if err := b.Add(t0, Item{Key: "k9", Op: OpDelete}); err != nil {
		t.Fatalf("Add after dispatch = %v, want nil", err)
	}
}

func TestUntilNext(t *testing.T) {
	b := mustNew(t, Config{Linger: 100 * time.Millisecond})
	if _, ok := b.UntilNext(t0); ok {
		t.Fatal("UntilNext on an empty batcher = true, want false")
	}
	mustAdd(t, b, t0, "a", OpCreate, 1)
	mustAdd(t, b, t0.Add(30*time.Millisecond), "b", OpDelete, 2)
	if d, ok := b.UntilNext(t0.Add(10 * time.Millisecond)); !ok || d != 90*time.Millisecond {
		t.Fatalf("UntilNext = %v, %v, want 90ms, true", d, ok)
	}
	if d, ok := b.UntilNext(t0.Add(200 * time.Millisecond)); !ok || d != 0 {
		t.Fatalf("UntilNext past linger = %v, %v, want 0, true", d, ok)
	}
	got := b.Ready(t0.Add(100 * time.Millisecond))
	if len(got) != 1 || got[0].Entries[0].Key != "a" {
		t.Fatalf("Ready at a's linger = %+v, want a only", got)
	}
	if d, ok := b.UntilNext(t0.Add(100 * time.Millisecond)); !ok || d != 30*time.Millisecond {
		t.Fatalf("UntilNext = %v, %v, want 30ms, true", d, ok)
	}
}

// TestCoalescing checks each rule of the package doc, one row per pair (and some chains).
func TestCoalescing(t *testing.T) {
	C, U, M, D := OpCreate, OpUpdate, OpUpdateIfMatch, OpDelete
	type want struct {
		op    Op
		value int
		items []any
	}
	tests := []struct {
		name string
		ops  []Op
		want []want // entries of the key, in order
	}{
		{"R1 update+update", []Op{U, U}, []want{{U, 1, []any{0, 1}}}},
		{"R1 chain", []Op{U, U, U}, []want{{U, 2, []any{0, 1, 2}}}},
		{"R2 create+update", []Op{C, U}, []want{{C, 1, []any{0, 1}}}},
		{"R2 then R1", []Op{C, U, U}, []want{{C, 2, []any{0, 1, 2}}}},
		{"update+create not merged", []Op{U, C}, []want{{U, 0, []any{0}}, {C, 1, []any{1}}}},
		{"create+create not merged", []Op{C, C}, []want{{C, 0, []any{0}}, {C, 1, []any{1}}}},
		{"ifmatch never folded into", []Op{M, U}, []want{{M, 0, []any{0}}, {U, 1, []any{1}}}},
		{"ifmatch never folded", []Op{U, M}, []want{{U, 0, []any{0}}, {M, 1, []any{1}}}},
		{"create+ifmatch not merged", []Op{C, M}, []want{{C, 0, []any{0}}, {M, 1, []any{1}}}},
		{"ifmatch+ifmatch not merged", []Op{M, M}, []want{{M, 0, []any{0}}, {M, 1, []any{1}}}},
		{"delete never folded", []Op{C, D}, []want{{C, 0, []any{0}}, {D, 1, []any{1}}}},
		{"delete never folded into", []Op{D, U}, []want{{D, 0, []any{0}}, {U, 1, []any{1}}}},
		{"delete+delete not merged", []Op{D, D}, []want{{D, 0, []any{0}}, {D, 1, []any{1}}}},
		{"only adjacent", []Op{U, D, U}, []want{{U, 0, []any{0}}, {D, 1, []any{1}}, {U, 2, []any{2}}}},
		{"delete then create then update", []Op{D, C, U}, []want{{D, 0, []any{0}}, {C, 2, []any{1, 2}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The first item goes in flight; the rules apply to the items behind it only.
			b := mustNew(t, Config{Coalesce: true, MaxItems: 1})
			mustAdd(t, b, t0, "k", U, -1)
			b.Flush()
			inflight := b.Ready(t0)
			for i, op := range tt.ops {
				mustAdd(t, b, t0, "k", op, i)
			}
			if got := b.Len("k"); got != len(tt.ops) {
				t.Fatalf("Len = %d, want %d (folded items still count)", got, len(tt.ops))
			}
			var got []want
			for _, e := range b.TakeKey("k") {
				got = append(got, want{e.Op, e.Value.(int), values(e)})
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("entries = %+v, want %+v", got, tt.want)
			}
			if v := inflight[0].Entries[0].Value; v != -1 || len(inflight[0].Entries[0].Items) != 1 {
				t.Fatalf("in-flight entry changed: %+v", inflight[0].Entries[0])
			}
		})
	}
}

func TestCoalesceOff(t *testing.T) {
	b := mustNew(t, Config{Coalesce: false})
	mustAdd(t, b, t0, "k", OpCreate, 0)
	mustAdd(t, b, t0, "k", OpUpdate, 1)
	mustAdd(t, b, t0, "k", OpUpdate, 2)
	if got := len(b.TakeKey("k")); got != 3 {
		t.Fatalf("entries with Coalesce off = %d, want 3", got)
	}
}

func TestCoalesceNotAcrossKinds(t *testing.T) {
	b := mustNew(t, Config{Coalesce: true})
	// A key is normally unique to one kind; if a caller mixes them, they stay separate.
	for i, kind := range []string{"enrollment", "group"} {
		if err := b.Add(t0, Item{Key: "k", Kind: kind, Op: OpUpdate, Value: i}); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(b.TakeKey("k")); got != 2 {
		t.Fatalf("entries = %d, want 2", got)
	}
}

// TestCoalescedEntryKeepsAge: folding a later item does not make the entry younger, and it
// keeps its place in line behind older keys.
func TestCoalescedEntryKeepsAge(t *testing.T) {
	b := mustNew(t, Config{Coalesce: true, Linger: 100 * time.Millisecond})
	mustAdd(t, b, t0, "a", OpUpdate, 1)
	mustAdd(t, b, t0.Add(90*time.Millisecond), "a", OpUpdate, 2)
	got := b.Ready(t0.Add(100 * time.Millisecond))
	if len(got) != 1 || !reflect.DeepEqual(values(got[0].Entries[0]), []any{1, 2}) || got[0].Entries[0].Value != 2 {
		t.Fatalf("Ready = %+v, want one entry with items 1, 2 and value 2", got)
	}
}

func TestFairnessOldestGroupFirst(t *testing.T) {
	b := mustNew(t, Config{MaxInFlight: 1, Linger: time.Millisecond})
	mustAdd(t, b, t0, "d", OpDelete, 1)
	for i := range 10 {
		mustAdd(t, b, t0.Add(time.Second), fmt.Sprint("c", i), OpCreate, i)
	}
	// Both groups are ready (deletes by linger, creates by count): the older goes first.
	got := b.Ready(t0.Add(time.Second))
	if len(got) != 1 || got[0].Op != OpDelete {
		t.Fatalf("first batch = %+v, want the older delete", got)
	}
}

func TestIdleKeysAreForgotten(t *testing.T) {
	b := mustNew(t, Config{})
	for i := range 100 {
		mustAdd(t, b, t0, fmt.Sprint("k", i), OpCreate, i)
	}
	b.Flush()
	for {
		bs := b.Ready(t0)
		if len(bs) == 0 {
			break
		}
		for _, bt := range bs {
			b.Finish(bt.ID)
		}
	}
	if len(b.keys) != 0 || len(b.groups) != 0 || len(b.inFlight) != 0 {
		t.Fatalf("state left: %d keys, %d groups, %d in flight, want none", len(b.keys), len(b.groups), len(b.inFlight))
	}
}

func BenchmarkAddReady(b *testing.B) {
	keys := make([]string, 10_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("enrollment/device-%05d", i)
	}
	bt, err := New(Config{MaxInFlight: 64, MaxPending: 20_000})
	if err != nil {
		b.Fatal(err)
	}
	now := t0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := keys[i%len(keys)]
		op := OpCreate
		if i%3 == 1 {
			op = OpDelete
		}
		if err := bt.Add(now, Item{Key: k, Kind: "enrollment", Op: op, Value: i}); err != nil {
			b.Fatal(err)
		}
		if i%10 == 9 {
			now = now.Add(time.Millisecond)
			for _, batch := range bt.Ready(now) {
				bt.Finish(batch.ID)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}

// TestReadyN: a caller whose calls are rationed takes only n batches; the other groups keep
// their entries (and keep filling) for later.
func TestReadyN(t *testing.T) {
	b := mustNew(t, Config{Linger: time.Millisecond, MaxInFlight: 8})
	for i := range 30 {
		mustAdd(t, b, t0, fmt.Sprint("k", i), OpCreate, i)
	}
	if got := b.ReadyN(t0.Add(time.Second), 0); len(got) != 0 {
		t.Fatalf("ReadyN(0): got %d batches, want none", len(got))
	}
	got := b.ReadyN(t0.Add(time.Second), 2)
	if len(got) != 2 || b.Pending() != 10 {
		t.Fatalf("ReadyN(2): got %d batches and %d pending, want 2 and 10", len(got), b.Pending())
	}
}

// TestFree: a freed batch gives its in-flight slot to the next batch while its keys stay
// blocked until released.
func TestFree(t *testing.T) {
	b := mustNew(t, Config{Linger: time.Millisecond, MaxInFlight: 1})
	mustAdd(t, b, t0, "a", OpCreate, 1)
	mustAdd(t, b, t0, "a", OpDelete, 2)
	mustAdd(t, b, t0, "b", OpDelete, 3)
	first := b.Ready(t0.Add(time.Second))
	if len(first) != 1 || len(first[0].Entries) != 1 || first[0].Entries[0].Key != "a" {
		t.Fatalf("first batch: %+v, want a's create", first)
	}
	if got := b.Ready(t0.Add(time.Second)); len(got) != 0 {
		t.Fatalf("with the slot taken: got %d batches, want 0", len(got))
	}
	b.Free(first[0].ID)
	next := b.Ready(t0.Add(time.Second))
	if len(next) != 1 || len(next[0].Entries) != 1 || next[0].Entries[0].Key != "b" {
		t.Fatalf("after Free: %+v, want b's delete only (a stays blocked)", next)
	}
	b.Finish(next[0].ID)
	b.Release("a")
	if got := b.Ready(t0.Add(time.Second)); len(got) != 1 || got[0].Entries[0].Key != "a" {
		t.Fatalf("after Release(a): %+v, want a's delete", got)
	}
}

// TestClassSplitsAGroup: entries of one kind and op go into separate batches by class,
// asked when an entry becomes its key's head with the key free.
func TestClassSplitsAGroup(t *testing.T) {
	asked := map[string]int{}
	b := mustNew(t, Config{Linger: time.Millisecond, MaxInFlight: 8, Class: func(e Entry) int {
		asked[e.Key]++
		return int(e.Key[0]-'a') % 2 // a, c, e… class 0; b, d… class 1
	}})
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		mustAdd(t, b, t0, k, OpUpdate, 1)
	}
	mustAdd(t, b, t0, "a", OpUpdate, 2) // behind a's first: not eligible yet
	got := b.Ready(t0.Add(time.Second))
	var sets []string
	for _, bt := range got {
		var keys []string
		for _, e := range bt.Entries {
			keys = append(keys, e.Key)
		}
		slices.Sort(keys)
		sets = append(sets, strings.Join(keys, ""))
	}
	slices.Sort(sets)
	if want := []string{"ace", "bd"}; !slices.Equal(sets, want) {
		t.Fatalf("batches %v, want %v (one per class)", sets, want)
	}
	if asked["a"] != 1 {
		t.Fatalf("class of a's entries asked %d times before its first batch finished, want 1 (its second is not eligible)", asked["a"])
	}
	b.Finish(got[0].ID)
	b.Finish(got[1].ID)
	if asked["a"] != 2 {
		t.Fatalf("class asked %d times for a after its first batch finished, want 2 (its next entry became the head)", asked["a"])
	}
}
