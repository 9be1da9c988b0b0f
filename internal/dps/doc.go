// Package dps is a client of the Azure IoT Hub Device Provisioning Service (DPS) data plane,
// api-version 2021-10-01: the service API (individual enrollments, enrollment groups,
// registration states) and the device runtime API (registration).
//
// It is built on azcore the way the Azure SDK for Go builds its data-plane clients
// (aztables, azsecrets): a concrete *Client made by NewClient (Entra ID),
// NewClientWithSharedKey or NewClientFromConnectionString; ClientOptions embedding
// azcore.ClientOptions (nil means defaults); one <Op>Options and one <Op>Response per method;
// queries as *runtime.Pager.
//
// # Authentication
//
// A SharedAccessKeyCredential signs a fresh SAS token for every try of every request (a
// per-retry pipeline policy), so retries never carry an expired token:
//
//	SharedAccessSignature sr=<urlenc(lower-cased host)>&sig=<…>&se=<unix seconds>&skn=<policy>
//
// An azcore.TokenCredential (azidentity) gets tokens for Scope. Both refuse to send a
// credential over plain http unless ClientOptions.InsecureAllowCredentialWithHTTP is set.
// Keys, signatures, tokens and connection strings never appear in errors, logs or spans;
// the credential's String method redacts its key.
//
// # Errors
//
// A non-2xx answer is a *ServiceError: its message is one line ("dps: GetEnrollment: 404 Not
// Found, error code 404201: Enrollment not found. (tracking id …)"), Details holds the DPS
// error body, and it unwraps to the *azcore.ResponseError whose ErrorCode is the 6-digit DPS
// code (read from the body's errorCode, where DPS puts it, else from x-ms-error-code).
// Classify with IsNotFound, IsConflict, IsPreconditionFailed, IsTransient, StatusCode and
// ErrorCode. Bulk calls answer 200 even when items fail: the per-item failures are in the
// response's Errors. Invalid bulk requests (0 or more than MaxBulkItems items, duplicate ids
// compared case-insensitively, missing ids, unknown mode) are refused before anything is
// sent with a *BulkValidationError naming the rule.
//
// # Retries
//
// azcore's retry policy retries every method, POST included, on RetryStatusCodes (408, 429,
// 500, 502, 503, 504) and on transport errors, never on other 4xx. It honours Retry-After
// (and retry-after-ms); azcore gives up when Retry-After exceeds MaxRetryDelay, which the
// client therefore raises to DefaultMaxRetryDelay. Without Retry-After it backs off
// exponentially with jitter from DefaultRetryDelay. A retried bulk call whose first try was
// applied but whose answer was lost reports 409201 for the items it created.
//
// # Telemetry
//
// Every operation, and every page of a pager, is one OpenTelemetry client span named
// "dps.<Method>" with attributes dps.operation, http.response.status_code, dps.error_code,
// dps.item_count, dps.failed_item_count and dps.bulk_mode, from ClientOptions.TracerProvider
// (default otel.GetTracerProvider()). ClientOptions.Logger receives one debug record per
// operation.
//
// # Devices
//
// DeviceClient.Register registers a device as the device itself would: with a symmetric key
// (individual, or derived from a group key with DeriveDeviceKey) signing a device SAS
// (sr "{idScope}/registrations/{registrationId}", skn "registration"), or with an X.509
// certificate presented by the transport's TLS configuration. It polls the operation every
// Retry-After (DefaultPollInterval when absent) until it is assigned, failed or disabled.
//
// # Testing against an emulator
//
// Point the client at https://127.0.0.1:port with a connection string whose HostName
// includes the port (the SAS "sr" is then "127.0.0.1%3A<port>"), and give
// ClientOptions.Transport an *http.Client whose TLS config trusts the emulator's CA.
package dps
