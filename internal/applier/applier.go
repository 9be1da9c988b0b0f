// Package applier turns one batch of enrollment changes into as few DPS operations as it can
// and decides the outcome of every item: applied, transient (retry later) or permanent (dead
// letter).
//
// Rules, each chosen so that a redelivered event never changes the result:
//   - create, updateIfMatchETag and delete go out as one bulk call per batch (≤ 10 items).
//   - update without a known etag is sent as PUT with If-Match: * (one operation; DPS answers
//     409201 to a bulk update of an existing enrollment sent without etag, DPS.md). If the
//     applier learned the id's etag from its own earlier PUT, the item rides in a bulk update
//     with that etag instead (a stale guess costs one failed item and the PUT fallback).
//     PUT If-Match: * on an absent id answers 404, then a plain PUT creates it.
//   - delete of an absent id (404201 / 404204) is applied: the desired state is reached.
//   - a create answered 409201, or an updateIfMatchETag answered 412, costs one GET: when
//     DPS already holds the event's content, the item counts as applied (an earlier
//     delivery, an engine retry or azcore's retry of the same call applied it, and the
//     answer was lost: a worker died before the ack, a 503 or a dropped connection after
//     DPS applied it). A redelivered create may also
//     have been applied merged with the updates that followed it (batcher rule R2) by a
//     worker that died before the ack; its successor may see the create alone. So a
//     redelivered create also counts as applied when DPS holds the content of one of the
//     key's next update events (Item.Later, read from the stream, no DPS operation): only a
//     write of this create's merged group can have put it there, since the key's earlier
//     events were settled before the create was first delivered. And when DPS holds the
//     content of the create or of an update folded into it before its last (Item.Prior), or
//     of an update stored between the create and the entry's newest event that is not in
//     the entry (Successors.Between: a previous owner applied it folded into the create and
//     settled it while the create's ack was lost), a previous attempt applied a prefix of
//     the key's events: the create is ours, and an upsert of the entry's content finishes it.
//   - a whole-request 400 splits the batch in halves until the bad item stands alone, so good
//     items still apply.
//   - per-item or whole-call 408, 429 and 5xx, timeouts and connection errors are transient;
//     so is a whole-call 401 or 403 (the worker's credentials, not the event, are at fault).
package applier

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/dpsync/dpsync/internal/dps"
)

// DPS error codes the applier reacts to (DPS.md).
const (
	codeEnrollmentExists = 409201
	codeGroupExists      = 409202
)

// Kind is what an item changes: an individual enrollment or an enrollment group.
type Kind string

// Kinds of items.
const (
	KindEnrollment Kind = "enrollment"
	KindGroup      Kind = "group"
)

// Item is one change to apply. Exactly one of Enrollment and Group is set, matching Kind.
type Item struct {
	Kind       Kind
	Op         dps.BulkMode
	Enrollment *dps.IndividualEnrollment
	Group      *dps.EnrollmentGroup
	// Redelivered says the event behind the item may already have been applied once.
	Redelivered bool
	// Later, when set, returns the item's key's update events that follow its create in the
	// stream and are not part of the item (a redelivered create only; nil otherwise). See the
	// package doc: a previous owner may have applied the create merged with them.
	Later func(ctx context.Context) (Successors, error)
	// Prior holds, for a create that events were folded into (batcher rule R2), the contents
	// of the create and the updates before the last one, oldest first: a previous attempt may
	// have applied a prefix of them (the create alone, before a redelivery regrouped them).
	Prior []Item
}

// Successors are the update events of a redelivered create's key that follow the create in
// the stream and are not part of the item, in order, up to the key's first other operation.
type Successors struct {
	// Between are stored before the item's newest event: a previous owner applied them
	// folded into the create and settled them, while the create came back.
	Between []Item
	// After are stored after the item's newest event: a previous owner may have applied the
	// create folded with them; they come again themselves.
	After []Item
}

// ID returns the id the item targets, as the event spelled it.
func (it Item) ID() string {
	if it.Kind == KindGroup {
		if it.Group == nil {
			return ""
		}
		return it.Group.EnrollmentGroupID
	}
	if it.Enrollment == nil {
		return ""
	}
	return it.Enrollment.RegistrationID
}

// ETag returns the etag the event carried, if any.
func (it Item) ETag() string {
	if it.Kind == KindGroup {
		if it.Group == nil {
			return ""
		}
		return it.Group.ETag
	}
	if it.Enrollment == nil {
		return ""
	}
	return it.Enrollment.ETag
}

// withETag returns a copy of it whose content carries etag.
func (it Item) withETag(etag string) Item {
	if it.Kind == KindGroup {
		g := *it.Group
		g.ETag = etag
		it.Group = &g
		return it
	}
	e := *it.Enrollment
	e.ETag = etag
	it.Enrollment = &e
	return it
}

// Class is the class of an outcome.
type Class int

// Outcome classes.
const (
	Applied Class = iota
	Transient
	Permanent
)

func (c Class) String() string {
	switch c {
	case Applied:
		return "applied"
	case Transient:
		return "transient"
	case Permanent:
		return "permanent"
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// Outcome is the result of one item.
type Outcome struct {
	Class  Class
	Code   int    // 6-digit DPS error code, 0 when none
	Status int    // HTTP status, 0 when none
	Reason string // what a person reads; never holds a secret
	// Err is the error behind a failure (for errors.As); nil when applied.
	Err error
}

// ItemError is the failure of one item of a bulk call.
type ItemError struct {
	ID     string
	Code   int
	Status string
}

// DPS is what the applier needs from a DPS client. Errors are *azcore.ResponseError for
// HTTP failures (ErrorCode holds the 6-digit DPS code) or transport errors.
type DPS interface {
	// Bulk runs one bulk call of items of one kind and mode (1–10 distinct ids).
	Bulk(ctx context.Context, kind Kind, mode dps.BulkMode, items []Item) ([]ItemError, error)
	// Put creates or replaces one item; ifMatch "" sends no If-Match. It returns the new etag.
	Put(ctx context.Context, it Item, ifMatch string) (etag string, err error)
	// Get reads the current content of the item's id.
	Get(ctx context.Context, it Item) (Item, error)
	// Attestation reads the attestation of the item's id with its secrets (symmetric keys),
	// which Get does not return.
	Attestation(ctx context.Context, it Item) (*dps.AttestationMechanism, error)
}

// Options configure an Applier.
type Options struct {
	// KnownIDs bounds the number of ids whose state (exists, absent, current etag) the
	// applier remembers from its own calls (default 100,000).
	KnownIDs int
	// BeforeCall is called before every DPS operation (pacing, fencing). An error stops the
	// batch: its remaining items get a transient outcome with that error.
	BeforeCall func(ctx context.Context, op string) error
	// AfterCall is called after every DPS operation with the number of items it carried
	// (1 for a single-enrollment call) and its error (metrics).
	AfterCall func(op string, items int, err error)
}

// Applier applies batches. It is safe for concurrent use.
type Applier struct {
	dps   DPS
	opts  Options
	known *knownCache
	stats *unknownStats
}

// New returns an Applier calling client.
func New(client DPS, opts Options) (*Applier, error) {
	if client == nil {
		return nil, errors.New("applier: nil DPS client")
	}
	if opts.KnownIDs < 0 {
		return nil, fmt.Errorf("applier: KnownIDs %d is negative", opts.KnownIDs)
	}
	if opts.KnownIDs == 0 {
		opts.KnownIDs = 100_000
	}
	return &Applier{dps: client, opts: opts, known: newKnownCache(opts.KnownIDs), stats: newUnknownStats()}, nil
}

// Apply applies items, which share kind and operation and have distinct ids, and returns one
// outcome per item, in order.
func (a *Applier) Apply(ctx context.Context, items []Item) []Outcome {
	out := make([]Outcome, len(items))
	if len(items) == 0 {
		return out
	}
	switch items[0].Op {
	case dps.BulkModeUpdate:
		a.applyUpdates(ctx, items, out)
	default:
		a.applyBulk(ctx, items[0].Kind, items[0].Op, items, idx(len(items)), out)
	}
	return out
}

func idx(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// Call classes of Class.
const (
	ClassBulk = 0 // the item can ride in a bulk call
	ClassPut  = 1 // the item needs a call of its own (PUT If-Match: *)
)

// Class tells, from what the applier knows now, whether it would send it in a bulk call or in
// a call of its own (an update of an id that exists, etag unknown). A caller that groups items
// by it (batcher.Config.Class) fills bulk calls with items that all go in them. Knowledge can
// change before Apply; Apply decides again, so the class only groups.
func (a *Applier) Class(it Item) int {
	if it.Op != dps.BulkModeUpdate {
		return ClassBulk
	}
	st := a.known.get(cacheKey(it))
	switch {
	case st.etag != "", st.exists < 0:
		return ClassBulk
	case st.exists > 0:
		return ClassPut
	case a.stats.unknownUsuallyExist():
		return ClassPut
	}
	return ClassBulk
}

// applyUpdates applies update items (no etag condition: an update replaces whatever exists,
// or creates) with as few DPS operations as it can, steered by what the applier knows of
// each id from its own earlier calls (knowledge only decides which call is tried first;
// every guess has a fallback, so stale knowledge costs an operation, never correctness):
//
//   - etag known: the item rides in one bulk update with that etag;
//   - known to exist, etag unknown: PUT If-Match: * (DPS answers 409201 to a bulk update of
//     an existing enrollment without etag, DPS.md);
//   - known absent: the item rides in the bulk update without etag, which creates it;
//   - unknown: like "absent" or like "exists", whichever the ids of recent unknown updates
//     mostly turned out to be (an ERP updating devices it created long ago: exists; a
//     factory line whose first event of a device is an update: absent).
//
// A bulk item that fails because of the id's state (409201/409202: it exists; 412: stale
// etag; 404: absent and DPS did not create it — that bulk update creates an absent id is
// unconfirmed in DPS.md, so either answer is survived) falls back to the upsert.
func (a *Applier) applyUpdates(ctx context.Context, items []Item, out []Outcome) {
	var bulk, put []int
	unknown := make([]bool, len(items))
	absent := make([]bool, len(items))
	putFirst := a.stats.unknownUsuallyExist()
	for i, it := range items {
		st := a.known.get(cacheKey(it))
		switch {
		case st.etag != "":
			items[i] = it.withETag(st.etag)
			bulk = append(bulk, i)
		case st.exists > 0:
			put = append(put, i)
		case st.exists < 0:
			items[i] = it.withETag("")
			bulk = append(bulk, i)
		case putFirst:
			unknown[i] = true
			put = append(put, i)
		default:
			unknown[i] = true
			items[i] = it.withETag("")
			bulk = append(bulk, i)
		}
	}
	if len(bulk) > 0 {
		a.applyBulk(ctx, items[0].Kind, dps.BulkModeUpdate, items, bulk, out)
		for _, i := range bulk {
			o := out[i]
			switch {
			case o.Class == Applied:
				if unknown[i] {
					a.stats.observe(false) // created: it was absent
				}
			case o.Class == Permanent && (o.Code == codeEnrollmentExists || o.Code == codeGroupExists):
				if unknown[i] {
					a.stats.observe(true)
				}
				a.known.set(cacheKey(items[i]), idState{exists: 1})
				put = append(put, i)
			case o.Class == Permanent && o.Status == http.StatusPreconditionFailed:
				a.known.set(cacheKey(items[i]), idState{exists: 1}) // stale etag
				put = append(put, i)
			case o.Class == Permanent && o.Status == http.StatusNotFound:
				if unknown[i] {
					a.stats.observe(false)
				}
				absent[i] = true
				put = append(put, i)
			}
		}
	}
	// The PUTs are independent (distinct ids): send them together, not one after another.
	var wg sync.WaitGroup
	for _, i := range put {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = a.upsert(ctx, items[i], absent[i], unknown[i] && putFirst)
		}()
	}
	wg.Wait()
}

// upsert makes DPS hold it whatever exists: PUT If-Match: *, or a plain PUT when absent
// (in the other order when the id is believed absent). observe reports the id's existence
// to the statistics of unknown ids.
func (a *Applier) upsert(ctx context.Context, it Item, absentFirst, observe bool) Outcome {
	it = it.withETag("")
	first, second := "*", ""
	if absentFirst {
		first, second = "", "*"
	}
	for attempt := 0; attempt < 3; attempt++ {
		etag, err := a.put(ctx, it, first)
		if err == nil {
			if observe {
				a.stats.observe(first == "*")
				observe = false
			}
			a.known.set(cacheKey(it), idState{exists: 1, etag: etag})
			return Outcome{Class: Applied}
		}
		if first == "*" && !isNotFound(err) || first == "" && !isConflict(err) {
			return classify(err)
		}
		if observe {
			a.stats.observe(first == "") // PUT * found nothing: absent; plain PUT conflicted: exists
			observe = false
		}
		etag, err = a.put(ctx, it, second)
		if err == nil {
			a.known.set(cacheKey(it), idState{exists: 1, etag: etag})
			return Outcome{Class: Applied}
		}
		if second == "*" && !isNotFound(err) || second == "" && !isConflict(err) {
			return classify(err)
		}
		// Deleted or created by someone else between the two calls: again.
	}
	return Outcome{Class: Transient, Reason: "enrollment kept changing between PUT attempts"}
}

func (a *Applier) put(ctx context.Context, it Item, ifMatch string) (string, error) {
	if err := a.before(ctx, "put"); err != nil {
		return "", err
	}
	etag, err := a.dps.Put(ctx, it, ifMatch)
	a.after("put", 1, err)
	return etag, err
}

func (a *Applier) before(ctx context.Context, op string) error {
	if a.opts.BeforeCall == nil {
		return ctx.Err()
	}
	return a.opts.BeforeCall(ctx, op)
}

func (a *Applier) after(op string, items int, err error) {
	if a.opts.AfterCall != nil {
		a.opts.AfterCall(op, items, err)
	}
}

// applyBulk applies items[sel] in one bulk call, splitting on a whole-request 400.
func (a *Applier) applyBulk(ctx context.Context, kind Kind, mode dps.BulkMode, items []Item, sel []int, out []Outcome) {
	batch := make([]Item, len(sel))
	for j, i := range sel {
		batch[j] = items[i]
	}
	opName := "bulk-" + string(mode)
	if err := a.before(ctx, opName); err != nil {
		for _, i := range sel {
			out[i] = classify(err)
		}
		return
	}
	itemErrs, err := a.dps.Bulk(ctx, kind, mode, batch)
	a.after(opName, len(batch), err)
	if err != nil {
		if statusOf(err) == http.StatusBadRequest && len(sel) > 1 {
			half := len(sel) / 2
			a.applyBulk(ctx, kind, mode, items, sel[:half], out)
			a.applyBulk(ctx, kind, mode, items, sel[half:], out)
			return
		}
		o := classify(err)
		for _, i := range sel {
			out[i] = o
		}
		return
	}
	byID := make(map[string]ItemError, len(itemErrs))
	for _, e := range itemErrs {
		byID[strings.ToLower(e.ID)] = e
	}
	for _, i := range sel {
		it := items[i]
		e, failed := byID[strings.ToLower(it.ID())]
		if !failed {
			out[i] = Outcome{Class: Applied}
			a.afterApplied(it)
			continue
		}
		out[i] = a.itemFailure(ctx, it, e)
	}
}

// afterApplied records what an applied bulk item tells about its id: a bulk result carries
// no etag, so the id exists (or, after a delete, is absent) with an etag we do not know.
func (a *Applier) afterApplied(it Item) {
	if it.Op == dps.BulkModeDelete {
		a.known.set(cacheKey(it), idState{exists: -1})
		return
	}
	a.known.set(cacheKey(it), idState{exists: 1})
}

func (a *Applier) itemFailure(ctx context.Context, it Item, e ItemError) Outcome {
	status := e.Code / 1000
	o := Outcome{Class: Permanent, Code: e.Code, Status: status,
		Reason: fmt.Sprintf("DPS rejected %s of %s %q: %d %s", it.Op, it.Kind, it.ID(), e.Code, e.Status)}
	if status == http.StatusConflict || status == http.StatusPreconditionFailed {
		a.known.set(cacheKey(it), idState{exists: 1}) // it exists; whatever etag we knew is stale
	}
	switch {
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500:
		o.Class = Transient
	case it.Op == dps.BulkModeDelete && status == http.StatusNotFound:
		a.known.set(cacheKey(it), idState{exists: -1})
		return Outcome{Class: Applied}
	case (it.Op == dps.BulkModeCreate && status == http.StatusConflict) ||
		(it.Op == dps.BulkModeUpdateIfMatchETag && status == http.StatusPreconditionFailed):
		// The write may be ours: an earlier delivery, an engine retry, or azcore's own retry
		// of this very call after an answer was lost (applied, then 503 or a dropped
		// connection) — the applier cannot tell, so it looks (one GET, on an error path).
		h, err := a.holds(ctx, it)
		switch h {
		case holdsUnknown:
			// Not knowing whether the write was ours is no reason to dead-letter it: try
			// again later (DPS or NATS may be unreachable right now).
			o.Class, o.Err = Transient, err
			o.Reason += "; could not tell whether DPS holds this event's own write: " + errText(err)
			return o
		case holdsItsOwn, holdsLater:
			return Outcome{Class: Applied}
		case holdsPrior:
			// Our create is there without the updates folded into this entry after it: a
			// previous attempt applied the create alone. Finish with the entry's content.
			return a.upsert(ctx, it, false, false)
		}
	}
	return o
}

// What DPS holds for an id, compared with an item's events.
type holding int

const (
	holdsOther   holding = iota // something else
	holdsUnknown                // it could not be read (or the key's next events could not)
	holdsItsOwn                 // the item's content
	holdsPrior                  // the content of an event folded into the item before its last (Item.Prior), or of one settled between them (Successors.Between)
	holdsLater                  // the content of one of the key's updates after the item (Successors.After)
)

// holds reads the id's current content (one GET) and tells whose it is; err says why it
// could not tell (holdsUnknown).
func (a *Applier) holds(ctx context.Context, it Item) (holding, error) {
	if err := a.before(ctx, "get"); err != nil {
		return holdsUnknown, err
	}
	cur, err := a.dps.Get(ctx, it)
	a.after("get", 1, err)
	if err != nil {
		return holdsUnknown, err
	}
	a.known.set(cacheKey(it), idState{exists: 1, etag: cur.ETag()})
	h, match := holdsOther, Item{}
	switch {
	case SameContent(it, cur):
		h, match = holdsItsOwn, it
	default:
		for _, p := range it.Prior {
			if SameContent(p, cur) {
				h, match = holdsPrior, p
				break
			}
		}
	}
	if h == holdsOther && it.Later != nil {
		later, err := it.Later(ctx)
		if err != nil {
			return holdsUnknown, err
		}
		for _, b := range later.Between {
			if SameContent(b, cur) {
				h, match = holdsPrior, b // a prefix of the group, the item's content still to write
				break
			}
		}
		for _, l := range later.After {
			if h != holdsOther {
				break
			}
			if SameContent(l, cur) {
				h, match = holdsLater, l
			}
		}
	}
	if h == holdsOther {
		return holdsOther, nil
	}
	// Same content; the secrets the event supplies must be DPS's too, or the enrollment is
	// someone else's that merely looks alike (its devices would hold other keys).
	ok, err := a.secretsMatch(ctx, match, cur)
	switch {
	case err != nil:
		return holdsUnknown, err
	case !ok:
		return holdsOther, nil
	}
	return h, nil
}

// errText is err's text for a reason a person reads (classify's wording for DPS errors).
func errText(err error) string {
	if err == nil {
		return "unknown"
	}
	if o := classify(err); o.Status != 0 {
		return o.Reason
	}
	return err.Error()
}

func cacheKey(it Item) string { return string(it.Kind) + "/" + strings.ToLower(it.ID()) }

// classify turns a whole-call error into an outcome.
func classify(err error) Outcome {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		code, _ := strconv.Atoi(re.ErrorCode)
		o := Outcome{Class: Permanent, Code: code, Status: re.StatusCode, Err: err,
			Reason: fmt.Sprintf("DPS answered %d", re.StatusCode)}
		if code != 0 {
			o.Reason += fmt.Sprintf(" (%d)", code)
		}
		switch {
		case re.StatusCode == http.StatusRequestTimeout || re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500:
			o.Class = Transient
		case re.StatusCode == http.StatusUnauthorized || re.StatusCode == http.StatusForbidden:
			// The worker's credentials, not the event: an expired or revoked key or a missing
			// role assignment would otherwise dead-letter every event (and, with the default
			// hold policy, every later event of their keys). Retried; past the retry budget
			// the letters are transient and redriven once the credentials are fixed.
			o.Class = Transient
			o.Reason += ": DPS refused the worker's credentials (check the connection string, or the Entra ID role assignment)"
		}
		return o
	}
	if errors.Is(err, context.Canceled) {
		return Outcome{Class: Transient, Reason: "cancelled", Err: err}
	}
	// Transport errors, timeouts, fencing: retry later.
	return Outcome{Class: Transient, Reason: "DPS call did not complete: " + err.Error(), Err: err}
}

func statusOf(err error) int {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

func isNotFound(err error) bool { return statusOf(err) == http.StatusNotFound }
func isConflict(err error) bool { return statusOf(err) == http.StatusConflict }

// idState is what the applier knows of one id from its own calls.
type idState struct {
	etag   string // current etag ("" unknown)
	exists int8   // 1 exists, -1 absent, 0 unknown
}

// knownCache is a bounded map of id states, evicting in insertion order.
type knownCache struct {
	mu    sync.Mutex
	max   int
	m     map[string]idState
	order []string
}

func newKnownCache(max int) *knownCache { return &knownCache{max: max, m: make(map[string]idState)} }

// get returns the state of k (the zero state, unknown, when none).
func (c *knownCache) get(k string) idState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}

func (c *knownCache) set(k string, st idState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok {
		c.order = append(c.order, k)
	}
	c.m[k] = st
	for len(c.m) > c.max && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		delete(c.m, old)
	}
}

// unknownStats tracks, for updates of ids the applier knew nothing about, how often the id
// turned out to exist: a decaying average over the last ~50 such ids, starting from "they
// exist" (ERP updates of long-enrolled devices, the case DESIGN.md names).
type unknownStats struct {
	mu              sync.Mutex
	existing, total float64
}

const (
	unknownDecay = 0.98
	// putFirstAbove is the break-even of the two orders: with a share f of unknown ids
	// existing, PUT-first costs 1·f + 2·(1−f) = 2 − f operations per update and bulk-first
	// 0.1 + f; they are equal at f = 0.95.
	putFirstAbove    = 0.95
	unknownPrior     = 20.0
	unknownPriorRate = 0.98
)

func newUnknownStats() *unknownStats {
	return &unknownStats{existing: unknownPrior * unknownPriorRate, total: unknownPrior}
}

func (u *unknownStats) observe(existed bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.existing *= unknownDecay
	u.total *= unknownDecay
	u.total++
	if existed {
		u.existing++
	}
}

// unknownUsuallyExist reports whether an update of an unknown id should try PUT If-Match: *
// first (1 operation if it exists, 2 if not) rather than the bulk update (1/10 of an
// operation if it is absent, 1 + 1/10 if it exists).
func (u *unknownStats) unknownUsuallyExist() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.existing/u.total > putFirstAbove
}
