// Package emulator is a faithful emulator of Azure IoT Hub Device Provisioning Service
// (DPS): the service API, the device runtime API and an admin API on one http.Handler,
// usable in-process (tests, the zero-config worker) or standalone (`worker emulator`, see
// package cli). A client written against the real DPS works against it unchanged apart
// from the host name. The behaviour follows ../shared/DPS.md; where that page says
// "unconfirmed", the choice made here is listed below and commented in the code.
//
// # What it emulates
//
// Service API (SAS or configured bearer auth; every call needs a supported api-version:
// 2019-03-31, 2021-06-01, 2021-10-01, 2025-07-01-preview). A service SAS must name the
// service host name in "sr": Options.ServiceHostName, which Serve sets to its host:port
// (the connection string's HostName) plus the loopback aliases it prints; a request from
// loopback to a loopback Host may then also name that Host, so local port forwarders work
// (a host name given with --host-name is strict).
//   - GET / PUT / DELETE /enrollments/{id} and /enrollmentGroups/{id}. PUT creates with 200
//     (not 201), the etag in the body only (no ETag header) and symmetric keys echoed
//     (64-byte keys generated when none are sent). PUT on an existing id without If-Match is
//     409201 / 409202; with a matching If-Match (raw, quoted or "*") it replaces, keeping
//     createdDateTimeUtc; a stale one is 412002. DELETE is 204 without body, 404201 / 404204
//     when absent, 412002 on a stale If-Match.
//   - Bulk POST /enrollments and /enrollmentGroups: HTTP 200 with per-item errors, applied
//     item by item (not atomic); success body exactly {"errors":[],"isSuccessful":true}.
//   - POST …/{id}/attestationmechanism (the only place keys come back after the PUT),
//     POST …/query with x-ms-max-item-count, x-ms-continuation and x-ms-item-type,
//     GET / DELETE /registrations/{id}, POST /registrations/{groupId}/query.
//   - Response shapes seen live: GET and query hide symmetric keys
//     ({"type":"symmetricKey"}), TPM endorsement keys are returned, X.509 certificates are
//     never echoed but their info is computed (subject "CN=…, O=…" as .NET writes it,
//     upper-case hex thumbprints and serial number, validity in whole seconds, version);
//     GET of an enrollment carries registrationState ("unassigned" before any
//     registration); provisioningStatus sent as null comes back as null; timestamps have 7
//     fractional digits; Content-Type is "application/json; charset=utf-8".
//   - Errors: {"errorCode","trackingId","message","info":{},"timestampUtc"} plus the
//     x-ms-error-code header holding the same 6-digit code (see the Code constants).
//   - Ids: case-insensitive, at most 128 characters of alphanumerics and - . _ :, ending
//     with an alphanumeric or -. Paths match case-insensitively; ids may be URL-encoded.
//   - Malformed JSON and wrong types are 400 naming the JSON field
//     ("attestation.type: expected string, got number").
//
// Runtime API (device SAS or TLS client certificate):
//   - PUT /{idScope}/registrations/{id}/register → 202 {"operationId","status":"assigning"}
//     with Retry-After (Options.RuntimeRetryAfter, 3 s by default) and Location; GET
//     …/operations/{operationId} → 202 while assigning (Options.AssignmentDelay), then 200
//     with the registration state; POST /{idScope}/registrations/{id} → the current state.
//   - Device SAS: sr "{idScope}/registrations/{id}", skn "registration", signed with the
//     individual enrollment's primary or secondary key, or with the key derived from a
//     symmetric-key group: base64(HMAC-SHA256(base64dec(groupKey), id)). Every group is
//     tried, as the service does. X.509 devices present a client certificate whose CN is
//     the registration id: an individual enrollment matches by thumbprint, a group when the
//     certificate chains to its signing certificate (TLS must be on).
//   - Allocation: static → iotHubHostName, else the first of iotHubs or the linked hubs;
//     hashed and geoLatency (no latency to measure) → spread evenly over iotHubs, else the
//     linked hubs, by a hash of the registration id (stable per device); disabled
//     enrollment or group → status "disabled"; the service API then shows the state.
//
// Quotas (on by default, Options.Quotas; 0 turns one off): 1,000 service operations per
// minute (each call one operation, bulk included), 1,000 registrations per minute, 5 polls
// per device per 10 s, as sliding windows on Options.Clock. Over quota: 429 with
// Retry-After and codes 429001 / 429002 / 429003. Rejected and unauthenticated calls do
// not use quota.
//
// Faults (Options.Faults, SetFaults, PUT /admin/faults), reproducible from Options.Seed:
// 5xx before applying (per operation name or "*"), 5xx or a dropped connection after
// applying (the client cannot tell whether its write happened), dropped connections,
// latency with jitter, forced 429 windows and whole-request 400 for bulk (a rate or the
// next N calls).
//
// Admin (no DPS auth; Options.AdminToken as a bearer token when set): GET /admin/counters
// (calls per operation and status, bulk items per call, item error codes, 429s, accepted
// service operations per minute), GET / PUT / DELETE /admin/faults, POST /admin/reset,
// GET /admin/state (everything, keys included, for checkers).
//
// # Choices where DPS.md says "unconfirmed"
//
//   - PUT with If-Match on an absent id: 404201 / 404204.
//   - Bulk with more than 10 items, an empty list, an unknown mode or a duplicate id (case-
//     insensitive): the whole request is rejected with 400 and error code 400100.
//   - Bulk modes: create → 409201 per existing item; update → create when absent, replace
//     when the item's etag matches ("*" too), else 409201; updateIfMatchETag (also spelled
//     updateIfMatchEtag) → replace only on a matching etag (412002 otherwise), 404201 when
//     absent with an etag, create when absent without one; delete → needs only the id,
//     404201 when absent, 412002 on a stale etag. Invalid items fail alone with 400xxx.
//   - Other error codes: 400000 bad request, 400001 api-version, 400004 invalid id, 400010
//     invalid attestation, 400101 injected bulk rejection, 401002 for every auth failure
//     (the message says which), 404000 unknown route or ID scope, 404202 registration
//     state not found, 404203 operation not found, 405000, 413000, 503000 / 500000
//     injected.
//   - Bodies over 96 KB (Options.MaxBodyBytes) are 413 with code 413000.
//   - The default query page size is 100 (Options.DefaultPageSize), x-ms-max-item-count
//     is capped at 1000; results come in creation order. Only "SELECT *" (optionally
//     "FROM x") is accepted: other queries are 400 rather than silently unfiltered.
//   - A registration query of a group that does not exist returns an empty page.
//   - Re-registration substatus: first assignment initialAssignment; with
//     updateHubAssignment=false the device keeps its hub and gets
//     reprovisionedToInitialAssignment; with updateHubAssignment and migrateDeviceData
//     (the default) deviceDataMigrated; without migrateDeviceData deviceDataReset. An
//     absent policy or field takes the spec default, true; a partial policy is echoed as
//     sent.
//   - A register call whose SAS matches neither an individual enrollment nor any group is
//     404201 (the service's answer for an unknown registration id); a known individual
//     enrollment with a wrong key is 401002.
//   - Deleting an enrollment or group deletes its registration states too.
//   - provisioningStatus absent stays absent in responses (the runtime treats it as
//     enabled); ids keep the casing of the latest write.
//
// # Limits
//
//   - Bearer (Entra ID) tokens cannot be validated: only tokens listed in
//     Options.BearerTokens are accepted, compared verbatim.
//   - Custom allocation cannot call webhooks: registrations under it fail with 400209.
//   - TPM devices cannot register (no TPM nonce challenge); TPM enrollments are stored and
//     returned normally. X.509 CA references cannot be verified (no CA registry).
//   - Linked hubs are names only: no IoT hub is contacted, initial twins are not applied,
//     and iotHubs are not checked against the linked hubs.
//   - Operations of the runtime API live in memory; registration states persist.
//   - Persistence (Options.DataDir): a write reaches the operating system before it is
//     answered, so killing the process loses nothing; Close and every snapshot fsync, so a
//     clean stop survives a power cut too. See persist.go for the file layout.
//   - The HTTPS certificate is self-signed (Serve writes it to ServeOptions.CertFile). With
//     a data directory it and its key are kept there and reused by the next start, so a
//     trusted certificate stays trusted; a new one is made only when they are missing, the
//     kept one expires within a day or does not name the listen and service hosts. Only
//     HTTP/1.1 is served.
//
// # Performance
//
// BenchmarkBulkCreate measures bulk creates of 10 over loopback HTTP, client and server in
// one process on a 2-core machine: 54,000–60,000 items/s in memory and about 43,000 items/s
// with a data directory on a quiet machine; 29,000 and 25,000 while other test suites
// shared the cores (the issue asks for at least 20,000).
package emulator
