package emulator

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// DefaultPolicyName is the name of the shared access policy the emulator creates when
// Options.Policies is empty, the default policy name of a real DPS instance.
const DefaultPolicyName = "provisioningserviceowner"

// DefaultIDScope is the ID scope of the emulated instance when Options.IDScope is empty.
const DefaultIDScope = "0ne00000001"

// DefaultLinkedHubs returns the hub names linked to the emulated instance when
// Options.LinkedHubs is empty.
func DefaultLinkedHubs() []string {
	return []string{"hub-1.azure-devices.net", "hub-2.azure-devices.net"}
}

// Defaults of Options.
const (
	DefaultRuntimeRetryAfter = 3 * time.Second
	DefaultPageSize          = 100
	DefaultMaxPageSize       = 1000
	// DefaultMaxBodyBytes is the DPS message size limit (96 KB).
	DefaultMaxBodyBytes = 96 * 1024
)

// Policy is a shared access policy of the emulated instance: a name and a base64 key.
type Policy struct {
	Name string
	// Key is base64 (as in a connection string). It is a secret.
	Key string
}

// Quotas are the throttling limits of the emulated instance. A zero field turns that
// limit off.
type Quotas struct {
	// ServiceOpsPerMinute limits service API calls (each call is one operation, a bulk
	// call of 10 items included) in any sliding minute.
	ServiceOpsPerMinute int
	// RegistrationsPerMinute limits device register calls in any sliding minute.
	RegistrationsPerMinute int
	// PollsPer10s limits operation status polls per device in any sliding 10 seconds.
	PollsPer10s int
}

// DefaultQuotas returns the quotas of a real DPS instance (Microsoft docs, 2024).
func DefaultQuotas() Quotas {
	return Quotas{ServiceOpsPerMinute: 1000, RegistrationsPerMinute: 1000, PollsPer10s: 5}
}

// Options configure an Emulator. The zero value is valid: an in-memory instance with
// default policy, ID scope, linked hubs and quotas.
type Options struct {
	// ServiceHostName is the host name (with port, if any) service SAS tokens must name in
	// "sr", as a real instance requires its own host name (DPS.md, Authentication). Serve
	// sets it, when empty, to the host:port it listens on and names in the connection
	// string. Empty with New: the Host header of each request, lower-cased (a handler
	// mounted under an unknown name). When Serve chose the name, a request from loopback
	// to a loopback Host may also name that Host (a local port forwarder, such as a test's
	// fault proxy); a name given here is strict.
	ServiceHostName string
	// ServiceHostAliases are other host names (with port) accepted in "sr", e.g. the
	// loopback aliases of a local listener ("localhost:8443" next to "127.0.0.1:8443").
	// Serve adds the loopback aliases of its listener when it chooses ServiceHostName.
	ServiceHostAliases []string
	// IDScope is the ID scope of the runtime API. Empty: DefaultIDScope.
	IDScope string
	// Policies are the shared access policies accepted for the service API. Empty: one
	// policy DefaultPolicyName with a random 32-byte key (see (*Emulator).Policies).
	Policies []Policy
	// BearerTokens are accepted verbatim as "Authorization: Bearer <token>" on the service
	// API. The emulator cannot validate Entra ID tokens: only the tokens listed here pass,
	// and no bearer token passes when the list is empty.
	BearerTokens []string
	// LinkedHubs are the IoT hubs linked to the instance. Empty: DefaultLinkedHubs().
	LinkedHubs []string
	// Quotas are the throttling limits. Nil: DefaultQuotas(). &Quotas{} turns them all off.
	Quotas *Quotas
	// DataDir persists state across restarts when set; empty keeps state in memory only.
	DataDir string
	// Clock returns the current time. Nil: time.Now. Quotas, token expiry, timestamps,
	// assignment delays and throttle windows all read it.
	Clock func() time.Time
	// Seed makes fault decisions reproducible: the same seed and the same sequence of
	// calls give the same faults.
	Seed uint64
	// Faults are injected from the start; change them later with SetFaults or the admin
	// endpoint.
	Faults Faults
	// RuntimeRetryAfter is the Retry-After the runtime API answers register and
	// not-yet-assigned polls with, rounded up to whole seconds. 0: DefaultRuntimeRetryAfter
	// (3 s, as seen live); negative: "Retry-After: 0".
	RuntimeRetryAfter time.Duration
	// AssignmentDelay is how long a registration stays "assigning" before polls report the
	// outcome. 0 (the default): the first poll reports it.
	AssignmentDelay time.Duration
	// DefaultPageSize is the query page size when a request names none. 0: DefaultPageSize.
	DefaultPageSize int
	// MaxPageSize caps x-ms-max-item-count (larger requests are clamped). 0: DefaultMaxPageSize.
	MaxPageSize int
	// MaxBodyBytes is the request body limit; larger bodies get 413. 0: DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// AdminToken, when set, is required on /admin/ endpoints as "Authorization: Bearer <token>".
	AdminToken string
	// Logger receives diagnostics (never secrets). Nil: discard.
	Logger *slog.Logger

	// loopbackForwarders is set by Serve when it chose ServiceHostName (see there).
	loopbackForwarders bool
}

// withDefaults validates o and returns a copy with defaults filled in.
func (o Options) withDefaults() (Options, error) {
	if o.IDScope == "" {
		o.IDScope = DefaultIDScope
	}
	if strings.ContainsAny(o.IDScope, "/?#% ") {
		return o, fmt.Errorf("emulator: ID scope %q contains a reserved character", o.IDScope)
	}
	o.ServiceHostName = strings.ToLower(o.ServiceHostName)
	aliases := make([]string, 0, len(o.ServiceHostAliases))
	for _, a := range o.ServiceHostAliases {
		if a == "" || strings.ContainsAny(a, "/ ") {
			return o, fmt.Errorf("emulator: service host alias %q is not a host name", a)
		}
		aliases = append(aliases, strings.ToLower(a))
	}
	if len(aliases) > 0 && o.ServiceHostName == "" {
		return o, errors.New("emulator: service host aliases need a ServiceHostName")
	}
	o.ServiceHostAliases = aliases
	if len(o.Policies) == 0 {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return o, fmt.Errorf("emulator: generate policy key: %w", err)
		}
		o.Policies = []Policy{{Name: DefaultPolicyName, Key: base64.StdEncoding.EncodeToString(key)}}
	} else {
		o.Policies = append([]Policy(nil), o.Policies...)
	}
	seen := map[string]bool{}
	for _, p := range o.Policies {
		if p.Name == "" {
			return o, errors.New("emulator: policy name is empty")
		}
		if seen[strings.ToLower(p.Name)] {
			return o, fmt.Errorf("emulator: policy %q is listed twice", p.Name)
		}
		seen[strings.ToLower(p.Name)] = true
		k, err := base64.StdEncoding.DecodeString(p.Key)
		if err != nil || len(k) == 0 {
			return o, fmt.Errorf("emulator: key of policy %q is not valid base64", p.Name)
		}
	}
	for _, t := range o.BearerTokens {
		if t == "" {
			return o, errors.New("emulator: empty bearer token")
		}
	}
	if len(o.LinkedHubs) == 0 {
		o.LinkedHubs = DefaultLinkedHubs()
	} else {
		o.LinkedHubs = append([]string(nil), o.LinkedHubs...)
	}
	for _, h := range o.LinkedHubs {
		if h == "" || strings.ContainsAny(h, "/ ") {
			return o, fmt.Errorf("emulator: linked hub %q is not a host name", h)
		}
	}
	if o.Quotas == nil {
		q := DefaultQuotas()
		o.Quotas = &q
	} else {
		q := *o.Quotas
		o.Quotas = &q
	}
	if o.Quotas.ServiceOpsPerMinute < 0 || o.Quotas.RegistrationsPerMinute < 0 || o.Quotas.PollsPer10s < 0 {
		return o, errors.New("emulator: quotas must not be negative")
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	switch {
	case o.RuntimeRetryAfter == 0:
		o.RuntimeRetryAfter = DefaultRuntimeRetryAfter
	case o.RuntimeRetryAfter < 0:
		o.RuntimeRetryAfter = 0
	}
	if o.AssignmentDelay < 0 {
		return o, errors.New("emulator: negative assignment delay")
	}
	if o.MaxPageSize == 0 {
		o.MaxPageSize = DefaultMaxPageSize
	}
	if o.DefaultPageSize == 0 {
		o.DefaultPageSize = min(DefaultPageSize, o.MaxPageSize)
	}
	if o.MaxPageSize < 0 || o.DefaultPageSize < 0 || o.DefaultPageSize > o.MaxPageSize {
		return o, errors.New("emulator: page sizes must be positive, default ≤ max")
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxBodyBytes < 0 {
		return o, errors.New("emulator: negative body limit")
	}
	if err := o.Faults.validate(); err != nil {
		return o, fmt.Errorf("emulator: faults: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Logger = o.Logger.With("component", "emulator")
	return o, nil
}
