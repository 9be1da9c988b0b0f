package dps

import (
	"context"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// GetEnrollmentGroupOptions are the options of GetEnrollmentGroup (none yet).
type GetEnrollmentGroupOptions struct{}

// GetEnrollmentGroupResponse is the result of GetEnrollmentGroup. The attestation comes
// back without symmetric keys (use GetEnrollmentGroupAttestationMechanism).
type GetEnrollmentGroupResponse struct {
	EnrollmentGroup
}

// GetEnrollmentGroup reads the enrollment group enrollmentGroupID
// (GET /enrollmentGroups/{id}). An absent group is a 404 / 404204: IsNotFound(err).
func (c *Client) GetEnrollmentGroup(ctx context.Context, enrollmentGroupID string, _ *GetEnrollmentGroupOptions) (GetEnrollmentGroupResponse, error) {
	var out GetEnrollmentGroupResponse
	if err := c.getOne(ctx, "GetEnrollmentGroup", pathEnrollmentGroups, enrollmentGroupID, &out.EnrollmentGroup); err != nil {
		return GetEnrollmentGroupResponse{}, err
	}
	return out, nil
}

// CreateOrUpdateEnrollmentGroupOptions are the options of CreateOrUpdateEnrollmentGroup.
type CreateOrUpdateEnrollmentGroupOptions struct {
	// IfMatch is sent as the If-Match header, unchanged: the raw etag, the same in double
	// quotes, or azcore.ETagAny ("*"). Without it DPS creates the group when absent and
	// answers 409202 (IsConflict) when it exists; a stale etag gets 412.
	IfMatch *azcore.ETag
}

// CreateOrUpdateEnrollmentGroupResponse is the stored group with its new etag and keys.
type CreateOrUpdateEnrollmentGroupResponse struct {
	EnrollmentGroup
}

// CreateOrUpdateEnrollmentGroup creates or replaces group
// (PUT /enrollmentGroups/{enrollmentGroupId}).
func (c *Client) CreateOrUpdateEnrollmentGroup(ctx context.Context, group EnrollmentGroup, opts *CreateOrUpdateEnrollmentGroupOptions) (CreateOrUpdateEnrollmentGroupResponse, error) {
	var ifMatch *azcore.ETag
	if opts != nil {
		ifMatch = opts.IfMatch
	}
	var out CreateOrUpdateEnrollmentGroupResponse
	if err := c.putOne(ctx, "CreateOrUpdateEnrollmentGroup", pathEnrollmentGroups, group.EnrollmentGroupID, ifMatch, group, &out.EnrollmentGroup); err != nil {
		return CreateOrUpdateEnrollmentGroupResponse{}, err
	}
	return out, nil
}

// DeleteEnrollmentGroupOptions are the options of DeleteEnrollmentGroup.
type DeleteEnrollmentGroupOptions struct {
	// IfMatch, when set, makes the delete conditional on the etag (412 otherwise).
	IfMatch *azcore.ETag
}

// DeleteEnrollmentGroupResponse is the result of DeleteEnrollmentGroup.
type DeleteEnrollmentGroupResponse struct{}

// DeleteEnrollmentGroup deletes the enrollment group enrollmentGroupID
// (DELETE /enrollmentGroups/{id} → 204).
func (c *Client) DeleteEnrollmentGroup(ctx context.Context, enrollmentGroupID string, opts *DeleteEnrollmentGroupOptions) (DeleteEnrollmentGroupResponse, error) {
	var ifMatch *azcore.ETag
	if opts != nil {
		ifMatch = opts.IfMatch
	}
	if err := c.deleteOne(ctx, "DeleteEnrollmentGroup", pathEnrollmentGroups, enrollmentGroupID, ifMatch); err != nil {
		return DeleteEnrollmentGroupResponse{}, err
	}
	return DeleteEnrollmentGroupResponse{}, nil
}

// RunBulkGroupOperationOptions are the options of RunBulkGroupOperation (none yet).
type RunBulkGroupOperationOptions struct{}

// RunBulkGroupOperationResponse is the result of RunBulkGroupOperation: HTTP 200 even when
// items fail; Errors names the failed groups by enrollmentGroupId.
type RunBulkGroupOperationResponse struct {
	BulkEnrollmentGroupOperationResult
}

// RunBulkGroupOperation applies mode to 1 to MaxBulkItems enrollment groups in one call
// (POST /enrollmentGroups), after the same client-side checks as RunBulkOperation.
func (c *Client) RunBulkGroupOperation(ctx context.Context, mode BulkMode, groups []EnrollmentGroup, _ *RunBulkGroupOperationOptions) (RunBulkGroupOperationResponse, error) {
	ids := make([]string, len(groups))
	for i := range groups {
		ids[i] = groups[i].EnrollmentGroupID
	}
	var out RunBulkGroupOperationResponse
	body := BulkEnrollmentGroupOperation{EnrollmentGroups: groups, Mode: mode}
	if err := c.bulk(ctx, "RunBulkGroupOperation", pathEnrollmentGroups, mode, ids, body, &out.BulkEnrollmentGroupOperationResult, func() int { return len(out.Errors) }); err != nil {
		return RunBulkGroupOperationResponse{}, err
	}
	return out, nil
}

// GetEnrollmentGroupAttestationMechanismOptions are the options of
// GetEnrollmentGroupAttestationMechanism (none yet).
type GetEnrollmentGroupAttestationMechanismOptions struct{}

// GetEnrollmentGroupAttestationMechanismResponse is the attestation of a group, with its
// symmetric keys (secrets: do not log them).
type GetEnrollmentGroupAttestationMechanismResponse struct {
	AttestationMechanism
}

// GetEnrollmentGroupAttestationMechanism reads the attestation mechanism of a group, keys
// included (POST /enrollmentGroups/{id}/attestationmechanism with an empty body).
func (c *Client) GetEnrollmentGroupAttestationMechanism(ctx context.Context, enrollmentGroupID string, _ *GetEnrollmentGroupAttestationMechanismOptions) (GetEnrollmentGroupAttestationMechanismResponse, error) {
	var out GetEnrollmentGroupAttestationMechanismResponse
	if err := c.attestation(ctx, "GetEnrollmentGroupAttestationMechanism", pathEnrollmentGroups, enrollmentGroupID, &out.AttestationMechanism); err != nil {
		return GetEnrollmentGroupAttestationMechanismResponse{}, err
	}
	return out, nil
}

// EnrollmentGroupQueryOptions are the options of NewEnrollmentGroupQueryPager.
type EnrollmentGroupQueryOptions struct {
	// Query is the query; empty means DefaultQuery ("SELECT *").
	Query string
	// PageSize is sent as x-ms-max-item-count; nil lets the service choose. Must be positive.
	PageSize *int32
	// ContinuationToken resumes a query where an earlier page left it.
	ContinuationToken *string
}

// EnrollmentGroupQueryResponse is one page of an enrollment group query.
type EnrollmentGroupQueryResponse struct {
	// EnrollmentGroups of this page, in the service's order.
	EnrollmentGroups []EnrollmentGroup
	// ContinuationToken is the x-ms-continuation of the next page; nil on the last page.
	ContinuationToken *string
	// ItemType is the x-ms-item-type header ("EnrollmentGroup").
	ItemType string
}

// NewEnrollmentGroupQueryPager returns a pager over the enrollment groups matching a query
// (POST /enrollmentGroups/query, following x-ms-continuation). opts may be nil.
func (c *Client) NewEnrollmentGroupQueryPager(opts *EnrollmentGroupQueryOptions) *runtime.Pager[EnrollmentGroupQueryResponse] {
	var o EnrollmentGroupQueryOptions
	if opts != nil {
		o = *opts
	}
	if o.Query == "" {
		o.Query = DefaultQuery
	}
	return newQueryPager(o.ContinuationToken,
		func(r EnrollmentGroupQueryResponse) *string { return r.ContinuationToken },
		func(ctx context.Context, token *string) (EnrollmentGroupQueryResponse, error) {
			var page EnrollmentGroupQueryResponse
			next, itemType, err := c.queryPage(ctx, queryRequest{
				op: "QueryEnrollmentGroups", path: pathEnrollmentGroups + "/query",
				body: QuerySpecification{Query: o.Query}, pageSize: o.PageSize, token: token,
			}, &page.EnrollmentGroups, func() int { return len(page.EnrollmentGroups) })
			if err != nil {
				return EnrollmentGroupQueryResponse{}, err
			}
			page.ContinuationToken, page.ItemType = next, itemType
			return page, nil
		})
}
