package harness

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/dpsync/dpsync/internal/emulator"
)

// startEmulator runs internal/emulator in-process (it is not the thing being crashed):
// emulator.Serve on a free 127.0.0.1 port, HTTPS with the emulator's own certificate.
func startEmulator(ctx context.Context, t TB, opts EmulatorOptions) (*Emulator, error) {
	dir := t.TempDir()
	srv, err := emulator.Serve(ctx, emulator.Options{
		Seed:   opts.Seed,
		Quotas: &emulator.Quotas{ServiceOpsPerMinute: opts.QuotaPerMinute},
	}, emulator.ServeOptions{
		Addr:     "127.0.0.1:0",
		CertFile: filepath.Join(dir, "emulator-cert.pem"),
		KeyFile:  filepath.Join(dir, "emulator-key.pem"), // for taps (tap.go)
	})
	if err != nil {
		return nil, fmt.Errorf("start emulator: %w", err)
	}
	t.Cleanup(func() { srv.Close() })
	e := &Emulator{ConnectionString: srv.ConnectionString(), CAFile: srv.CAFile(), Server: srv, keyFile: filepath.Join(dir, "emulator-key.pem")}
	if e.Client, err = NewDPSClient(e.ConnectionString, e.CAFile, "https"); err != nil {
		return nil, err
	}
	return e, nil
}
