package harness

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dpsync/dpsync/internal/dps"
)

// Write is one enrollment write request (PUT or DELETE of /enrollments/{id}, or a bulk POST
// /enrollments) that reached the emulator through a tap.
type Write struct {
	// Tap names the tap (one per worker: the worker id).
	Tap string
	// At is when the emulator's handler received the request (this machine's clock, the
	// one nats-server stamps messages with).
	At time.Time
	// Method is PUT, DELETE or POST (bulk); Mode the bulk mode.
	Method string
	Mode   string
	// IDs are the lower-cased registration ids the request writes; Seqs their
	// initialTwin.tags.seq (-1 when absent, e.g. a delete).
	IDs  []string
	Seqs []int
	// Status is the HTTP status answered (0: the connection was dropped).
	Status int
	// Failed are the bulk items DPS refused (lower-cased ids).
	Failed []string
}

// Applied reports whether the write of id changed DPS (2xx and not a failed bulk item).
func (w Write) Applied(id string) bool {
	return w.Status/100 == 2 && !slices.Contains(w.Failed, id)
}

// WriteLog collects the writes of every tap. It is safe for concurrent use.
type WriteLog struct {
	mu     sync.Mutex
	writes []Write
}

// Writes returns a copy of the writes in arrival order.
func (l *WriteLog) Writes() []Write {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Write(nil), l.writes...)
}

func (l *WriteLog) add(w Write) {
	l.mu.Lock()
	l.writes = append(l.writes, w)
	l.mu.Unlock()
}

// Tap serves the emulator on one more 127.0.0.1 port, with the same certificate, recording
// every enrollment write into log under name. Give each worker its own tap to attribute
// each write to the worker that sent it. t.Cleanup closes it.
func (e *Emulator) Tap(t TB, name string, log *WriteLog) (DPSTarget, error) {
	cert, err := tls.LoadX509KeyPair(e.CAFile, e.keyFile)
	if err != nil {
		return DPSTarget{}, fmt.Errorf("tap %s: %w", name, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return DPSTarget{}, fmt.Errorf("tap %s: %w", name, err)
	}
	inner := e.Server.Handler()
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { record(name, log, inner, w, r) }),
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return DPSTarget{ConnectionString: WithHost(e.ConnectionString, ln.Addr().String()), CAFile: e.CAFile}, nil
}

// record serves r with inner and logs it if it is an enrollment write.
func record(tap string, log *WriteLog, inner http.Handler, w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	path := strings.ToLower(strings.TrimSuffix(r.URL.Path, "/"))
	rest, isEnrollments := strings.CutPrefix(path, "/enrollments")
	write := isEnrollments && ((r.Method == http.MethodPost && rest == "") ||
		((r.Method == http.MethodPut || r.Method == http.MethodDelete) && strings.HasPrefix(rest, "/") && !strings.Contains(rest[1:], "/")))
	if !write {
		inner.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "tap: read body", http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := Write{Tap: tap, At: at, Method: r.Method}
	switch r.Method {
	case http.MethodPost:
		var op dps.BulkEnrollmentOperation
		_ = json.Unmarshal(body, &op)
		rec.Mode = string(op.Mode)
		for _, en := range op.Enrollments {
			rec.IDs = append(rec.IDs, strings.ToLower(en.RegistrationID))
			rec.Seqs = append(rec.Seqs, seqOf(en))
		}
	default:
		var en dps.IndividualEnrollment
		_ = json.Unmarshal(body, &en)
		rec.IDs = []string{rest[1:]}
		rec.Seqs = []int{seqOf(en)}
	}
	cw := &captureWriter{ResponseWriter: w}
	defer func() {
		rec.Status = cw.status
		if r.Method == http.MethodPost && cw.status == http.StatusOK {
			var res dps.BulkEnrollmentOperationResult
			_ = json.Unmarshal(cw.body.Bytes(), &res)
			for _, e := range res.Errors {
				rec.Failed = append(rec.Failed, strings.ToLower(e.RegistrationID))
			}
		}
		log.add(rec)
	}()
	inner.ServeHTTP(cw, r)
}

func seqOf(en dps.IndividualEnrollment) int {
	if en.InitialTwin == nil {
		return -1
	}
	var n int
	if raw, ok := en.InitialTwin.Tags["seq"]; ok && json.Unmarshal(raw, &n) == nil {
		return n
	}
	return -1
}

// captureWriter keeps the status and the body of a response; it lets the emulator hijack
// the connection to drop it (a fault), which leaves status 0.
type captureWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (c *captureWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	c.body.Write(b)
	return c.ResponseWriter.Write(b)
}

func (c *captureWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := c.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("tap: the connection cannot be hijacked")
	}
	return h.Hijack()
}

func (c *captureWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
