package emulator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ServeOptions say how Serve listens.
type ServeOptions struct {
	// Addr is the listen address. Empty: "127.0.0.1:0" (a free port on loopback).
	Addr string
	// PlainHTTP serves http:// instead of the default HTTPS.
	PlainHTTP bool
	// CertFile is where the self-signed certificate (PEM) is written for clients to trust.
	// Empty: "emulator-cert.pem" in Options.DataDir, or in a fresh temporary directory that
	// Close removes.
	CertFile string
	// KeyFile, when set, is where the certificate's private key (PEM) is written.
	KeyFile string
}

// Names of the certificate and its key in Options.DataDir.
const (
	dataDirCertFile = "emulator-cert.pem"
	dataDirKeyFile  = "emulator-key.pem"
)

// certRenewBefore is how long before its expiry a kept certificate is replaced.
const certRenewBefore = 24 * time.Hour

// Server is an Emulator listening on a TCP address.
type Server struct {
	*Emulator
	srv        *http.Server
	ln         net.Listener
	url        string
	host       string
	certFile   string
	certReused bool
	pool       *x509.CertPool
	tmpDir     string
	done       chan struct{}
	serveErr   error
}

// Serve starts an emulator configured by opts on a listener configured by sopts.
//
// Service SAS tokens must name the emulator's host name in "sr", as DPS requires: when
// opts.ServiceHostName is empty, Serve sets it to the listen host:port (127.0.0.1 for a
// wildcard address) and accepts the loopback aliases of the listener too
// (Server.ServiceHostNames), and local port forwarders' loopback names (see
// Options.ServiceHostName). A given opts.ServiceHostName is strict; it is also the
// HostName of ConnectionString and the host of URL, since a client signs the host it
// connects to.
//
// It serves HTTPS unless sopts.PlainHTTP, with a self-signed ECDSA certificate (SANs
// 127.0.0.1, ::1, localhost, the listen host and the service host name). With
// opts.DataDir the certificate and its key are kept there (emulator-cert.pem,
// emulator-key.pem) and reused by the next start, so a certificate a user trusted keeps
// working; a new one is made only when they are missing or unreadable, when the kept one
// has expired (or expires within a day) or when it does not name every host above. TLS
// client certificates are requested, not required, so X.509 devices can authenticate.
// ctx bounds only the start.
func Serve(ctx context.Context, opts Options, sopts ServeOptions) (*Server, error) {
	addr := sopts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("emulator: listen: %w", err)
	}
	tcp := ln.Addr().(*net.TCPAddr)
	port := strconv.Itoa(tcp.Port)
	listenHost := hostOf(addr)
	host := net.JoinHostPort(listenHost, port)
	if opts.ServiceHostName == "" {
		opts.ServiceHostName = host
		opts.ServiceHostAliases = append(loopbackAliases(listenHost, tcp.IP, port), opts.ServiceHostAliases...)
		opts.loopbackForwarders = true
	} else {
		host = opts.ServiceHostName
	}
	em, err := New(opts)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{Emulator: em, ln: ln, host: strings.ToLower(host), done: make(chan struct{})}
	errLog := log.New(slogWriter{em.opts.Logger}, "", 0)
	s.srv = &http.Server{Handler: em.Handler(), ReadHeaderTimeout: 30 * time.Second, ErrorLog: errLog}
	scheme := "http"
	if !sopts.PlainHTTP {
		scheme = "https"
		if err := s.setupTLS(opts.DataDir, sopts, certHosts(listenHost, em.ServiceHostNames())); err != nil {
			s.abort()
			return nil, err
		}
		s.ln = tls.NewListener(ln, s.srv.TLSConfig)
	}
	s.url = scheme + "://" + s.host
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.serveErr = err
		}
	}()
	return s, nil
}

// setupTLS finds or makes the server certificate for hosts, writes it (and its key) where
// sopts and dataDir say, and configures the server's TLS.
func (s *Server) setupTLS(dataDir string, sopts ServeOptions, hosts []string) error {
	now := s.now()
	var cert tls.Certificate
	var certPEM, keyPEM []byte
	if dataDir != "" {
		cert, certPEM, keyPEM = keptCertificate(dataDir, hosts, now)
		s.certReused = certPEM != nil
	}
	if !s.certReused {
		var err error
		if cert, certPEM, keyPEM, err = selfSigned(hosts, now); err != nil {
			return err
		}
		if dataDir != "" {
			// The key first: a certificate without its key is not reused.
			if err := writeFileAtomic(filepath.Join(dataDir, dataDirKeyFile), keyPEM, 0o600); err != nil {
				return fmt.Errorf("emulator: write key: %w", err)
			}
			if err := writeFileAtomic(filepath.Join(dataDir, dataDirCertFile), certPEM, 0o644); err != nil {
				return fmt.Errorf("emulator: write certificate: %w", err)
			}
		}
		s.opts.Logger.Info("generated a self-signed certificate", "data_dir", dataDir != "")
	} else {
		s.opts.Logger.Info("reusing the certificate kept in the data directory", "not_after", cert.Leaf.NotAfter)
	}
	certFile := sopts.CertFile
	if certFile == "" {
		dir := dataDir
		if dir == "" {
			var err error
			if dir, err = os.MkdirTemp("", "dps-emulator-"); err != nil {
				return fmt.Errorf("emulator: certificate directory: %w", err)
			}
			s.tmpDir = dir
		}
		certFile = filepath.Join(dir, dataDirCertFile)
	}
	if dataDir == "" || filepath.Clean(certFile) != filepath.Join(dataDir, dataDirCertFile) {
		if err := writeFileAtomic(certFile, certPEM, 0o644); err != nil {
			return fmt.Errorf("emulator: write certificate: %w", err)
		}
	}
	if sopts.KeyFile != "" {
		if err := writeFileAtomic(sopts.KeyFile, keyPEM, 0o600); err != nil {
			return fmt.Errorf("emulator: write key: %w", err)
		}
	}
	s.certFile = certFile
	s.pool = x509.NewCertPool()
	s.pool.AppendCertsFromPEM(certPEM)
	s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	return nil
}

// keptCertificate loads the certificate and key kept in dir. It returns nil PEM when they
// are missing, unreadable or do not match, when the certificate is not valid at now or
// expires within certRenewBefore, or when it does not name every host.
func keptCertificate(dir string, hosts []string, now time.Time) (tls.Certificate, []byte, []byte) {
	certPEM, err1 := os.ReadFile(filepath.Join(dir, dataDirCertFile))
	keyPEM, err2 := os.ReadFile(filepath.Join(dir, dataDirKeyFile))
	if err1 != nil || err2 != nil {
		return tls.Certificate{}, nil, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil || cert.Leaf == nil {
		return tls.Certificate{}, nil, nil
	}
	if now.Before(cert.Leaf.NotBefore) || now.Add(certRenewBefore).After(cert.Leaf.NotAfter) {
		return tls.Certificate{}, nil, nil
	}
	for _, h := range hosts {
		if cert.Leaf.VerifyHostname(h) != nil {
			return tls.Certificate{}, nil, nil
		}
	}
	return cert, certPEM, keyPEM
}

// writeFileAtomic writes b to name through a temporary file and a rename, so a crash
// leaves the old file or the new one, never half of one.
func writeFileAtomic(name string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// loopbackAliases are the other names under which a listener on listenHost (IP ip) is
// reached on this machine: localhost and the loopback address(es) it accepts.
func loopbackAliases(listenHost string, ip net.IP, port string) []string {
	var hosts []string
	switch {
	case ip.IsUnspecified() && ip.To4() != nil: // 0.0.0.0
		hosts = []string{"127.0.0.1", "localhost"}
	case ip.IsUnspecified(): // :: (IPv4 too on a dual-stack system)
		hosts = []string{"127.0.0.1", "localhost", "::1"}
	case ip.IsLoopback():
		hosts = []string{ip.String(), "localhost"}
	}
	var out []string
	for _, h := range hosts {
		if !strings.EqualFold(h, listenHost) {
			out = append(out, strings.ToLower(net.JoinHostPort(h, port)))
		}
	}
	return out
}

// certHosts are the hosts the certificate must name: the loopback names, the listen host
// and the hosts of the service host names.
func certHosts(listenHost string, serviceHosts []string) []string {
	out := []string{"localhost", "127.0.0.1", "::1"}
	add := func(h string) {
		if h != "" && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	add(strings.ToLower(listenHost))
	for _, sh := range serviceHosts {
		h, _, err := net.SplitHostPort(sh)
		if err != nil {
			h = strings.Trim(sh, "[]")
		}
		add(strings.ToLower(h))
	}
	return out
}

// hostOf is the host clients should use: the listen host, or 127.0.0.1 for a wildcard.
func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil || h == "" || h == "0.0.0.0" || h == "::" {
		return "127.0.0.1"
	}
	return h
}

func (s *Server) abort() {
	s.ln.Close()
	s.Emulator.Close()
	if s.tmpDir != "" {
		os.RemoveAll(s.tmpDir)
	}
}

// URL returns the base URL of the service and runtime APIs, e.g. "https://127.0.0.1:8443".
func (s *Server) URL() string { return s.url }

// ListenAddr returns the address the server is bound to, e.g. "0.0.0.0:8443" (HostName is
// what clients use).
func (s *Server) ListenAddr() string { return s.ln.Addr().String() }

// HostName returns host:port, the HostName of the connection string: the service host name
// service SAS tokens must name in "sr".
func (s *Server) HostName() string { return s.host }

// CertificateReused reports whether the HTTPS certificate is the one kept in the data
// directory by an earlier start (false when it was generated by this start).
func (s *Server) CertificateReused() bool { return s.certReused }

// ConnectionString returns the service connection string (first policy). It holds a secret.
func (s *Server) ConnectionString() string { return s.Emulator.ConnectionString(s.host) }

// CAFile returns the path of the certificate clients should trust ("" with plain HTTP).
func (s *Server) CAFile() string { return s.certFile }

// CertPool returns a pool holding the server certificate (nil with plain HTTP).
func (s *Server) CertPool() *x509.CertPool { return s.pool }

// Client returns an HTTP client that trusts the server certificate.
func (s *Server) Client() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if s.pool != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: s.pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr}
}

// Close stops the listener, waits up to 5 s for requests in flight, then closes the
// emulator (flushing its data directory).
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	if cerr := s.Emulator.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if s.tmpDir != "" {
		os.RemoveAll(s.tmpDir)
	}
	return errors.Join(err, s.serveErr)
}

// selfSigned makes an ECDSA P-256 CA certificate naming hosts (IP addresses and DNS names).
func selfSigned(hosts []string, now time.Time) (tls.Certificate, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("emulator: certificate key: %w", err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "dpsync DPS emulator", Organization: []string{"dpsync"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("emulator: create certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("emulator: marshal key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("emulator: key pair: %w", err)
	}
	return cert, certPEM, keyPEM, nil
}

// slogWriter sends the http.Server's error log (TLS handshake noise mostly) to slog at
// debug level.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug("http server", "msg", string(p))
	return len(p), nil
}
