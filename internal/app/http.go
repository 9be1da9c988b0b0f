package app

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"
)

// readiness is a named check for /readyz.
type readiness struct {
	name  string
	check func(ctx context.Context) error
}

// serveHTTP serves /healthz (the process runs), /readyz (every check passes) and /metrics.
// It returns the bound address.
func serveHTTP(addr string, metrics http.Handler, checks []readiness, td *teardown) (string, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		status := map[string]string{}
		code := http.StatusOK
		for _, c := range checks {
			if err := c.check(ctx); err != nil {
				status[c.name] = err.Error()
				code = http.StatusServiceUnavailable
				continue
			}
			status[c.name] = "ok"
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(status)
	})
	mux.Handle("GET /metrics", metrics)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	td.add("http server", func(ctx context.Context) error {
		err := srv.Shutdown(ctx)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	return ln.Addr().String(), nil
}
