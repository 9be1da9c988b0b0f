package dps

import (
	"context"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// GetRegistrationStateOptions are the options of GetRegistrationState (none yet).
type GetRegistrationStateOptions struct{}

// GetRegistrationStateResponse is the registration record of a device.
type GetRegistrationStateResponse struct {
	DeviceRegistrationState
}

// GetRegistrationState reads the registration record of registrationID
// (GET /registrations/{id}). Records are created by device registration; absent → 404.
func (c *Client) GetRegistrationState(ctx context.Context, registrationID string, _ *GetRegistrationStateOptions) (GetRegistrationStateResponse, error) {
	var out GetRegistrationStateResponse
	if err := c.getOne(ctx, "GetRegistrationState", pathRegistrations, registrationID, &out.DeviceRegistrationState); err != nil {
		return GetRegistrationStateResponse{}, err
	}
	return out, nil
}

// DeleteRegistrationStateOptions are the options of DeleteRegistrationState.
type DeleteRegistrationStateOptions struct {
	// IfMatch, when set, makes the delete conditional on the record's etag.
	IfMatch *azcore.ETag
}

// DeleteRegistrationStateResponse is the result of DeleteRegistrationState.
type DeleteRegistrationStateResponse struct{}

// DeleteRegistrationState deletes the registration record of registrationID
// (DELETE /registrations/{id} → 204).
func (c *Client) DeleteRegistrationState(ctx context.Context, registrationID string, opts *DeleteRegistrationStateOptions) (DeleteRegistrationStateResponse, error) {
	var ifMatch *azcore.ETag
	if opts != nil {
		ifMatch = opts.IfMatch
	}
	if err := c.deleteOne(ctx, "DeleteRegistrationState", pathRegistrations, registrationID, ifMatch); err != nil {
		return DeleteRegistrationStateResponse{}, err
	}
	return DeleteRegistrationStateResponse{}, nil
}

// RegistrationStateQueryOptions are the options of NewRegistrationStateQueryPager.
type RegistrationStateQueryOptions struct {
	// PageSize is sent as x-ms-max-item-count; nil lets the service choose. Must be positive.
	PageSize *int32
	// ContinuationToken resumes a query where an earlier page left it.
	ContinuationToken *string
}

// RegistrationStateQueryResponse is one page of the registration records of a group.
type RegistrationStateQueryResponse struct {
	// RegistrationStates of this page.
	RegistrationStates []DeviceRegistrationState
	// ContinuationToken is the x-ms-continuation of the next page; nil on the last page.
	ContinuationToken *string
	// ItemType is the x-ms-item-type header ("DeviceRegistration").
	ItemType string
}

// NewRegistrationStateQueryPager returns a pager over the registration records of the
// devices of enrollment group enrollmentGroupID (POST /registrations/{id}/query with an
// empty body, following x-ms-continuation). opts may be nil.
func (c *Client) NewRegistrationStateQueryPager(enrollmentGroupID string, opts *RegistrationStateQueryOptions) *runtime.Pager[RegistrationStateQueryResponse] {
	var o RegistrationStateQueryOptions
	if opts != nil {
		o = *opts
	}
	const op = "QueryRegistrationStates"
	return newQueryPager(o.ContinuationToken,
		func(r RegistrationStateQueryResponse) *string { return r.ContinuationToken },
		func(ctx context.Context, token *string) (RegistrationStateQueryResponse, error) {
			p, err := escapeID(enrollmentGroupID)
			if err != nil {
				return RegistrationStateQueryResponse{}, fmt.Errorf("dps: %s: %w", op, err)
			}
			var page RegistrationStateQueryResponse
			next, itemType, err := c.queryPage(ctx, queryRequest{
				op: op, path: pathRegistrations + "/" + p + "/query", pageSize: o.PageSize, token: token,
			}, &page.RegistrationStates, func() int { return len(page.RegistrationStates) })
			if err != nil {
				return RegistrationStateQueryResponse{}, err
			}
			page.ContinuationToken, page.ItemType = next, itemType
			return page, nil
		})
}
