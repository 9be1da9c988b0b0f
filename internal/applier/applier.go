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
//   - a redelivered create answered 409201, or a redelivered updateIfMatchETag answered 412,
//     costs one GET: when DPS already holds the event's content, the item counts as applied
//     (the first delivery applied it and the worker died before the ack). A create may also
//     have been applied merged with the updates that followed it (batcher rule R2) by a
//     worker that died before the ack; its successor may see the create alone. So a
//     redelivered create also counts as applied when DPS holds the content of one of the
//     key's next update events (Item.Later, read from the stream, no DPS operation): only a
//     write of this create's merged group can have put it there, since the key's earlier
//     events were settled before the create was first delivered.
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
	// Later, when set, returns the item's key's next events, as long as they are updates,
	// in order (a redelivered create only; nil otherwise). See the package doc: a previous
	// owner may have applied the create merged with them.
	Later func(ctx context.Context) ([]Item, error)
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
}

// Options configure an Applier.
type Options struct {
	// ETagCacheSize bounds the number of learned etags kept (default 100,000; 0 disables
	// learning).
	ETagCacheSize int
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
	etags *etagCache
}

// New returns an Applier calling client.
func New(client DPS, opts Options) (*Applier, error) {
	if client == nil {
		return nil, errors.New("applier: nil DPS client")
	}
	if opts.ETagCacheSize < 0 {
		return nil, fmt.Errorf("applier: ETagCacheSize %d is negative", opts.ETagCacheSize)
	}
	if opts.ETagCacheSize == 0 {
		opts.ETagCacheSize = 100_000
	}
	return &Applier{dps: client, opts: opts, etags: newETagCache(opts.ETagCacheSize)}, nil
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

// applyUpdates sends items with a learned etag as one bulk update and the others as PUT
// If-Match: *.
func (a *Applier) applyUpdates(ctx context.Context, items []Item, out []Outcome) {
	var bulk []int
	var put []int
	for i, it := range items {
		if etag, ok := a.etags.get(cacheKey(it)); ok {
			items[i] = it.withETag(etag)
			bulk = append(bulk, i)
			continue
		}
		put = append(put, i)
	}
	if len(bulk) > 0 {
		a.applyBulk(ctx, items[0].Kind, dps.BulkModeUpdate, items, bulk, out)
		for _, i := range bulk {
			// A stale guess: fall back to the unconditional PUT.
			if out[i].Class == Permanent && (out[i].Code == codeEnrollmentExists ||
				out[i].Code == codeGroupExists || out[i].Status == http.StatusPreconditionFailed) {
				a.etags.forget(cacheKey(items[i]))
				items[i] = items[i].withETag("")
				put = append(put, i)
			}
		}
	}
	for _, i := range put {
		out[i] = a.upsert(ctx, items[i])
	}
}

// upsert makes DPS hold it whatever exists: PUT If-Match: *, or a plain PUT when absent.
func (a *Applier) upsert(ctx context.Context, it Item) Outcome {
	it = it.withETag("")
	for attempt := 0; attempt < 3; attempt++ {
		etag, err := a.put(ctx, it, "*")
		if err == nil {
			a.etags.put(cacheKey(it), etag)
			return Outcome{Class: Applied}
		}
		if !isNotFound(err) {
			return classify(err)
		}
		etag, err = a.put(ctx, it, "")
		if err == nil {
			a.etags.put(cacheKey(it), etag)
			return Outcome{Class: Applied}
		}
		if !isConflict(err) {
			return classify(err)
		}
		// Created by someone else between the two calls: replace it.
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

// afterApplied keeps the etag cache honest: a bulk result carries no etag, so whatever we
// knew about the id is stale now.
func (a *Applier) afterApplied(it Item) { a.etags.forget(cacheKey(it)) }

func (a *Applier) itemFailure(ctx context.Context, it Item, e ItemError) Outcome {
	status := e.Code / 1000
	o := Outcome{Class: Permanent, Code: e.Code, Status: status,
		Reason: fmt.Sprintf("DPS rejected %s of %s %q: %d %s", it.Op, it.Kind, it.ID(), e.Code, e.Status)}
	switch {
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500:
		o.Class = Transient
	case it.Op == dps.BulkModeDelete && status == http.StatusNotFound:
		return Outcome{Class: Applied}
	case it.Redelivered && ((it.Op == dps.BulkModeCreate && status == http.StatusConflict) ||
		(it.Op == dps.BulkModeUpdateIfMatchETag && status == http.StatusPreconditionFailed)):
		if a.alreadyHolds(ctx, it) {
			return Outcome{Class: Applied}
		}
	}
	return o
}

// alreadyHolds reports whether DPS already holds it's content, or that of one of the
// key's next updates (one GET).
func (a *Applier) alreadyHolds(ctx context.Context, it Item) bool {
	if err := a.before(ctx, "get"); err != nil {
		return false
	}
	cur, err := a.dps.Get(ctx, it)
	a.after("get", 1, err)
	if err != nil {
		return false
	}
	if SameContent(it, cur) {
		return true
	}
	if it.Later == nil {
		return false
	}
	later, err := it.Later(ctx)
	if err != nil {
		return false // cannot tell: the conflict stands
	}
	for _, l := range later {
		if SameContent(l, cur) {
			return true
		}
	}
	return false
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

// etagCache is a bounded map of learned etags, evicting in insertion order.
type etagCache struct {
	mu    sync.Mutex
	max   int
	m     map[string]string
	order []string
}

func newETagCache(max int) *etagCache { return &etagCache{max: max, m: make(map[string]string)} }

func (c *etagCache) get(k string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *etagCache) put(k, v string) {
	if v == "" {
		c.forget(k)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok {
		c.order = append(c.order, k)
	}
	c.m[k] = v
	for len(c.m) > c.max && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		delete(c.m, old)
	}
	if len(c.order) > 2*c.max+16 { // compact keys forgotten meanwhile
		keep := c.order[:0]
		for _, k := range c.order {
			if _, ok := c.m[k]; ok {
				keep = append(keep, k)
			}
		}
		c.order = keep
	}
}

func (c *etagCache) forget(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
}
