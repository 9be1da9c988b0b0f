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

// Server is an Emulator listening on a TCP address.
type Server struct {
	*Emulator
	srv      *http.Server
	ln       net.Listener
	url      string
	host     string
	certFile string
	pool     *x509.CertPool
	tmpDir   string
	done     chan struct{}
	serveErr error
}

// Serve starts an emulator configured by opts on a listener configured by sopts. It serves
// HTTPS with a freshly generated self-signed ECDSA certificate (SANs 127.0.0.1, ::1,
// localhost and the listen host) unless sopts.PlainHTTP; TLS client certificates are
// requested, not required, so X.509 devices can authenticate. ctx bounds only the start.
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
	em, err := New(opts)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{Emulator: em, ln: ln, done: make(chan struct{})}
	tcp := ln.Addr().(*net.TCPAddr)
	s.host = net.JoinHostPort(hostOf(addr, tcp), fmt.Sprint(tcp.Port))
	errLog := log.New(slogWriter{em.opts.Logger}, "", 0)
	s.srv = &http.Server{Handler: em.Handler(), ReadHeaderTimeout: 30 * time.Second, ErrorLog: errLog}
	scheme := "http"
	if !sopts.PlainHTTP {
		scheme = "https"
		cert, certPEM, keyPEM, err := selfSigned(hostOf(addr, tcp), em.now())
		if err != nil {
			s.abort()
			return nil, err
		}
		certFile := sopts.CertFile
		if certFile == "" {
			dir := opts.DataDir
			if dir == "" {
				if dir, err = os.MkdirTemp("", "dps-emulator-"); err != nil {
					s.abort()
					return nil, fmt.Errorf("emulator: certificate directory: %w", err)
				}
				s.tmpDir = dir
			}
			certFile = filepath.Join(dir, "emulator-cert.pem")
		}
		if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
			s.abort()
			return nil, fmt.Errorf("emulator: write certificate: %w", err)
		}
		if sopts.KeyFile != "" {
			if err := os.WriteFile(sopts.KeyFile, keyPEM, 0o600); err != nil {
				s.abort()
				return nil, fmt.Errorf("emulator: write key: %w", err)
			}
		}
		s.certFile = certFile
		s.pool = x509.NewCertPool()
		s.pool.AppendCertsFromPEM(certPEM)
		s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
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

// hostOf is the host clients should use: the listen host, or 127.0.0.1 for a wildcard.
func hostOf(addr string, tcp *net.TCPAddr) string {
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

// HostName returns host:port, the HostName of the connection string.
func (s *Server) HostName() string { return s.host }

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

// selfSigned makes an ECDSA P-256 certificate for the loopback names and host.
func selfSigned(host string, now time.Time) (tls.Certificate, []byte, []byte, error) {
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
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	} else if host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
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
