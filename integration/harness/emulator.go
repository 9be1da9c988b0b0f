package harness

import (
	"context"
	"net/http"

	"github.com/dpsync/dpsync/internal/emulator"
)

// EmulatorOptions configure the DPS emulator of a scenario.
type EmulatorOptions struct {
	// Seed makes the emulator's faults reproducible.
	Seed uint64
	// QuotaPerMinute of service operations (0 = off, so the worker's speed is measured,
	// not the quota's; scenarios that test throttling set it or inject 429 windows).
	QuotaPerMinute int
}

// Emulator is a running DPS emulator: what a worker needs to reach it, and a client for the
// checker and the fault injection.
type Emulator struct {
	// ConnectionString is a secret: give it to workers through DPSTarget only.
	ConnectionString string
	// CAFile is the emulator's certificate, for --dps-ca.
	CAFile string
	// Client reads state and drives the admin endpoints.
	Client *DPSClient
	// Server is the in-process emulator, for reads that must not count as DPS operations
	// (State, Counters) and cannot be refused by injected faults.
	Server *emulator.Server

	keyFile string // the certificate's private key, for taps
}

// Target is what a worker needs to reach the emulator directly.
func (e *Emulator) Target() DPSTarget {
	return DPSTarget{ConnectionString: e.ConnectionString, CAFile: e.CAFile}
}

// TargetVia is what a worker needs to reach the emulator through a proxy at hostPort. The
// emulator's certificate must be valid for 127.0.0.1 (the host does not change, the port
// does).
func (e *Emulator) TargetVia(hostPort string) DPSTarget {
	return DPSTarget{ConnectionString: WithHost(e.ConnectionString, hostPort), CAFile: e.CAFile}
}

// Host is the emulator's host:port.
func (e *Emulator) Host() string { return HostOf(e.ConnectionString) }

// SetFaults replaces the emulator's faults with the given configuration (PUT /admin/faults;
// the body is the emulator's fault document, see internal/emulator).
func (e *Emulator) SetFaults(ctx context.Context, faults any) error {
	return e.Client.Admin(ctx, http.MethodPut, "faults", faults, nil)
}

// ClearFaults removes every fault (DELETE /admin/faults).
func (e *Emulator) ClearFaults(ctx context.Context) error {
	return e.Client.Admin(ctx, http.MethodDelete, "faults", nil, nil)
}

// Counters returns the emulator's counters (GET /admin/counters) as decoded JSON.
func (e *Emulator) Counters(ctx context.Context) (map[string]any, error) {
	var c map[string]any
	err := e.Client.Admin(ctx, http.MethodGet, "counters", nil, &c)
	return c, err
}

// StartEmulator starts the DPS emulator in-process on a free 127.0.0.1 port (HTTPS with its
// own certificate); t.Cleanup stops it.
func StartEmulator(ctx context.Context, t TB, opts EmulatorOptions) (*Emulator, error) {
	return startEmulator(ctx, t, opts)
}
