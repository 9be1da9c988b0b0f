package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/event"
)

// planned is one event of the workload before it is encoded. The only part that depends
// on the DPS instance is the etag of an updateIfMatchETag event, which is looked up in the
// seed of the scenario's emulator when the event is encoded.
type planned struct {
	Seq int
	ID  string
	Op  dps.BulkMode
	// Absent: the id did not exist on DPS before this event (an update then creates it).
	Absent bool
}

// mix counts the operations of a workload.
type mix struct {
	Creates       int `json:"creates"`
	CreatesByUpd  int `json:"updatesOfAbsentIds"`
	Updates       int `json:"updatesWithoutEtag"`
	IfMatch       int `json:"updateIfMatchEtag"`
	Deletes       int `json:"deletes"`
	DistinctIDs   int `json:"distinctIds"`
	IDsTouched2Up int `json:"idsTouchedTwiceOrMore"`
	MaxTouches    int `json:"maxTouchesOfOneId"`
}

// generator produces the workload: a pool of ids, the first half of which exist on DPS
// before the run (seeded), the second half new. Each event picks an id uniformly from the
// pool (so an id is touched pool/events times on average, several times for many) and an
// operation that is valid for the id's state at that point:
//   - absent id: create (95 %) or update (5 %, which creates it);
//   - existing id: delete (5 %); updateIfMatchETag (10 %) when the id is seeded and no
//     earlier event of the run touched it, carrying the etag the seed returned, so it is
//     correct; else update without etag (what an ERP sends).
//
// The generator is deterministic for a seed and a pool size, so every scenario sees the
// same events in the same order.
type generator struct {
	rng     *rand.Rand
	pool    int
	seeded  int
	exists  []bool
	touched []int
	next    int
}

func newGenerator(seed uint64, pool int) *generator {
	g := &generator{
		rng:     rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		pool:    pool,
		seeded:  pool / 2,
		exists:  make([]bool, pool),
		touched: make([]int, pool),
	}
	for i := 0; i < g.seeded; i++ {
		g.exists[i] = true
	}
	return g
}

func benchID(i int) string { return fmt.Sprintf("bench-%07d", i) }

// seededIDs are the ids that exist on DPS before the run.
func (g *generator) seededIDs() []string {
	ids := make([]string, g.seeded)
	for i := range ids {
		ids[i] = benchID(i)
	}
	return ids
}

// take returns the next n events.
func (g *generator) take(n int) []planned {
	out := make([]planned, 0, n)
	for range n {
		i := g.rng.IntN(g.pool)
		r := g.rng.Float64()
		var op dps.BulkMode
		switch {
		case !g.exists[i] && r < 0.95:
			op = dps.BulkModeCreate
		case !g.exists[i]:
			op = dps.BulkModeUpdate
		case r < 0.05:
			op = dps.BulkModeDelete
		case i < g.seeded && g.touched[i] == 0 && r < 0.15:
			op = dps.BulkModeUpdateIfMatchETag
		default:
			op = dps.BulkModeUpdate
		}
		absent := !g.exists[i]
		g.exists[i] = op != dps.BulkModeDelete
		g.touched[i]++
		g.next++
		out = append(out, planned{Seq: g.next, ID: benchID(i), Op: op, Absent: absent})
	}
	return out
}

func mixOf(evs []planned) mix {
	var m mix
	touches := map[string]int{}
	for _, e := range evs {
		switch e.Op {
		case dps.BulkModeCreate:
			m.Creates++
		case dps.BulkModeUpdate:
			if e.Absent {
				m.CreatesByUpd++
			} else {
				m.Updates++
			}
		case dps.BulkModeUpdateIfMatchETag:
			m.IfMatch++
		case dps.BulkModeDelete:
			m.Deletes++
		}
		touches[e.ID]++
	}
	m.DistinctIDs = len(touches)
	for _, n := range touches {
		if n >= 2 {
			m.IDsTouched2Up++
		}
		m.MaxTouches = max(m.MaxTouches, n)
	}
	return m
}

// enrollmentOf is the body an event carries: symmetric-key attestation (DPS generates the
// keys), a device id, and the initial twin tag "seq" naming the event, so DPS's state shows
// which event wrote it and when (lastUpdatedDateTimeUtc).
func enrollmentOf(p planned, etags map[string]string) *dps.IndividualEnrollment {
	if p.Op == dps.BulkModeDelete {
		return &dps.IndividualEnrollment{RegistrationID: p.ID}
	}
	en := &dps.IndividualEnrollment{
		RegistrationID: p.ID,
		DeviceID:       p.ID,
		Attestation:    &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{}},
		InitialTwin: &dps.InitialTwin{Tags: dps.TwinCollection{
			"seq":  json.RawMessage(strconv.Itoa(p.Seq)),
			"line": json.RawMessage(`"line-7"`),
		}},
	}
	if p.Op == dps.BulkModeUpdateIfMatchETag {
		en.ETag = etags[p.ID]
		if etags == nil {
			// No DPS behind the scenario (bare): a placeholder of the usual length.
			en.ETag = "IjA0MDBlNGYxLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWY3MDAwMCI="
		}
	}
	return en
}

func seqOf(e dps.IndividualEnrollment) int {
	if e.InitialTwin == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(e.InitialTwin.Tags["seq"]))
	return n
}

// encoded is one event ready to publish.
type encoded struct {
	Seq     int
	MsgID   string
	Subject string
	Body    []byte
}

func encodeAll(evs []planned, etags map[string]string) ([]encoded, error) {
	out := make([]encoded, len(evs))
	for i, p := range evs {
		ev := event.NewEnrollment(p.Op, enrollmentOf(p, etags))
		b, err := ev.Encode()
		if err != nil {
			return nil, fmt.Errorf("encode event %d: %w", p.Seq, err)
		}
		out[i] = encoded{Seq: p.Seq, MsgID: ev.ID, Subject: ev.StreamSubject(event.SubjectPrefix), Body: b}
	}
	return out, nil
}

// seed creates ids on DPS with bulk creates of 10 (8 calls at a time) and returns each
// id's etag, read back with one query (bulk results carry no etags).
func seed(ctx context.Context, c *dps.Client, ids []string) (map[string]string, error) {
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	sem := make(chan struct{}, 8)
	for start := 0; start < len(ids); start += 10 {
		batch := ids[start:min(start+10, len(ids))]
		items := make([]dps.IndividualEnrollment, len(batch))
		for i, id := range batch {
			items[i] = *enrollmentOf(planned{ID: id, Op: dps.BulkModeCreate}, nil)
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res, err := c.RunBulkOperation(ctx, dps.BulkModeCreate, items, nil)
			if err == nil && !res.IsSuccessful {
				err = fmt.Errorf("seed: %d items failed, first %+v", len(res.Errors), res.Errors[0])
			}
			if err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	all, err := listEnrollments(ctx, c)
	if err != nil {
		return nil, err
	}
	etags := make(map[string]string, len(all))
	for _, e := range all {
		etags[strings.ToLower(e.RegistrationID)] = e.ETag
	}
	if len(etags) < len(ids) {
		return nil, fmt.Errorf("seed: %d enrollments on DPS, want %d", len(etags), len(ids))
	}
	return etags, nil
}

func listEnrollments(ctx context.Context, c *dps.Client) ([]dps.IndividualEnrollment, error) {
	var out []dps.IndividualEnrollment
	size := int32(1000)
	pager := c.NewEnrollmentQueryPager(&dps.EnrollmentQueryOptions{PageSize: &size})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("query enrollments: %w", err)
		}
		out = append(out, page.Enrollments...)
	}
	return out, nil
}

// publishBacklog publishes evs asynchronously with Nats-Msg-Id and waits for every PubAck.
func publishBacklog(ctx context.Context, js jetstream.JetStream, evs []encoded) error {
	const window = 4096
	futures := make([]jetstream.PubAckFuture, 0, window)
	wait := func() error {
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return fmt.Errorf("publish: %w", err)
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(30 * time.Second):
				return fmt.Errorf("publish: no PubAck within 30s")
			}
		}
		futures = futures[:0]
		return nil
	}
	for _, e := range evs {
		f, err := js.PublishAsync(e.Subject, e.Body, jetstream.WithMsgID(e.MsgID))
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		futures = append(futures, f)
		if len(futures) == window {
			if err := wait(); err != nil {
				return err
			}
		}
	}
	return wait()
}

// publishPaced publishes evs at rate events/s and returns the publish time of each (by Seq).
// Events go out asynchronously; the time recorded is just before the publish call.
func publishPaced(ctx context.Context, js jetstream.JetStream, evs []encoded, rate float64) (map[int]time.Time, error) {
	sent := make(map[int]time.Time, len(evs))
	start := time.Now()
	futures := make([]jetstream.PubAckFuture, 0, len(evs))
	for i, e := range evs {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		sent[e.Seq] = time.Now()
		f, err := js.PublishAsync(e.Subject, e.Body, jetstream.WithMsgID(e.MsgID))
		if err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return nil, fmt.Errorf("publish: %w", err)
		case <-time.After(30 * time.Second):
			return nil, fmt.Errorf("publish: no PubAck within 30s")
		}
	}
	return sent, nil
}
