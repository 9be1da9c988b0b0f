package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/integration/harness"
)

// Fleet observation for the tests of issue 6: who owned which partition when (from the
// membership bucket), which partition each key lives in (from the events stream), and the
// check that no worker wrote to DPS for a partition it did not own at that instant.

const (
	membersBucket = "dpsync_members"
	leasePrefix   = "partitions."
)

// leaseRecord is one write of a partition lease: the new owner ("" = released), the epoch,
// and when the server stored it (the KV entry's timestamp; same machine, same clock as the
// emulator taps).
type leaseRecord struct {
	P     int
	Owner string
	Epoch uint64
	Rev   uint64
	At    time.Time
}

// leaseWatch records every lease write of the membership bucket from the moment it starts.
type leaseWatch struct {
	mu   sync.Mutex
	recs map[int][]leaseRecord // per partition, in revision order
}

// watchLeases waits for the membership bucket (the first worker creates it) and records
// every lease write until the test's context ends. The bucket keeps one revision per key,
// so the watch must run while ownership changes; the initial values give the state at start.
func (e *env) watchLeases() *leaseWatch {
	e.t.Helper()
	ctx := e.ctx
	var kv jetstream.KeyValue
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		kv, err = e.js.KeyValue(ctx, membersBucket)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("membership bucket %s: %v", membersBucket, err)
		}
		e.sleep(100 * time.Millisecond)
	}
	w, err := kv.Watch(ctx, leasePrefix+"*")
	if err != nil {
		e.t.Fatalf("watch %s: %v", membersBucket, err)
	}
	lw := &leaseWatch{recs: map[int][]leaseRecord{}}
	ready := make(chan struct{})
	go func() {
		defer w.Stop()
		initial := true
		for {
			select {
			case <-ctx.Done():
				return
			case entry, ok := <-w.Updates():
				if !ok {
					return
				}
				if entry == nil { // end of the initial values
					if initial {
						close(ready)
						initial = false
					}
					continue
				}
				lw.add(entry)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		e.t.Fatal("lease watch: no initial values within 10 s")
	}
	return lw
}

func (lw *leaseWatch) add(entry jetstream.KeyValueEntry) {
	p, err := strconv.Atoi(strings.TrimPrefix(entry.Key(), leasePrefix))
	if err != nil {
		return
	}
	rec := leaseRecord{P: p, Rev: entry.Revision(), At: entry.Created()}
	if entry.Operation() == jetstream.KeyValuePut {
		var v struct {
			Owner string `json:"owner"`
			Epoch uint64 `json:"epoch"`
		}
		if json.Unmarshal(entry.Value(), &v) == nil {
			rec.Owner, rec.Epoch = v.Owner, v.Epoch
		}
	}
	lw.mu.Lock()
	lw.recs[p] = append(lw.recs[p], rec)
	lw.mu.Unlock()
}

// at returns the lease record of p in force at t: the last one stored at or before t.
func (lw *leaseWatch) at(p int, t time.Time) (leaseRecord, bool) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	recs := lw.recs[p]
	i := sort.Search(len(recs), func(i int) bool { return recs[i].At.After(t) })
	if i == 0 {
		return leaseRecord{}, false
	}
	return recs[i-1], true
}

// ownedBy returns the partitions whose lease in force at t names owner.
func (lw *leaseWatch) ownedBy(owner string, t time.Time, partitions int) []int {
	var ps []int
	for p := range partitions {
		if r, ok := lw.at(p, t); ok && r.Owner == owner {
			ps = append(ps, p)
		}
	}
	return ps
}

// takenOver returns, for each partition, how long after t a worker other than old first
// stored a lease of it, and whether every one was taken over.
func (lw *leaseWatch) takenOver(ps []int, old string, t time.Time) (map[int]time.Duration, bool) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	out := map[int]time.Duration{}
	for _, p := range ps {
		for _, r := range lw.recs[p] {
			if r.At.After(t) && r.Owner != "" && r.Owner != old {
				out[p] = r.At.Sub(t)
				break
			}
		}
	}
	return out, len(out) == len(ps)
}

// reachedShare returns when, at or after from, owner first held at least share partitions
// (by the leases in force), and false if it never did.
func (lw *leaseWatch) reachedShare(owner string, share, partitions int, from time.Time) (time.Time, bool) {
	lw.mu.Lock()
	var times []time.Time
	for _, recs := range lw.recs {
		for _, r := range recs {
			if !r.At.Before(from) {
				times = append(times, r.At)
			}
		}
	}
	lw.mu.Unlock()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	times = append([]time.Time{from}, times...)
	for _, t := range times {
		if len(lw.ownedBy(owner, t, partitions)) >= share {
			return t, true
		}
	}
	return time.Time{}, false
}

// partitionOfKeys reads the subjects the events stream stored ("dpsync.part.<p>.<kind>.<token>")
// and returns the partition of every enrollment key.
func (e *env) partitionOfKeys() map[string]int {
	e.t.Helper()
	// A read can fail on a transient cluster hiccup ("no responders" while a leader moves):
	// read the whole stream again, a few times, before giving up.
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		var out map[string]int
		if out, err = e.readPartitionOfKeys(); err == nil {
			return out
		}
		e.t.Logf("read %s (attempt %d): %v", eventsStream, attempt, err)
		e.sleep(time.Second)
	}
	e.t.Fatalf("read %s: %v", eventsStream, err)
	return nil
}

func (e *env) readPartitionOfKeys() (map[string]int, error) {
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	s, err := e.js.Stream(ctx, eventsStream)
	if err != nil {
		return nil, err
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{HeadersOnly: true})
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n, more := 0, true
		for msg := range batch.Messages() {
			n++
			parts := strings.SplitN(msg.Subject(), ".", 5) // dpsync part <p> enrollment <token>
			if len(parts) == 5 && parts[3] == "enrollment" {
				p, err := strconv.Atoi(parts[2])
				if err == nil {
					out[strings.ReplaceAll(parts[4], "%2E", ".")] = p
				}
			}
			if meta, err := msg.Metadata(); err == nil && meta.NumPending == 0 {
				more = false
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, err
		}
		if n == 0 || !more {
			return out, nil
		}
	}
}

// staleWrites returns a description of every write that reached DPS for a key whose
// partition was, when the emulator received the write, leased to another worker (or
// released, or never leased). The fencing promise: a worker sends nothing for a partition
// it no longer owns. Lease records are stamped by the server when stored; the new owner's
// acquisition is stored before it can send anything, and the old owner's last request
// arrived before that (docs: internal/membership, "Fencing").
func staleWrites(writes []harness.Write, lw *leaseWatch, partOf map[string]int) []string {
	var out []string
	for _, w := range writes {
		for _, id := range w.IDs {
			p, ok := partOf[id]
			if !ok {
				out = append(out, fmt.Sprintf("%s wrote unknown key %s at %s", w.Tap, id, w.At.Format(time.RFC3339Nano)))
				continue
			}
			r, ok := lw.at(p, w.At)
			switch {
			case !ok:
				out = append(out, fmt.Sprintf("%s wrote key %s (partition %d) at %s before any lease of it was seen",
					w.Tap, id, p, w.At.Format(time.RFC3339Nano)))
			case r.Owner != w.Tap:
				out = append(out, fmt.Sprintf("%s wrote key %s (partition %d, %s, status %d, seq %d) at %s while the partition was leased to %q (epoch %d, stored %s, %v earlier)",
					w.Tap, id, p, w.Method+" "+w.Mode, w.Status, seqAt(w, id), w.At.Format(time.RFC3339Nano), r.Owner, r.Epoch, r.At.Format(time.RFC3339Nano), w.At.Sub(r.At).Round(time.Millisecond)))
			}
		}
	}
	return out
}

func seqAt(w harness.Write, id string) int {
	for i, x := range w.IDs {
		if x == id && i < len(w.Seqs) {
			return w.Seqs[i]
		}
	}
	return -1
}
