package dps

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func mustDecode(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reply is one scripted answer of the fake service.
type reply struct {
	status int
	header map[string]string
	body   string
}

// recorded is one request the fake service saw.
type recorded struct {
	Method string
	Path   string // escaped, as sent
	Query  url.Values
	Header http.Header
	Body   []byte
	Host   string
}

// fake is a scripted DPS: it answers replies in order (the last one repeats) and records
// every request.
type fake struct {
	mu      sync.Mutex
	reqs    []recorded
	replies []reply
	// route, when set, answers instead of replies.
	route func(r *http.Request, body []byte) reply
}

func (f *fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.Query(), Header: r.Header.Clone(), Body: body, Host: r.Host})
	var rep reply
	switch {
	case f.route != nil:
		f.mu.Unlock()
		rep = f.route(r, body)
		f.mu.Lock()
	case len(f.replies) == 0:
		rep = reply{status: http.StatusInternalServerError, body: `{"errorCode":500000,"message":"no scripted reply"}`}
	default:
		rep = f.replies[0]
		if len(f.replies) > 1 {
			f.replies = f.replies[1:]
		}
	}
	f.mu.Unlock()
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	if rep.body != "" && w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
	}
	w.WriteHeader(rep.status)
	_, _ = io.WriteString(w, rep.body)
}

func (f *fake) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

// newTLSClient starts an HTTPS httptest server for f and returns a shared-key client of it
// that trusts the server's certificate (as a client of the emulator would).
func newTLSClient(t *testing.T, f http.Handler, opts *ClientOptions) (*Client, *httptest.Server) {
	t.Helper()
	srv := newTLSServer(t, f)
	u, _ := url.Parse(srv.URL)
	connStr := "HostName=" + u.Host + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + testKey
	var o ClientOptions
	if opts != nil {
		o = *opts
	}
	o.Transport = srv.Client()
	if o.Retry.RetryDelay == 0 {
		o.Retry.RetryDelay = time.Millisecond
	}
	c, err := NewClientFromConnectionString(connStr, &o)
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

// newTLSServer starts an HTTPS httptest server closed at the end of the test.
func newTLSServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func timeNowPlusHour() time.Time { return time.Now().Add(time.Hour) }

// handlerTransport serves requests in-process: no sockets, so it works inside a
// testing/synctest bubble.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) Do(req *http.Request) (*http.Response, error) {
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	rec := httptest.NewRecorder()
	sreq := req.Clone(req.Context())
	sreq.RequestURI = req.URL.RequestURI()
	sreq.Host = req.URL.Host
	sreq.Body = http.NoBody
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		sreq.Body = io.NopCloser(bytes.NewReader(b))
	}
	t.h.ServeHTTP(rec, sreq)
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

var _ policy.Transporter = handlerTransport{}

// newInProcessClient returns a shared-key client of https://dps.test served in-process by h.
func newInProcessClient(t *testing.T, h http.Handler, opts *ClientOptions) *Client {
	t.Helper()
	var o ClientOptions
	if opts != nil {
		o = *opts
	}
	o.Transport = handlerTransport{h}
	cred, err := NewSharedAccessKeyCredential("provisioningserviceowner", testKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClientWithSharedKey("https://dps.test", cred, &o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// verifySAS checks header is a valid SAS token for resource and keyName signed with key
// (base64), re-implementing the signature independently of BuildSASToken, and returns its
// expiry.
func verifySAS(t *testing.T, header, resource, keyName, key string) time.Time {
	t.Helper()
	const prefix = "SharedAccessSignature "
	if !strings.HasPrefix(header, prefix) {
		t.Fatalf("Authorization %q: want prefix %q", header, prefix)
	}
	fields := map[string]string{}
	for _, kv := range strings.Split(strings.TrimPrefix(header, prefix), "&") {
		k, v, _ := strings.Cut(kv, "=")
		fields[k] = v
	}
	if got, want := fields["sr"], url.QueryEscape(resource); got != want {
		t.Errorf("sr: got %q, want %q", got, want)
	}
	if fields["skn"] != keyName {
		t.Errorf("skn: got %q, want %q", fields["skn"], keyName)
	}
	se, err := strconv.ParseInt(fields["se"], 10, 64)
	if err != nil {
		t.Fatalf("se %q: %v", fields["se"], err)
	}
	mac := hmac.New(sha256.New, mustDecode(t, key))
	mac.Write([]byte(fields["sr"] + "\n" + fields["se"]))
	sig, err := url.QueryUnescape(fields["sig"])
	if err != nil {
		t.Fatalf("sig: %v", err)
	}
	if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); sig != want {
		t.Errorf("sig: got %q, want %q", sig, want)
	}
	return time.Unix(se, 0)
}

// readExample returns the named example of the REST spec (copied from
// spec/dps-2021-10-01/examples into testdata/examples).
func readExample(t testing.TB, name string) map[string]json.RawMessage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "examples", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var ex map[string]json.RawMessage
	if err := json.Unmarshal(b, &ex); err != nil {
		t.Fatal(err)
	}
	return ex
}

// exampleResponseBody returns the body of the example's response with the given status.
func exampleResponseBody(t testing.TB, name, status string) json.RawMessage {
	t.Helper()
	ex := readExample(t, name)
	var responses map[string]struct {
		Body json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal(ex["responses"], &responses); err != nil {
		t.Fatal(err)
	}
	r, ok := responses[status]
	if !ok {
		t.Fatalf("example %s has no %s response", name, status)
	}
	return r.Body
}

func etag(s string) *azcore.ETag {
	e := azcore.ETag(s)
	return &e
}

func ptr[T any](v T) *T { return &v }

// jsonEqual reports whether a and b hold the same JSON value.
func jsonEqual(t testing.TB, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}
