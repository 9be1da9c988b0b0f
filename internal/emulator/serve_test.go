package emulator_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/emulator/contract"
	"github.com/dpsync/dpsync/internal/emulator/emulatortest"
)

// getWithSR sends GET /enrollments/none to s signed for resource sr, with the Host header
// host ("" keeps the URL's), and returns the status.
func getWithSR(t *testing.T, s *emulator.Server, sr, host string) int {
	t.Helper()
	p := s.Policies()[0]
	req, err := http.NewRequest("GET", s.URL()+"/enrollments/none?api-version="+contract.APIVersion, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	req.Header.Set("Authorization", contract.SAS(sr, p.Name, p.Key, time.Now().Add(time.Hour)))
	c := s.Client()
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestServeServiceHostName: a served emulator requires its own host name in the service
// SAS "sr" (or one of the loopback aliases it prints), not whatever the Host header says.
func TestServeServiceHostName(t *testing.T) {
	s := emulatortest.New(t, emulator.Options{})
	host := s.HostName()
	_, port, err := net.SplitHostPort(host)
	if err != nil {
		t.Fatal(err)
	}
	names := s.ServiceHostNames()
	if len(names) == 0 || names[0] != host {
		t.Fatalf("ServiceHostNames: got %v, want %s first", names, host)
	}
	if want := "localhost:" + port; !contains(names, want) {
		t.Errorf("ServiceHostNames: got %v, want the loopback alias %s", names, want)
	}
	if !strings.Contains(s.ConnectionString(), "HostName="+host+";") {
		t.Errorf("connection string does not name %s", host)
	}
	for _, c := range []struct {
		name, sr, host string
		want           int
	}{
		{"the host name", host, "", 404},
		{"the host name in upper case", strings.ToUpper(host), "", 404},
		{"the host name with a path", host + "/enrollments", "", 404},
		{"a loopback alias", "localhost:" + port, "", 404},
		{"another host, matching the Host header", "evil.example:" + port, "evil.example:" + port, 401},
		{"a DPS host name, matching the Host header", "mydps.azure-devices-provisioning.net", "mydps.azure-devices-provisioning.net", 401},
		{"the host without its port", "127.0.0.1", "", 401},
		{"another port, not the one addressed", "127.0.0.1:1", "", 401},
		// A local port forwarder (a test's fault proxy, a tap): the client signs the
		// loopback host:port it connects to, which reaches the emulator as the Host.
		{"a local port forwarder's loopback Host", "127.0.0.1:1", "127.0.0.1:1", 404},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := getWithSR(t, s, c.sr, c.host)
			if got != c.want {
				t.Errorf("sr %q (Host %q): got %d, want %d", c.sr, c.host, got, c.want)
			}
		})
	}
}

// TestServeThroughLocalForwarder: a client that reaches a served emulator through a TCP
// forwarder on another loopback port signs the forwarder's host:port, as the integration
// harness's fault proxies and taps have their workers do. That passes; naming a non-loopback
// host through the same forwarder does not.
func TestServeThroughLocalForwarder(t *testing.T) {
	s := emulatortest.New(t, emulator.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", s.ListenAddr())
			if err != nil {
				in.Close()
				return
			}
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(out, in); out.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	p := s.Policies()[0]
	c := s.Client()
	defer c.CloseIdleConnections()
	fwd := ln.Addr().String()
	for _, tc := range []struct {
		sr, host string
		want     int
	}{
		{fwd, "", 404},
		{"evil.example:1", "evil.example:1", 401},
	} {
		req, _ := http.NewRequest("GET", "https://"+fwd+"/enrollments/none?api-version="+contract.APIVersion, nil)
		if tc.host != "" {
			req.Host = tc.host
		}
		req.Header.Set("Authorization", contract.SAS(tc.sr, p.Name, p.Key, time.Now().Add(time.Hour)))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("through the forwarder, sr %s: got %d, want %d", tc.sr, resp.StatusCode, tc.want)
		}
	}
	c.CloseIdleConnections()
}

// TestServeGivenHostName: a given ServiceHostName is what the connection string and the
// certificate name.
func TestServeGivenHostName(t *testing.T) {
	dir := t.TempDir()
	s, err := emulator.Serve(context.Background(), emulator.Options{ServiceHostName: "Emulator.Test:8443", Quotas: &emulator.Quotas{}},
		emulator.ServeOptions{CertFile: filepath.Join(dir, "cert.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.HostName(); got != "emulator.test:8443" {
		t.Errorf("HostName: got %q, want emulator.test:8443", got)
	}
	if !strings.Contains(s.ConnectionString(), "HostName=emulator.test:8443;") {
		t.Error("the connection string does not name the given host name")
	}
	if got := s.ServiceHostNames(); len(got) != 1 {
		t.Errorf("ServiceHostNames: got %v, want only the given name", got)
	}
	if err := readCert(t, s.CAFile()).VerifyHostname("emulator.test"); err != nil {
		t.Errorf("certificate: %v", err)
	}
	// A given name is strict: a client that reaches the listener by its loopback address
	// and signs that address is refused; signing the given name passes.
	p := s.Policies()[0]
	c := s.Client()
	defer c.CloseIdleConnections()
	for sr, want := range map[string]int{s.ListenAddr(): 401, "emulator.test:8443": 404} {
		req, _ := http.NewRequest("GET", "https://"+s.ListenAddr()+"/enrollments/none?api-version="+contract.APIVersion, nil)
		req.Header.Set("Authorization", contract.SAS(sr, p.Name, p.Key, time.Now().Add(time.Hour)))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("sr %s: got %d, want %d", sr, resp.StatusCode, want)
		}
	}
}

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", file)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestServeKeepsCertificateInDataDir: with a data directory the certificate and key are
// reused across restarts (a client that trusted the first one still connects), and
// replaced only when expired or missing a host.
func TestServeKeepsCertificateInDataDir(t *testing.T) {
	dataDir := t.TempDir()
	start := func(opts emulator.Options) (*emulator.Server, []byte) {
		t.Helper()
		opts.DataDir, opts.Quotas = dataDir, &emulator.Quotas{}
		s, err := emulator.Serve(context.Background(), opts, emulator.ServeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(s.CAFile())
		if err != nil {
			t.Fatal(err)
		}
		return s, b
	}
	s1, pem1 := start(emulator.Options{})
	if s1.CertificateReused() {
		t.Error("first start: got a reused certificate")
	}
	if got, want := s1.CAFile(), filepath.Join(dataDir, "emulator-cert.pem"); got != want {
		t.Errorf("CAFile: got %s, want %s", got, want)
	}
	if fi, err := os.Stat(filepath.Join(dataDir, "emulator-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	trusted := x509.NewCertPool()
	trusted.AppendCertsFromPEM(pem1)
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s2, pem2 := start(emulator.Options{})
	if !s2.CertificateReused() || !bytes.Equal(pem1, pem2) {
		t.Error("restart: the certificate changed")
	}
	// A client trusting only the first certificate connects to the restarted emulator.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: trusted, MinVersion: tls.VersionTLS12}}}
	resp, err := c.Get(s2.URL() + "/admin/counters")
	if err != nil {
		t.Fatalf("client trusting the first certificate: %v", err)
	}
	resp.Body.Close()
	c.CloseIdleConnections()
	s2.Close()

	// A host the kept certificate does not name: a new certificate.
	s3, pem3 := start(emulator.Options{ServiceHostName: "other.example:8443"})
	if s3.CertificateReused() || bytes.Equal(pem1, pem3) {
		t.Error("new host name: the certificate was reused")
	}
	if err := readCert(t, s3.CAFile()).VerifyHostname("other.example"); err != nil {
		t.Errorf("new certificate: %v", err)
	}
	s3.Close()

	// Expired (by the emulator's clock): a new certificate.
	later := time.Now().Add(400 * 24 * time.Hour)
	s4, pem4 := start(emulator.Options{ServiceHostName: "other.example:8443", Clock: func() time.Time { return later }})
	if s4.CertificateReused() || bytes.Equal(pem3, pem4) {
		t.Error("expired certificate: it was reused")
	}
	s4.Close()

	// An unreadable key: a new certificate.
	if err := os.WriteFile(filepath.Join(dataDir, "emulator-key.pem"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	s5, pem5 := start(emulator.Options{ServiceHostName: "other.example:8443", Clock: func() time.Time { return later }})
	if s5.CertificateReused() || bytes.Equal(pem4, pem5) {
		t.Error("unreadable key: the certificate was reused")
	}
	s5.Close()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
