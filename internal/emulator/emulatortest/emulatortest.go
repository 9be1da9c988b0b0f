// Package emulatortest starts DPS emulators for tests.
package emulatortest

import (
	"context"
	"strings"
	"testing"

	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/emulator/contract"
)

// New serves an emulator configured by opts over HTTPS on a free loopback port and closes
// it when the test ends. A zero opts.RuntimeRetryAfter becomes "Retry-After: 0" so device
// registrations do not wait; a nil opts.Quotas turns quotas off (tests that check quotas
// set them).
func New(t testing.TB, opts emulator.Options) *emulator.Server {
	t.Helper()
	if opts.RuntimeRetryAfter == 0 {
		opts.RuntimeRetryAfter = -1
	}
	if opts.Quotas == nil {
		opts.Quotas = &emulator.Quotas{}
	}
	s, err := emulator.Serve(context.Background(), opts, emulator.ServeOptions{CertFile: t.TempDir() + "/cert.pem"})
	if err != nil {
		t.Fatalf("start emulator: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close emulator: %v", err)
		}
	})
	return s
}

// Target describes s for the contract suite.
func Target(s *emulator.Server) contract.Target {
	p := s.Policies()[0]
	return contract.Target{
		BaseURL:    s.URL(),
		Client:     s.Client(),
		HostName:   strings.ToLower(s.HostName()),
		PolicyName: p.Name,
		PolicyKey:  p.Key,
		IDScope:    s.IDScope(),
		Runtime:    true,
		LinkedHubs: s.LinkedHubs(),
	}
}
