package dps

import (
	"context"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// GetEnrollmentOptions are the options of GetEnrollment (none yet).
type GetEnrollmentOptions struct{}

// GetEnrollmentResponse is the result of GetEnrollment. The attestation comes back without
// symmetric keys (use GetEnrollmentAttestationMechanism); RegistrationState is set.
type GetEnrollmentResponse struct {
	IndividualEnrollment
}

// GetEnrollment reads the individual enrollment registrationID (GET /enrollments/{id}).
// An absent enrollment is a 404 / 404201: IsNotFound(err).
func (c *Client) GetEnrollment(ctx context.Context, registrationID string, _ *GetEnrollmentOptions) (GetEnrollmentResponse, error) {
	var out GetEnrollmentResponse
	if err := c.getOne(ctx, "GetEnrollment", pathEnrollments, registrationID, &out.IndividualEnrollment); err != nil {
		return GetEnrollmentResponse{}, err
	}
	return out, nil
}

// CreateOrUpdateEnrollmentOptions are the options of CreateOrUpdateEnrollment.
type CreateOrUpdateEnrollmentOptions struct {
	// IfMatch is sent as the If-Match header, unchanged: the raw etag of the body, the same
	// in double quotes, or azcore.ETagAny ("*") to replace whatever exists. Without it DPS
	// creates the enrollment when absent and answers 409201 (IsConflict) when it exists;
	// with a stale etag it answers 412 (IsPreconditionFailed).
	IfMatch *azcore.ETag
}

// CreateOrUpdateEnrollmentResponse is the result of CreateOrUpdateEnrollment: the stored
// enrollment with its new etag and its symmetric keys (generated ones too).
type CreateOrUpdateEnrollmentResponse struct {
	IndividualEnrollment
}

// CreateOrUpdateEnrollment creates or replaces enrollment (PUT /enrollments/{registrationId}).
func (c *Client) CreateOrUpdateEnrollment(ctx context.Context, enrollment IndividualEnrollment, opts *CreateOrUpdateEnrollmentOptions) (CreateOrUpdateEnrollmentResponse, error) {
	var ifMatch *azcore.ETag
	if opts != nil {
		ifMatch = opts.IfMatch
	}
	var out CreateOrUpdateEnrollmentResponse
	if err := c.putOne(ctx, "CreateOrUpdateEnrollment", pathEnrollments, enrollment.RegistrationID, ifMatch, enrollment, &out.IndividualEnrollment); err != nil {
		return CreateOrUpdateEnrollmentResponse{}, err
	}
	return out, nil
}

// DeleteEnrollmentOptions are the options of DeleteEnrollment.
type DeleteEnrollmentOptions struct {
	// IfMatch, when set, is sent as If-Match: the delete happens only if the etag matches
	// (412 otherwise). Without it the delete is unconditional.
	IfMatch *azcore.ETag
}

// DeleteEnrollmentResponse is the result of DeleteEnrollment.
type DeleteEnrollmentResponse struct{}

// DeleteEnrollment deletes the individual enrollment registrationID
// (DELETE /enrollments/{id} → 204). An absent enrollment is a 404 (IsNotFound).
func (c *Client) DeleteEnrollment(ctx context.Context, registrationID string, opts *DeleteEnrollmentOptions) (DeleteEnrollmentResponse, error) {
	var ifMatch *azcore.ETag
	if opts != nil {
		ifMatch = opts.IfMatch
	}
	if err := c.deleteOne(ctx, "DeleteEnrollment", pathEnrollments, registrationID, ifMatch); err != nil {
		return DeleteEnrollmentResponse{}, err
	}
	return DeleteEnrollmentResponse{}, nil
}

// RunBulkOperationOptions are the options of RunBulkOperation (none yet).
type RunBulkOperationOptions struct{}

// RunBulkOperationResponse is the result of RunBulkOperation. DPS answers 200 even when
// items fail: IsSuccessful is false and Errors names each failed item by registrationId with
// its 6-digit code. Bulk is not atomic: the items not listed were applied.
type RunBulkOperationResponse struct {
	BulkEnrollmentOperationResult
}

// RunBulkOperation applies mode to 1 to MaxBulkItems individual enrollments in one call
// (POST /enrollments). Before sending, it refuses (with a *BulkValidationError) an empty or
// too long list, an item without registrationId, two items whose ids differ only in case
// (DPS ids are case-insensitive; DPS fails the whole request) and an unknown mode.
func (c *Client) RunBulkOperation(ctx context.Context, mode BulkMode, enrollments []IndividualEnrollment, _ *RunBulkOperationOptions) (RunBulkOperationResponse, error) {
	ids := make([]string, len(enrollments))
	for i := range enrollments {
		ids[i] = enrollments[i].RegistrationID
	}
	var out RunBulkOperationResponse
	body := BulkEnrollmentOperation{Enrollments: enrollments, Mode: mode}
	if err := c.bulk(ctx, "RunBulkOperation", pathEnrollments, mode, ids, body, &out.BulkEnrollmentOperationResult, func() int { return len(out.Errors) }); err != nil {
		return RunBulkOperationResponse{}, err
	}
	return out, nil
}

// GetEnrollmentAttestationMechanismOptions are the options of
// GetEnrollmentAttestationMechanism (none yet).
type GetEnrollmentAttestationMechanismOptions struct{}

// GetEnrollmentAttestationMechanismResponse is the attestation of an enrollment, with its
// symmetric keys (secrets: do not log them).
type GetEnrollmentAttestationMechanismResponse struct {
	AttestationMechanism
}

// GetEnrollmentAttestationMechanism reads the attestation mechanism of registrationID,
// keys included (POST /enrollments/{id}/attestationmechanism with an empty body).
func (c *Client) GetEnrollmentAttestationMechanism(ctx context.Context, registrationID string, _ *GetEnrollmentAttestationMechanismOptions) (GetEnrollmentAttestationMechanismResponse, error) {
	var out GetEnrollmentAttestationMechanismResponse
	if err := c.attestation(ctx, "GetEnrollmentAttestationMechanism", pathEnrollments, registrationID, &out.AttestationMechanism); err != nil {
		return GetEnrollmentAttestationMechanismResponse{}, err
	}
	return out, nil
}

// EnrollmentQueryOptions are the options of NewEnrollmentQueryPager.
type EnrollmentQueryOptions struct {
	// Query is the query; empty means DefaultQuery ("SELECT *").
	Query string
	// PageSize is sent as x-ms-max-item-count: the most items per page. Nil lets the
	// service choose. It must be positive.
	PageSize *int32
	// ContinuationToken resumes a query where an earlier page's ContinuationToken left it.
	ContinuationToken *string
}

// EnrollmentQueryResponse is one page of an enrollment query.
type EnrollmentQueryResponse struct {
	// Enrollments of this page, in the service's order (not sorted by id). Attestations
	// come without symmetric keys.
	Enrollments []IndividualEnrollment
	// ContinuationToken is the x-ms-continuation of the next page; nil on the last page.
	ContinuationToken *string
	// ItemType is the x-ms-item-type header ("Enrollment").
	ItemType string
}

// NewEnrollmentQueryPager returns a pager over the individual enrollments matching a query
// (POST /enrollments/query, following x-ms-continuation). opts may be nil.
func (c *Client) NewEnrollmentQueryPager(opts *EnrollmentQueryOptions) *runtime.Pager[EnrollmentQueryResponse] {
	var o EnrollmentQueryOptions
	if opts != nil {
		o = *opts
	}
	if o.Query == "" {
		o.Query = DefaultQuery
	}
	return newQueryPager(o.ContinuationToken,
		func(r EnrollmentQueryResponse) *string { return r.ContinuationToken },
		func(ctx context.Context, token *string) (EnrollmentQueryResponse, error) {
			var page EnrollmentQueryResponse
			next, itemType, err := c.queryPage(ctx, queryRequest{
				op: "QueryEnrollments", path: pathEnrollments + "/query",
				body: QuerySpecification{Query: o.Query}, pageSize: o.PageSize, token: token,
			}, &page.Enrollments, func() int { return len(page.Enrollments) })
			if err != nil {
				return EnrollmentQueryResponse{}, err
			}
			page.ContinuationToken, page.ItemType = next, itemType
			return page, nil
		})
}
