package emulator_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/emulator/contract"
	"github.com/dpsync/dpsync/internal/emulator/emulatortest"
)

func stateJSON(t *testing.T, em *emulator.Emulator) string {
	t.Helper()
	b, err := json.Marshal(em.State())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fill writes a mix of enrollments, groups, updates, deletes and a registration.
func fill(t *testing.T, tg contract.Target) {
	t.Helper()
	for b := range 3 {
		var items []any
		for i := range 10 {
			items = append(items, sym("p-"+string(rune('a'+b))+"-"+string(rune('a'+i))))
		}
		if r := tg.Do(t, "POST", "/enrollments", map[string]any{"enrollments": items, "mode": "create"}, nil); string(r.Body) != `{"errors":[],"isSuccessful":true}` {
			t.Fatalf("bulk: %d %s", r.Status, r.Body)
		}
	}
	g := tg.Do(t, "PUT", "/enrollmentGroups/pg", map[string]any{"enrollmentGroupId": "pg", "attestation": map[string]any{"type": "symmetricKey"}, "provisioningStatus": nil}, nil)
	gk := g.JSON(t)["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
	if res := tg.Register(t, "pg-dev-1", contract.DeriveKey(gk, "pg-dev-1")); res.Status != "assigned" {
		t.Fatalf("register: %+v", res)
	}
	up := sym("p-a-a")
	up["deviceId"] = "changed"
	if r := tg.Do(t, "PUT", "/enrollments/p-a-a", up, map[string]string{"If-Match": "*"}); r.Status != 200 {
		t.Fatalf("update: %d %s", r.Status, r.Body)
	}
	if r := tg.Do(t, "DELETE", "/enrollments/p-b-b", nil, nil); r.Status != 204 {
		t.Fatalf("delete: %d", r.Status)
	}
}

func TestPersistenceCleanRestart(t *testing.T) {
	dir := t.TempDir()
	opts := emulator.Options{DataDir: dir, Quotas: &emulator.Quotas{}, RuntimeRetryAfter: -1}
	em, err := emulator.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(em.Handler())
	fill(t, target(em, srv))
	before := stateJSON(t, em)
	srv.Close()
	if err := em.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	em2, err := emulator.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer em2.Close()
	if after := stateJSON(t, em2); after != before {
		t.Errorf("after restart:\n got %s\nwant %s", after, before)
	}
	st := em2.State()
	if len(st.Enrollments) != 29 || len(st.EnrollmentGroups) != 1 || len(st.Registrations) != 1 || !st.EnrollmentGroups[0].ProvisioningStatusNull {
		t.Errorf("after restart: got %d enrollments, %d groups, %d registrations, want 29, 1, 1", len(st.Enrollments), len(st.EnrollmentGroups), len(st.Registrations))
	}
	// The restarted instance keeps working and serves the same data.
	srv2 := httptest.NewServer(em2.Handler())
	defer srv2.Close()
	tg := target(em2, srv2)
	if r := tg.Do(t, "GET", "/enrollments/p-a-a", nil, nil); r.Status != 200 || r.JSON(t)["deviceId"] != "changed" {
		t.Errorf("GET after restart: got %d %s", r.Status, r.Body)
	}
}

// TestPersistenceCrash copies the data directory while the emulator runs (what a kill -9
// leaves behind), adds a torn line, and opens the copy.
func TestPersistenceCrash(t *testing.T) {
	dir := t.TempDir()
	em, err := emulator.New(emulator.Options{DataDir: dir, Quotas: &emulator.Quotas{}, RuntimeRetryAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(em.Handler())
	fill(t, target(em, srv))
	before := stateJSON(t, em)
	crash := t.TempDir()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(e.Name(), "log-") {
			b = append(b, []byte(`{"t":"e","e":{"v":{"registrationId":"torn"`)...)
		}
		if err := os.WriteFile(filepath.Join(crash, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv.Close()
	if err := em.Close(); err != nil {
		t.Fatal(err)
	}
	em2, err := emulator.New(emulator.Options{DataDir: crash})
	if err != nil {
		t.Fatalf("open after crash: %v", err)
	}
	defer em2.Close()
	if after := stateJSON(t, em2); after != before {
		t.Errorf("after crash:\n got %s\nwant %s", after, before)
	}
}

// certs makes a CA, a device certificate signed by it and a self-signed device certificate.
type testCerts struct {
	caPEM, leafPEM, selfPEM string
	leaf, self              tls.Certificate
	selfCert                *x509.Certificate
}

func makeCerts(t *testing.T) testCerts {
	t.Helper()
	now := time.Now()
	mk := func(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	pair := func(c *x509.Certificate, k *ecdsa.PrivateKey) tls.Certificate {
		return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
	}
	nb := now.Add(-time.Hour).Truncate(time.Second)
	ca, caKey, caPEM := mk(&x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test CA", Organization: []string{"dpsync"}}, NotBefore: nb, NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, nil, nil)
	leaf, leafKey, leafPEM := mk(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "x509-group-dev"}, NotBefore: nb, NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
	self, selfKey, selfPEM := mk(&x509.Certificate{SerialNumber: big.NewInt(0xABCDEF), Subject: pkix.Name{CommonName: "x509-dev", Organization: []string{"Org"}}, NotBefore: nb, NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, nil, nil)
	return testCerts{caPEM: caPEM, leafPEM: leafPEM, selfPEM: selfPEM, leaf: pair(leaf, leafKey), self: pair(self, selfKey), selfCert: self}
}

func TestX509(t *testing.T) {
	certs := makeCerts(t)
	s := emulatortest.New(t, emulator.Options{})
	tg := emulatortest.Target(s)

	body := map[string]any{"registrationId": "x509-dev", "attestation": map[string]any{"type": "x509", "x509": map[string]any{"clientCertificates": map[string]any{"primary": map[string]any{"certificate": certs.selfPEM}}}}}
	r := tg.Do(t, "PUT", "/enrollments/x509-dev", body, nil)
	if r.Status != 200 {
		t.Fatalf("PUT x509: %d %s", r.Status, r.Body)
	}
	if strings.Contains(string(r.Body), "BEGIN CERTIFICATE") || strings.Contains(string(r.Body), `"certificate"`) {
		t.Errorf("PUT x509 echoed the certificate: %s", r.Body)
	}
	var out struct {
		Attestation struct {
			X509 struct {
				ClientCertificates struct {
					Primary struct {
						Info map[string]any `json:"info"`
					} `json:"primary"`
				} `json:"clientCertificates"`
			} `json:"x509"`
		} `json:"attestation"`
	}
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatal(err)
	}
	s1, s256 := sha1.Sum(certs.selfCert.Raw), sha256.Sum256(certs.selfCert.Raw)
	want := map[string]any{
		"subjectName":      "CN=x509-dev, O=Org",
		"issuerName":       "CN=x509-dev, O=Org",
		"sha1Thumbprint":   strings.ToUpper(hex.EncodeToString(s1[:])),
		"sha256Thumbprint": strings.ToUpper(hex.EncodeToString(s256[:])),
		"serialNumber":     "00ABCDEF", // the DER bytes, leading zero kept, as .NET writes them
		"version":          float64(3),
		"notBeforeUtc":     certs.selfCert.NotBefore.UTC().Format(time.RFC3339),
		"notAfterUtc":      certs.selfCert.NotAfter.UTC().Format(time.RFC3339),
	}
	info := out.Attestation.X509.ClientCertificates.Primary.Info
	for k, v := range want {
		if info[k] != v {
			t.Errorf("info.%s: got %v, want %v", k, info[k], v)
		}
	}
	if r := tg.Do(t, "GET", "/enrollments/x509-dev", nil, nil); strings.Contains(string(r.Body), "BEGIN CERTIFICATE") {
		t.Errorf("GET echoed the certificate")
	}
	bad := map[string]any{"registrationId": "x509-bad", "attestation": map[string]any{"type": "x509", "x509": map[string]any{"clientCertificates": map[string]any{"primary": map[string]any{"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}}}}}
	contract.ExpectError(t, tg.Do(t, "PUT", "/enrollments/x509-bad", bad, nil), 400, emulator.CodeInvalidAttestation)

	grp := map[string]any{"enrollmentGroupId": "x509-group", "attestation": map[string]any{"type": "x509", "x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]any{"certificate": certs.caPEM}}}}}
	if r := tg.Do(t, "PUT", "/enrollmentGroups/x509-group", grp, nil); r.Status != 200 {
		t.Fatalf("PUT x509 group: %d %s", r.Status, r.Body)
	}

	withCert := func(c tls.Certificate) contract.Target {
		tg2 := tg
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: s.CertPool(), Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}
		tg2.Client = &http.Client{Transport: tr}
		t.Cleanup(tr.CloseIdleConnections)
		return tg2
	}
	register := func(tg contract.Target, id string) *contract.Response {
		noAuth := map[string]string{"Authorization": ""}
		r := tg.Do(t, "PUT", "/"+tg.IDScope+"/registrations/"+id+"/register", map[string]string{"registrationId": id}, noAuth)
		if r.Status != 202 {
			return r
		}
		op := r.JSON(t)["operationId"].(string)
		return tg.Do(t, "GET", "/"+tg.IDScope+"/registrations/"+id+"/operations/"+op, nil, noAuth)
	}
	r = register(withCert(certs.self), "x509-dev")
	if r.Status != 200 || r.JSON(t)["status"] != "assigned" {
		t.Errorf("individual X.509 device: got %d %s, want assigned", r.Status, r.Body)
	} else if x, _ := r.JSON(t)["registrationState"].(map[string]any)["x509"].(map[string]any); x == nil {
		t.Errorf("individual X.509 device: registrationState lacks x509: %s", r.Body)
	}
	r = register(withCert(certs.leaf), "x509-group-dev")
	if r.Status != 200 || r.JSON(t)["status"] != "assigned" || !strings.Contains(string(r.Body), `"enrollmentGroupId":"x509-group"`) {
		t.Errorf("group X.509 device: got %d %s, want assigned through x509-group", r.Status, r.Body)
	}
	contract.ExpectError(t, register(withCert(certs.self), "someone-else"), 401, 401002)
	contract.ExpectError(t, register(tg, "x509-dev"), 401, 401002) // no certificate, no SAS
}
