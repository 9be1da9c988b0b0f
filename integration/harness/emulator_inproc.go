//go:build dpsync_emulator

package harness

import (
	"context"
	"fmt"

	"github.com/dpsync/dpsync/internal/emulator"
)

// startEmulator runs internal/emulator in-process (it is not the thing being crashed), per the
// contract in docs/ARCHITECTURE.md: emulator.Serve(ctx, Options, ServeOptions) → *Server with
// ConnectionString(), CAFile(), Close().
func startEmulator(ctx context.Context, t TB, opts EmulatorOptions) (*Emulator, error) {
	srv, err := emulator.Serve(ctx, emulator.Options{
		Seed:   opts.Seed,
		Quotas: &emulator.Quotas{ServiceOpsPerMinute: opts.QuotaPerMinute},
	}, emulator.ServeOptions{Addr: "127.0.0.1:0"})
	if err != nil {
		return nil, fmt.Errorf("start emulator: %w", err)
	}
	t.Cleanup(func() { srv.Close() })
	e := &Emulator{ConnectionString: srv.ConnectionString(), CAFile: srv.CAFile()}
	if e.Client, err = NewDPSClient(e.ConnectionString, e.CAFile, "https"); err != nil {
		return nil, err
	}
	return e, nil
}
