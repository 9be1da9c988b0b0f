package harness

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeDPS serves a two-page query and checks the SAS signature of every request.
func fakeDPS(t *testing.T, key []byte) (*httptest.Server, string) {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/admin/counters" {
			w.Write([]byte(`{"calls":3}`)) // admin needs no DPS auth
			return
		}
		host := strings.TrimPrefix(srv.URL, "https://")
		auth := strings.TrimPrefix(r.Header.Get("Authorization"), "SharedAccessSignature ")
		q, err := url.ParseQuery(auth)
		if err != nil || q.Get("sr") != strings.ToLower(host) || q.Get("skn") != "owner" {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(url.QueryEscape(q.Get("sr")) + "\n" + q.Get("se")))
		if q.Get("sig") != base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		switch {
		case r.URL.Path == "/enrollments/query" && r.Header.Get("x-ms-continuation") == "":
			w.Header().Set("x-ms-continuation", "p2")
			json.NewEncoder(w).Encode([]map[string]any{{"registrationId": "a", "attestation": map[string]any{"type": "symmetricKey"}}})
		case r.URL.Path == "/enrollments/query":
			json.NewEncoder(w).Encode([]map[string]any{{"registrationId": "b", "attestation": map[string]any{"type": "symmetricKey"}}})
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, ca
}

func TestDPSClient(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	srv, ca := fakeDPS(t, key)
	host := strings.TrimPrefix(srv.URL, "https://")
	conn := "HostName=" + host + ";SharedAccessKeyName=owner;SharedAccessKey=" + base64.StdEncoding.EncodeToString(key)
	c, err := NewDPSClient(conn, ca, "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.QueryEnrollments(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].RegistrationID != "a" || got[1].RegistrationID != "b" {
		t.Errorf("got %+v, want enrollments a and b from two pages", got)
	}
	var counters map[string]int
	if err := c.Admin(t.Context(), http.MethodGet, "counters", nil, &counters); err != nil || counters["calls"] != 3 {
		t.Errorf("got counters %v, err %v; want calls 3", counters, err)
	}
	if err := c.Admin(t.Context(), http.MethodGet, "nothing", nil, nil); err == nil {
		t.Error("got nil error for a 404 admin path")
	}

	bad, err := NewDPSClient(WithHost(conn, host), ca, "")
	if err != nil {
		t.Fatal(err)
	}
	bad.key = []byte("wrong")
	if _, err := bad.QueryEnrollments(t.Context()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("got %v with a wrong key, want status 401", err)
	}
	if HostOf(conn) != host || KeyOf(conn) != base64.StdEncoding.EncodeToString(key) {
		t.Errorf("HostOf/KeyOf do not read the connection string back")
	}
}

func TestNewDPSClientErrorsHideKey(t *testing.T) {
	for _, conn := range []string{"HostName=h;SharedAccessKeyName=p", "HostName=h;SharedAccessKeyName=p;SharedAccessKey=not*base64!"} {
		_, err := NewDPSClient(conn, "", "")
		if err == nil {
			t.Errorf("NewDPSClient(%q): got nil error", conn)
			continue
		}
		if strings.Contains(err.Error(), "not*base64!") {
			t.Errorf("got error %q, which shows the key", err)
		}
	}
}
