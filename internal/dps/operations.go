package dps

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"go.opentelemetry.io/otel/attribute"
)

// This file holds the plumbing shared by the operations on enrollments, groups and
// registration states.

// DefaultQuery is the query a pager sends when its options name none.
const DefaultQuery = "SELECT *"

// Paths of the service API collections.
const (
	pathEnrollments      = "/enrollments"
	pathEnrollmentGroups = "/enrollmentGroups"
	pathRegistrations    = "/registrations"
)

// getOne GETs collection/{id} into out.
func (c *Client) getOne(ctx context.Context, op, collection, id string, out any) error {
	ctx, o := c.inst.begin(ctx, op)
	status, err := c.getOneTraced(ctx, op, collection, id, out)
	o.end(status, err)
	return err
}

func (c *Client) getOneTraced(ctx context.Context, op, collection, id string, out any) (int, error) {
	p, err := escapeID(id)
	if err != nil {
		return 0, fmt.Errorf("dps: %s: %w", op, err)
	}
	resp, err := c.send(ctx, request{op: op, method: http.MethodGet, path: collection + "/" + p, ok: []int{http.StatusOK}})
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, decode(op, resp, out)
}

// putOne PUTs body to collection/{id} and decodes the answer into out.
func (c *Client) putOne(ctx context.Context, op, collection, id string, ifMatch *azcore.ETag, body, out any) error {
	ctx, o := c.inst.begin(ctx, op, attribute.Bool("dps.if_match", ifMatch != nil))
	status, err := func() (int, error) {
		p, err := escapeID(id)
		if err != nil {
			return 0, fmt.Errorf("dps: %s: %w", op, err)
		}
		resp, err := c.send(ctx, request{op: op, method: http.MethodPut, path: collection + "/" + p, ifMatch: ifMatch, body: body, ok: []int{http.StatusOK, http.StatusCreated}})
		if err != nil {
			return 0, err
		}
		return resp.StatusCode, decode(op, resp, out)
	}()
	o.end(status, err)
	return err
}

// deleteOne DELETEs collection/{id}.
func (c *Client) deleteOne(ctx context.Context, op, collection, id string, ifMatch *azcore.ETag) error {
	ctx, o := c.inst.begin(ctx, op, attribute.Bool("dps.if_match", ifMatch != nil))
	status, err := func() (int, error) {
		p, err := escapeID(id)
		if err != nil {
			return 0, fmt.Errorf("dps: %s: %w", op, err)
		}
		resp, err := c.send(ctx, request{op: op, method: http.MethodDelete, path: collection + "/" + p, ifMatch: ifMatch, ok: []int{http.StatusNoContent, http.StatusOK}})
		if err != nil {
			return 0, err
		}
		return resp.StatusCode, nil
	}()
	o.end(status, err)
	return err
}

// attestation POSTs an empty body to collection/{id}/attestationmechanism.
func (c *Client) attestation(ctx context.Context, op, collection, id string, out *AttestationMechanism) error {
	ctx, o := c.inst.begin(ctx, op)
	status, err := func() (int, error) {
		p, err := escapeID(id)
		if err != nil {
			return 0, fmt.Errorf("dps: %s: %w", op, err)
		}
		resp, err := c.send(ctx, request{op: op, method: http.MethodPost, path: collection + "/" + p + "/attestationmechanism", ok: []int{http.StatusOK}})
		if err != nil {
			return 0, err
		}
		return resp.StatusCode, decode(op, resp, out)
	}()
	o.end(status, err)
	return err
}

// bulk validates ids and POSTs body to collection, decoding the result into out.
// failed returns the number of failed items of the decoded result.
func (c *Client) bulk(ctx context.Context, op, collection string, mode BulkMode, ids []string, body, out any, failed func() int) error {
	ctx, o := c.inst.begin(ctx, op, attribute.String("dps.bulk_mode", string(mode)), attribute.Int("dps.item_count", len(ids)))
	status, err := func() (int, error) {
		if err := validateBulk(mode, ids); err != nil {
			return 0, err
		}
		resp, err := c.send(ctx, request{op: op, method: http.MethodPost, path: collection, body: body, ok: []int{http.StatusOK}})
		if err != nil {
			return 0, err
		}
		if err := decode(op, resp, out); err != nil {
			return resp.StatusCode, err
		}
		o.set(attribute.Int("dps.failed_item_count", failed()))
		return resp.StatusCode, nil
	}()
	o.end(status, err)
	return err
}

// queryRequest is one page request of a query.
type queryRequest struct {
	op       string
	path     string
	body     any // nil for the registration state query
	pageSize *int32
	token    *string
}

// queryPage fetches one page into out and returns the continuation token (nil on the last
// page) and the x-ms-item-type header.
func (c *Client) queryPage(ctx context.Context, q queryRequest, out any, count func() int) (next *string, itemType string, err error) {
	attrs := []attribute.KeyValue{attribute.Bool("dps.continuation", q.token != nil)}
	if q.pageSize != nil {
		attrs = append(attrs, attribute.Int("dps.page_size", int(*q.pageSize)))
	}
	ctx, o := c.inst.begin(ctx, q.op, attrs...)
	status, err := func() (int, error) {
		if q.pageSize != nil && *q.pageSize <= 0 {
			return 0, fmt.Errorf("dps: %s: page size %d is not positive", q.op, *q.pageSize)
		}
		hdr := map[string]string{}
		if q.pageSize != nil {
			hdr["x-ms-max-item-count"] = strconv.Itoa(int(*q.pageSize))
		}
		if q.token != nil {
			hdr["x-ms-continuation"] = *q.token
		}
		resp, err := c.send(ctx, request{op: q.op, method: http.MethodPost, path: q.path, header: hdr, body: q.body, ok: []int{http.StatusOK}})
		if err != nil {
			return 0, err
		}
		if err := decode(q.op, resp, out); err != nil {
			return resp.StatusCode, err
		}
		itemType = resp.Header.Get("x-ms-item-type")
		if t := resp.Header.Get("x-ms-continuation"); t != "" {
			if q.token != nil && *q.token == t {
				// Following it would loop forever.
				return resp.StatusCode, fmt.Errorf("dps: %s: %w", q.op, errRepeatedContinuation)
			}
			next = &t
		}
		o.set(attribute.Int("dps.item_count", count()), attribute.Bool("dps.more", next != nil))
		return resp.StatusCode, nil
	}()
	o.end(status, err)
	return next, itemType, err
}

var errRepeatedContinuation = errors.New("the service returned the continuation token it was sent")

// newQueryPager returns a pager over a query. page decodes one page given the continuation
// token to send; first is the token of the first page (nil to start at the beginning).
func newQueryPager[T any](first *string, next func(T) *string, page func(ctx context.Context, token *string) (T, error)) *runtime.Pager[T] {
	return runtime.NewPager(runtime.PagingHandler[T]{
		More: func(cur T) bool { return next(cur) != nil },
		Fetcher: func(ctx context.Context, cur *T) (T, error) {
			token := first
			if cur != nil {
				token = next(*cur)
			}
			return page(ctx, token)
		},
	})
}
