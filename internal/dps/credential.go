package dps

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// DefaultTokenLifetime is the lifetime of the SAS tokens a SharedAccessKeyCredential signs
// when SharedAccessKeyCredentialOptions.TokenLifetime is zero (1 h, as the official SDKs).
const DefaultTokenLifetime = time.Hour

// DefaultKeyName is the shared access policy name DPS creates with every instance.
const DefaultKeyName = "provisioningserviceowner"

// Errors of credentials and connection strings. They never hold the key or the string.
var (
	// ErrConnectionString is wrapped by every error of ParseConnectionString.
	ErrConnectionString = errors.New("invalid DPS connection string")
	// ErrInvalidKey says a shared access key or device key is not valid base64.
	ErrInvalidKey = errors.New("key is not valid base64")
)

// SharedAccessKeyCredential signs requests to the DPS service API with a shared access
// policy key (a SAS token in the Authorization header). A fresh token is signed for every
// try of a request, so retries never send an expired token. It is safe for concurrent use;
// SetKey rotates the key. Its String and GoString methods never reveal the key.
type SharedAccessKeyCredential struct {
	keyName  string
	key      atomic.Pointer[[]byte]
	lifetime time.Duration
}

// SharedAccessKeyCredentialOptions configure a SharedAccessKeyCredential.
type SharedAccessKeyCredentialOptions struct {
	// TokenLifetime is how long each signed token is valid (its "se" is now + TokenLifetime).
	// Zero means DefaultTokenLifetime; negative is an error.
	TokenLifetime time.Duration
}

// NewSharedAccessKeyCredential returns a credential for the shared access policy keyName
// with key, the base64 policy key from the Azure portal. opts may be nil.
func NewSharedAccessKeyCredential(keyName, key string, opts *SharedAccessKeyCredentialOptions) (*SharedAccessKeyCredential, error) {
	if keyName == "" {
		return nil, errors.New("dps: shared access key name is empty")
	}
	lifetime := DefaultTokenLifetime
	if opts != nil && opts.TokenLifetime != 0 {
		if opts.TokenLifetime < 0 {
			return nil, fmt.Errorf("dps: token lifetime %s is negative", opts.TokenLifetime)
		}
		lifetime = opts.TokenLifetime
	}
	c := &SharedAccessKeyCredential{keyName: keyName, lifetime: lifetime}
	if err := c.SetKey(key); err != nil {
		return nil, err
	}
	return c, nil
}

// SetKey replaces the key used for requests signed from now on (key rotation).
func (c *SharedAccessKeyCredential) SetKey(key string) error {
	b, err := decodeKey(key)
	if err != nil {
		return fmt.Errorf("dps: shared access key: %w", err)
	}
	c.key.Store(&b)
	return nil
}

// KeyName returns the shared access policy name.
func (c *SharedAccessKeyCredential) KeyName() string { return c.keyName }

// TokenLifetime returns the lifetime of the tokens the credential signs.
func (c *SharedAccessKeyCredential) TokenLifetime() time.Duration { return c.lifetime }

// String describes the credential without its key.
func (c *SharedAccessKeyCredential) String() string {
	return "SharedAccessKeyCredential{KeyName: " + strconv.Quote(c.keyName) + ", Key: REDACTED}"
}

// GoString describes the credential for %#v without its key.
func (c *SharedAccessKeyCredential) GoString() string { return "&dps." + c.String() }

// Token returns a SAS token for host (the DPS host name, e.g. "x.azure-devices-provisioning.net"
// or "127.0.0.1:8443"), valid until now + the credential's lifetime. host is lower-cased.
func (c *SharedAccessKeyCredential) Token(host string, now time.Time) string {
	return BuildSASToken(strings.ToLower(host), c.keyName, *c.key.Load(), now.Add(c.lifetime))
}

// ParseConnectionString parses a DPS service connection string
// "HostName=<host>;SharedAccessKeyName=<policy>;SharedAccessKey=<base64 key>" (keys match
// case-insensitively, order does not matter, empty segments are ignored) and returns the
// endpoint "https://<host>" and a credential for the key. Errors wrap ErrConnectionString and
// never quote the string.
func ParseConnectionString(connStr string, opts *SharedAccessKeyCredentialOptions) (endpoint string, cred *SharedAccessKeyCredential, err error) {
	var host, keyName, key string
	var haveHost, haveName, haveKey bool
	for _, seg := range strings.Split(connStr, ";") {
		seg = strings.TrimSpace(seg)
		if seg == "" {
			continue
		}
		name, value, ok := strings.Cut(seg, "=")
		if !ok {
			return "", nil, fmt.Errorf("dps: %w: a segment has no '='", ErrConnectionString)
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "hostname":
			host, haveHost = strings.TrimSpace(value), true
		case "sharedaccesskeyname":
			keyName, haveName = strings.TrimSpace(value), true
		case "sharedaccesskey":
			key, haveKey = strings.TrimSpace(value), true
		default:
			// Other settings (e.g. DeviceId of IoT Hub strings) are not part of a DPS
			// connection string. The name is quoted only when it looks like a setting name:
			// a pasted key (base64, maybe ending in '=') must not end up in the message.
			if n := strings.TrimSpace(name); isSettingName(n) {
				return "", nil, fmt.Errorf("dps: %w: unknown setting %q", ErrConnectionString, n)
			}
			return "", nil, fmt.Errorf("dps: %w: a segment is not a known Name=value setting", ErrConnectionString)
		}
	}
	switch {
	case !haveHost || host == "":
		return "", nil, fmt.Errorf("dps: %w: HostName is missing", ErrConnectionString)
	case !haveName || keyName == "":
		return "", nil, fmt.Errorf("dps: %w: SharedAccessKeyName is missing", ErrConnectionString)
	case !haveKey || key == "":
		return "", nil, fmt.Errorf("dps: %w: SharedAccessKey is missing", ErrConnectionString)
	}
	if strings.Contains(host, "://") || strings.ContainsAny(host, "/?#@ ") {
		return "", nil, fmt.Errorf("dps: %w: HostName must be a host name with an optional port, without scheme or path", ErrConnectionString)
	}
	if _, err := url.Parse("https://" + host); err != nil {
		return "", nil, fmt.Errorf("dps: %w: HostName is not a valid host", ErrConnectionString)
	}
	cred, err = NewSharedAccessKeyCredential(keyName, key, opts)
	if err != nil {
		if errors.Is(err, ErrInvalidKey) {
			return "", nil, fmt.Errorf("dps: %w: SharedAccessKey is not valid base64", ErrConnectionString)
		}
		return "", nil, fmt.Errorf("dps: %w: %w", ErrConnectionString, err)
	}
	return "https://" + host, cred, nil
}

// isSettingName reports whether s looks like a connection string setting name (a few ASCII
// letters), as opposed to, say, a key.
func isSettingName(s string) bool {
	if s == "" || len(s) > 24 {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') {
			return false
		}
	}
	return true
}

// BuildSASToken returns the Authorization header value DPS expects for resourceURI, signed
// with key (the raw, base64-decoded key) and valid until expiry:
//
//	SharedAccessSignature sr=<urlenc(resourceURI)>&sig=<urlenc(b64(HMAC-SHA256(key, urlenc(resourceURI)+"\n"+se)))>&se=<unix seconds>&skn=<keyName>
//
// resourceURI is used as given: the service API expects the lower-cased host name
// (SharedAccessKeyCredential lower-cases it), the runtime API "{idScope}/registrations/{registrationId}"
// with keyName "registration". It is a pure function of its inputs.
func BuildSASToken(resourceURI, keyName string, key []byte, expiry time.Time) string {
	sr := url.QueryEscape(resourceURI)
	se := strconv.FormatInt(expiry.Unix(), 10)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(sr + "\n" + se))
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(sig) + "&se=" + se + "&skn=" + url.QueryEscape(keyName)
}

// DeviceRegistrationResource returns the SAS resource of a device registration,
// "{idScope}/registrations/{registrationID}".
func DeviceRegistrationResource(idScope, registrationID string) string {
	return idScope + "/registrations/" + registrationID
}

// DeviceKeyName is the "skn" of device SAS tokens.
const DeviceKeyName = "registration"

// BuildDeviceSASToken returns the SAS token a device presents to the runtime API: resource
// DeviceRegistrationResource(idScope, registrationID), key name "registration", signed with
// deviceKey (base64, an individual enrollment key or a key from DeriveDeviceKey).
func BuildDeviceSASToken(idScope, registrationID, deviceKey string, expiry time.Time) (string, error) {
	k, err := decodeKey(deviceKey)
	if err != nil {
		return "", fmt.Errorf("dps: device key: %w", err)
	}
	return BuildSASToken(DeviceRegistrationResource(idScope, registrationID), DeviceKeyName, k, expiry), nil
}

// DeriveDeviceKey returns the device key of registrationID in a symmetric-key enrollment group
// whose key is groupKey: base64(HMAC-SHA256(base64dec(groupKey), registrationID)).
func DeriveDeviceKey(groupKey, registrationID string) (string, error) {
	k, err := decodeKey(groupKey)
	if err != nil {
		return "", fmt.Errorf("dps: group key: %w", err)
	}
	mac := hmac.New(sha256.New, k)
	mac.Write([]byte(registrationID))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil)), nil
}

// decodeKey decodes a base64 key. Its error never holds the key or the position of a bad byte.
func decodeKey(key string) ([]byte, error) {
	if key == "" {
		return nil, errors.New("key is empty")
	}
	b, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return nil, ErrInvalidKey
	}
	if len(b) == 0 {
		return nil, errors.New("key is empty")
	}
	return b, nil
}

// sasPolicy is a per-retry policy that signs every try with a fresh token.
type sasPolicy struct {
	cred          *SharedAccessKeyCredential
	allowInsecure bool
}

// Do implements policy.Policy.
func (p *sasPolicy) Do(req *policy.Request) (*http.Response, error) {
	u := req.Raw().URL
	if u.Scheme != "https" && !p.allowInsecure {
		return nil, nonRetriableError{errors.New("dps: refusing to send a shared access signature over " + u.Scheme + "; use https or set InsecureAllowCredentialWithHTTP")}
	}
	req.Raw().Header.Set("Authorization", p.cred.Token(u.Host, time.Now()))
	return req.Next()
}
