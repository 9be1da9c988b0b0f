package batcher

import (
	"errors"
	"fmt"
	"math/rand"
	"reflect"
	"slices"
	"testing"
	"time"
)

// A deliberately naive model of the batcher: per-key queues scanned in full on every question.
type mEntry struct {
	kind  string
	op    Op
	items []int
	at    time.Time
	seq   int
	flush bool // a Flush came after it was created
}

type mKey struct {
	queue    []*mEntry
	inFlight bool
	held     bool
}

type model struct {
	cfg      Config
	keys     map[string]*mKey
	seq      int
	inFlight map[BatchID][]string
	added    map[string][]int // per key, item ids in Add order
	out      map[string][]int // per key, item ids in dispatch / take order
}

func (m *model) key(k string) *mKey {
	if m.keys[k] == nil {
		m.keys[k] = &mKey{}
	}
	return m.keys[k]
}

func (m *model) pending() int {
	n := 0
	for _, ks := range m.keys {
		for _, e := range ks.queue {
			n += len(e.items)
		}
	}
	return n
}

func (m *model) add(now time.Time, k, kind string, op Op, id int) {
	ks := m.key(k)
	m.added[k] = append(m.added[k], id)
	if m.cfg.Coalesce && len(ks.queue) > 0 {
		t := ks.queue[len(ks.queue)-1]
		if t.kind == kind && op == OpUpdate && (t.op == OpUpdate || t.op == OpCreate) {
			t.items = append(t.items, id)
			return
		}
	}
	ks.queue = append(ks.queue, &mEntry{kind: kind, op: op, items: []int{id}, at: now, seq: m.seq})
	m.seq++
}

type gk struct {
	kind string
	op   Op
}

// eligible returns the eligible heads by group, oldest first, with their keys.
func (m *model) eligible() map[gk][]string {
	out := make(map[gk][]string)
	for k, ks := range m.keys {
		if ks.inFlight || ks.held || len(ks.queue) == 0 {
			continue
		}
		h := ks.queue[0]
		out[gk{h.kind, h.op}] = append(out[gk{h.kind, h.op}], k)
	}
	for g, keys := range out {
		slices.SortFunc(keys, func(a, b string) int { return m.keys[a].queue[0].seq - m.keys[b].queue[0].seq })
		out[g] = keys
	}
	return out
}

// nextBatch returns the batch the model expects next at now (group and keys), if any.
func (m *model) nextBatch(now time.Time) (gk, []string, bool) {
	if len(m.inFlight) >= m.cfg.MaxInFlight {
		return gk{}, nil, false
	}
	var best gk
	var bestKeys []string
	found := false
	for g, keys := range m.eligible() {
		oldest := m.keys[keys[0]].queue[0]
		ready := len(keys) >= m.cfg.MaxItems || oldest.flush || now.Sub(oldest.at) >= m.cfg.Linger
		if ready && (!found || oldest.seq < m.keys[bestKeys[0]].queue[0].seq) {
			best, bestKeys, found = g, keys, true
		}
	}
	if !found {
		return gk{}, nil, false
	}
	return best, bestKeys[:min(len(bestKeys), m.cfg.MaxItems)], true
}

func (m *model) untilNext(now time.Time) (time.Duration, bool) {
	if len(m.inFlight) >= m.cfg.MaxInFlight {
		return 0, false
	}
	if _, _, ok := m.nextBatch(now); ok {
		return 0, true
	}
	var d time.Duration
	found := false
	for _, keys := range m.eligible() {
		w := m.keys[keys[0]].queue[0].at.Add(m.cfg.Linger).Sub(now)
		if !found || w < d {
			d, found = w, true
		}
	}
	return d, found
}

func itemIDs(e Entry) []int {
	ids := make([]int, len(e.Items))
	for i, it := range e.Items {
		ids[i] = it.Value.(int)
	}
	return ids
}

func TestPropertyRandomSequences(t *testing.T) {
	for seed := int64(1); seed <= 300; seed++ {
		rng := rand.New(rand.NewSource(seed))
		cfg := Config{
			MaxItems:    1 + rng.Intn(10),
			Linger:      time.Duration(1+rng.Intn(50)) * time.Millisecond,
			MaxInFlight: 1 + rng.Intn(4),
			MaxPending:  5 + rng.Intn(60),
			Coalesce:    rng.Intn(3) > 0,
		}
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) { runProperty(t, rng, cfg) })
	}
}

func runProperty(t *testing.T, rng *rand.Rand, cfg Config) {
	b := mustNew(t, cfg)
	m := &model{cfg: cfg, keys: map[string]*mKey{}, inFlight: map[BatchID][]string{}, added: map[string][]int{}, out: map[string][]int{}}
	nkeys := 1 + rng.Intn(25)
	now := t0
	nextID := 0
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("config %+v: "+format, append([]any{cfg}, args...)...)
	}
	ready := func() {
		t.Helper()
		for _, bt := range b.Ready(now) {
			g, keys, ok := m.nextBatch(now)
			if !ok {
				fail("Ready gave batch %d (%s/%v, %d entries) at %v; the model has none ready", bt.ID, bt.Kind, bt.Op, len(bt.Entries), now.Sub(t0))
			}
			if g != (gk{bt.Kind, bt.Op}) {
				fail("batch group %s/%v, want %s/%v (oldest ready first)", bt.Kind, bt.Op, g.kind, g.op)
			}
			var got []string
			for _, e := range bt.Entries {
				got = append(got, e.Key)
			}
			if !reflect.DeepEqual(got, keys) {
				fail("batch keys %v, want %v", got, keys)
			}
			if len(bt.Entries) > cfg.MaxItems {
				fail("batch of %d entries > MaxItems %d", len(bt.Entries), cfg.MaxItems)
			}
			for _, e := range bt.Entries {
				ks := m.keys[e.Key]
				if ks.inFlight || ks.held {
					fail("key %s dispatched while in flight=%v held=%v", e.Key, ks.inFlight, ks.held)
				}
				head := ks.queue[0]
				if e.Op != bt.Op || e.Kind != bt.Kind || head.op != e.Op || !reflect.DeepEqual(itemIDs(e), head.items) {
					fail("entry %s = %v %v, want head %v %v", e.Key, e.Op, itemIDs(e), head.op, head.items)
				}
				if e.Value != e.Items[len(e.Items)-1].Value {
					fail("entry %s Value %v is not its last item's", e.Key, e.Value)
				}
				ks.queue = ks.queue[1:]
				ks.inFlight = true
				m.out[e.Key] = append(m.out[e.Key], head.items...)
			}
			m.inFlight[bt.ID] = got
		}
		if len(m.inFlight) > cfg.MaxInFlight || b.InFlight() != len(m.inFlight) {
			fail("in flight %d (model %d), MaxInFlight %d", b.InFlight(), len(m.inFlight), cfg.MaxInFlight)
		}
		if _, _, ok := m.nextBatch(now); ok {
			fail("after Ready the model still has a ready batch")
		}
	}
	finish := func(id BatchID, hold []string) {
		b.Finish(id, hold...)
		for _, k := range m.inFlight[id] {
			m.keys[k].inFlight = false
			if slices.Contains(hold, k) {
				m.keys[k].held = true
			}
		}
		delete(m.inFlight, id)
	}
	for step := 0; step < 400; step++ {
		switch r := rng.Intn(100); {
		case r < 45:
			k := fmt.Sprintf("%s/k%d", []string{"enrollment", "group"}[rng.Intn(2)], rng.Intn(nkeys))
			op := Op(1 + rng.Intn(4))
			err := b.Add(now, Item{Key: k, Kind: kindOf(k), Op: op, Value: nextID})
			if m.pending() >= cfg.MaxPending {
				if !errors.Is(err, ErrFull) {
					fail("Add with %d pending = %v, want ErrFull", m.pending(), err)
				}
				continue
			}
			if err != nil {
				fail("Add: %v", err)
			}
			m.add(now, k, kindOf(k), op, nextID)
			nextID++
		case r < 60:
			now = now.Add(time.Duration(rng.Int63n(int64(2 * cfg.Linger))))
			ready()
		case r < 75:
			if len(m.inFlight) == 0 {
				continue
			}
			ids := make([]BatchID, 0, len(m.inFlight))
			for id := range m.inFlight {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			id := ids[rng.Intn(len(ids))]
			var hold []string
			for _, k := range m.inFlight[id] {
				if rng.Intn(4) == 0 {
					hold = append(hold, k)
				}
			}
			finish(id, hold)
		case r < 85:
			var held []string
			for k, ks := range m.keys {
				if ks.held {
					held = append(held, k)
				}
			}
			if len(held) == 0 {
				continue
			}
			slices.Sort(held)
			k := held[rng.Intn(len(held))]
			b.Release(k)
			m.keys[k].held = false
		case r < 90:
			k := fmt.Sprintf("%s/k%d", []string{"enrollment", "group"}[rng.Intn(2)], rng.Intn(nkeys))
			taken := b.TakeKey(k)
			ks := m.key(k)
			if len(taken) != len(ks.queue) {
				fail("TakeKey(%s) = %d entries, want %d", k, len(taken), len(ks.queue))
			}
			for i, e := range taken {
				if e.Op != ks.queue[i].op || !reflect.DeepEqual(itemIDs(e), ks.queue[i].items) {
					fail("TakeKey(%s)[%d] = %v %v, want %v %v", k, i, e.Op, itemIDs(e), ks.queue[i].op, ks.queue[i].items)
				}
				m.out[k] = append(m.out[k], itemIDs(e)...)
			}
			ks.queue = nil
		case r < 93:
			b.Flush()
			for _, ks := range m.keys {
				for _, e := range ks.queue {
					e.flush = true
				}
			}
		default:
			ready()
		}
		if b.Pending() != m.pending() {
			fail("Pending() = %d, want %d", b.Pending(), m.pending())
		}
		for k, ks := range m.keys {
			n := 0
			for _, e := range ks.queue {
				n += len(e.items)
			}
			if b.Len(k) != n || b.Held(k) != ks.held {
				fail("key %s: Len %d Held %v, want %d %v", k, b.Len(k), b.Held(k), n, ks.held)
			}
		}
		gd, gok := b.UntilNext(now)
		wd, wok := m.untilNext(now)
		if gd != wd || gok != wok {
			fail("UntilNext = %v, %v, want %v, %v", gd, gok, wd, wok)
		}
	}
	// Drain: flush, finish everything, release every hold.
	b.Flush()
	for _, ks := range m.keys {
		for _, e := range ks.queue {
			e.flush = true
		}
	}
	for round := 0; b.Pending() > 0 || b.InFlight() > 0; round++ {
		if round > 10_000 {
			fail("drain does not end: %d pending, %d in flight", b.Pending(), b.InFlight())
		}
		for k, ks := range m.keys {
			if ks.held {
				b.Release(k)
				ks.held = false
			}
		}
		ready()
		for id := range m.inFlight {
			finish(id, nil)
		}
	}
	// Per-key order equals Add order; nothing lost, nothing twice.
	seen := make(map[int]bool)
	for k, ids := range m.added {
		if !reflect.DeepEqual(m.out[k], ids) {
			fail("key %s dispatched %v, want Add order %v", k, m.out[k], ids)
		}
		for _, id := range m.out[k] {
			if seen[id] {
				fail("item %d dispatched twice", id)
			}
			seen[id] = true
		}
	}
	if len(seen) != nextID {
		fail("%d items came out, %d went in", len(seen), nextID)
	}
	if len(b.keys) != 0 || len(b.groups) != 0 {
		fail("state left after drain: %d keys, %d groups", len(b.keys), len(b.groups))
	}
}
