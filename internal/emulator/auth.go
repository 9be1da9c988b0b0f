package emulator

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// sasToken is a parsed "SharedAccessSignature sr=…&sig=…&se=…&skn=…" value. Fields may come
// in any order. srRaw keeps sr as sent (URL-encoded): it is what the client signed.
type sasToken struct {
	srRaw string
	sr    string // decoded
	sig   []byte
	se    string
	exp   int64
	skn   string
}

// parseSAS parses an Authorization header value. Its error message never holds the token.
func parseSAS(h string) (*sasToken, *apiError) {
	const prefix = "sharedaccesssignature "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return nil, newErr(CodeUnauthorized, "The Authorization header is not a SharedAccessSignature.")
	}
	t := &sasToken{}
	var sig string
	for _, kv := range strings.Split(strings.TrimSpace(h[len(prefix):]), "&") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, newErr(CodeUnauthorized, "The SharedAccessSignature is malformed.")
		}
		switch strings.ToLower(k) {
		case "sr":
			t.srRaw = v
		case "sig":
			sig = v
		case "se":
			t.se = v
		case "skn":
			t.skn = v
		}
	}
	if t.srRaw == "" || sig == "" || t.se == "" {
		return nil, newErr(CodeUnauthorized, "The SharedAccessSignature lacks sr, sig or se.")
	}
	var err error
	if t.sr, err = url.QueryUnescape(t.srRaw); err != nil {
		return nil, newErr(CodeUnauthorized, "The SharedAccessSignature's sr is not validly escaped.")
	}
	if t.skn, err = url.QueryUnescape(t.skn); err != nil {
		return nil, newErr(CodeUnauthorized, "The SharedAccessSignature's skn is not validly escaped.")
	}
	if sig, err = url.QueryUnescape(sig); err != nil {
		return nil, newErr(CodeUnauthorized, "The SharedAccessSignature's sig is not validly escaped.")
	}
	if t.sig, err = base64.StdEncoding.DecodeString(sig); err != nil {
		return nil, newErr(CodeUnauthorized, "The SharedAccessSignature's sig is not base64.")
	}
	if t.exp, err = strconv.ParseInt(t.se, 10, 64); err != nil {
		return nil, newErr(CodeUnauthorized, "The SharedAccessSignature's se is not a number.")
	}
	return t, nil
}

func (t *sasToken) expired(now time.Time) bool { return t.exp <= now.Unix() }

// verify reports whether the token is signed with key. The signature covers sr as the
// client encoded it; encoders differ (%2F or %2f, encoded or not), so the canonical
// encodings of the decoded sr are tried too.
func (t *sasToken) verify(key []byte) bool {
	try := func(sr string) bool {
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(sr))
		mac.Write([]byte{'\n'})
		mac.Write([]byte(t.se))
		return hmac.Equal(mac.Sum(nil), t.sig)
	}
	if try(t.srRaw) {
		return true
	}
	alt := url.QueryEscape(t.sr)
	if alt != t.srRaw && try(alt) {
		return true
	}
	if low := lowerHexEscapes(alt); low != alt && low != t.srRaw && try(low) {
		return true
	}
	return t.sr != t.srRaw && t.sr != alt && try(t.sr)
}

// lowerHexEscapes writes the hex digits of %XX escapes in lower case.
func lowerHexEscapes(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1] = lowerHex(b[i+1])
			b[i+2] = lowerHex(b[i+2])
		}
	}
	return string(b)
}

func lowerHex(c byte) byte {
	if c >= 'A' && c <= 'F' {
		return c + 'a' - 'A'
	}
	return c
}

// authService checks the credentials of a service API call: a SAS signed with one of the
// policies for this host, or a configured bearer token.
func (em *Emulator) authService(r *http.Request) *apiError {
	h := r.Header.Get("Authorization")
	if h == "" {
		return newErr(CodeUnauthorized, "The Authorization header is missing.")
	}
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		tok := strings.TrimSpace(h[7:])
		if len(em.opts.BearerTokens) == 0 {
			return newErr(CodeUnauthorized, "Bearer tokens are not accepted: the emulator cannot validate Entra ID tokens and has none configured.")
		}
		for _, want := range em.opts.BearerTokens {
			if subtle.ConstantTimeCompare([]byte(tok), []byte(want)) == 1 {
				return nil
			}
		}
		return newErr(CodeUnauthorized, "The bearer token is not accepted.")
	}
	t, e := parseSAS(h)
	if e != nil {
		return e
	}
	if !em.namesService(strings.ToLower(t.sr), r) {
		return newErr(CodeUnauthorized, "The SharedAccessSignature's sr does not name this service.")
	}
	if t.expired(em.now()) {
		return newErr(CodeUnauthorized, "The SharedAccessSignature has expired.")
	}
	for _, p := range em.policies {
		if strings.EqualFold(p.name, t.skn) {
			if t.verify(p.key) {
				return nil
			}
			return newErr(CodeUnauthorized, "The SharedAccessSignature's signature is not valid.")
		}
	}
	return newErr(CodeUnauthorized, "The SharedAccessSignature names an unknown policy.")
}

// namesService reports whether a (lower-cased) SAS resource names this service: its host
// name or one of its aliases, alone or followed by a path. Without a configured host name
// the request's Host header stands in.
//
// When Serve chose the host name, one exception keeps local port forwarders working (test
// proxies and taps that serve this emulator on another 127.0.0.1 port; a client signs the
// host:port it connects to): a request sent from loopback to a loopback Host may name that
// Host. A name that is not loopback, or a Host the client did not address, is still
// refused.
func (em *Emulator) namesService(sr string, r *http.Request) bool {
	is := func(host string) bool { return sr == host || strings.HasPrefix(sr, host+"/") }
	reqHost := strings.ToLower(r.Host)
	if em.opts.ServiceHostName == "" {
		return is(reqHost)
	}
	if is(em.opts.ServiceHostName) {
		return true
	}
	for _, a := range em.opts.ServiceHostAliases {
		if is(a) {
			return true
		}
	}
	return em.opts.loopbackForwarders && is(reqHost) && isLoopbackHost(reqHost) && isLoopbackHost(r.RemoteAddr)
}

// isLoopbackHost reports whether hostPort (host or host:port) is localhost or a loopback
// address.
func isLoopbackHost(hostPort string) bool {
	h, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		h = strings.Trim(hostPort, "[]")
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
