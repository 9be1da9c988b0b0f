package harness

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dpsync/dpsync/internal/dps"
)

// DPSClient reads a DPS instance for the checker and drives the emulator's admin endpoints.
// It signs its own SAS tokens and speaks HTTP directly, so the checker does not depend on the
// worker's client code it is checking.
type DPSClient struct {
	base    string // https://host[:port]
	host    string
	keyName string
	key     []byte
	http    *http.Client
}

// NewDPSClient parses a service connection string (HostName=…;SharedAccessKeyName=…;
// SharedAccessKey=…) and trusts caFile in addition to the system roots ("" = system only).
// scheme is "https" (or "http" for a plain-HTTP emulator).
func NewDPSClient(connStr, caFile, scheme string) (*DPSClient, error) {
	fields := map[string]string{}
	for _, part := range strings.Split(connStr, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			fields[k] = v
		}
	}
	host, keyName, keyB64 := fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"]
	if host == "" || keyName == "" || keyB64 == "" {
		return nil, errors.New("dps connection string: HostName, SharedAccessKeyName and SharedAccessKey are required")
	}
	key, err := base64.StdEncoding.DecodeString(keyB64)
	if err != nil {
		return nil, errors.New("dps connection string: SharedAccessKey is not base64") // no value in the error
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("dps ca: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("dps ca %s: no certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if scheme == "" {
		scheme = "https"
	}
	return &DPSClient{
		base: scheme + "://" + host, host: host, keyName: keyName, key: key,
		http: &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}, nil
}

// sas returns a SharedAccessSignature header value valid for an hour (DPS.md).
func (c *DPSClient) sas() string {
	sr := url.QueryEscape(strings.ToLower(c.host))
	se := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	mac := hmac.New(sha256.New, c.key)
	mac.Write([]byte(sr + "\n" + se))
	sig := url.QueryEscape(base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	return fmt.Sprintf("SharedAccessSignature sr=%s&sig=%s&se=%s&skn=%s", sr, sig, se, c.keyName)
}

// QueryEnrollments returns every individual enrollment, following x-ms-continuation.
func (c *DPSClient) QueryEnrollments(ctx context.Context) ([]dps.IndividualEnrollment, error) {
	var all []dps.IndividualEnrollment
	cont := ""
	for page := 0; ; page++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/enrollments/query?api-version=2021-10-01",
			strings.NewReader(`{"query":"SELECT *"}`))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", c.sas())
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("x-ms-max-item-count", "1000")
		if cont != "" {
			req.Header.Set("x-ms-continuation", cont)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			return nil, fmt.Errorf("query enrollments page %d: %w", page, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("query enrollments page %d: %w", page, err)
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("query enrollments page %d: status %d: %s", page, resp.StatusCode, firstLines(string(body), 3))
		}
		var items []dps.IndividualEnrollment
		if err := json.Unmarshal(body, &items); err != nil {
			return nil, fmt.Errorf("query enrollments page %d: %w", page, err)
		}
		all = append(all, items...)
		if cont = resp.Header.Get("x-ms-continuation"); cont == "" {
			return all, nil
		}
	}
}

// Admin calls the emulator's admin API: method on /admin/<path> with an optional JSON body,
// decoding a JSON answer into out (if not nil).
func (c *DPSClient) Admin(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/admin/"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s /admin/%s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s /admin/%s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s /admin/%s: status %d: %s", method, path, resp.StatusCode, firstLines(string(b), 3))
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s /admin/%s: %w", method, path, err)
		}
	}
	return nil
}

// WithHost returns the connection string with HostName replaced by host (host:port), to
// send a worker through a proxy. The key is kept as is.
func WithHost(connStr, host string) string {
	parts := strings.Split(connStr, ";")
	for i, p := range parts {
		if k, _, ok := strings.Cut(strings.TrimSpace(p), "="); ok && k == "HostName" {
			parts[i] = "HostName=" + host
		}
	}
	return strings.Join(parts, ";")
}

// HostOf returns the HostName of a connection string.
func HostOf(connStr string) string {
	for _, p := range strings.Split(connStr, ";") {
		if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && k == "HostName" {
			return v
		}
	}
	return ""
}

// KeyOf returns the SharedAccessKey of a connection string (for the secret scan).
func KeyOf(connStr string) string {
	for _, p := range strings.Split(connStr, ";") {
		if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && k == "SharedAccessKey" {
			return v
		}
	}
	return ""
}
