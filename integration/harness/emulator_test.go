package harness

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/dpsync/dpsync/internal/dps"
)

// TestEmulatorQuery runs the checker's reader against the real in-process emulator: what a
// DPS client wrote comes back through the query API, and the admin endpoints answer.
func TestEmulatorQuery(t *testing.T) {
	emu, err := StartEmulator(t.Context(), t, EmulatorOptions{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	c, err := dps.NewClientFromConnectionString(emu.ConnectionString, &dps.ClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: emu.Server.Client()},
	})
	if err != nil {
		t.Fatal(err)
	}
	const n = 25
	for start := 0; start < n; start += dps.MaxBulkItems {
		var batch []dps.IndividualEnrollment
		for i := start; i < min(n, start+dps.MaxBulkItems); i++ {
			batch = append(batch, dps.IndividualEnrollment{
				RegistrationID: fmt.Sprintf("Dev-%02d", i),
				Attestation:    &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey},
				InitialTwin:    &dps.InitialTwin{Tags: dps.TwinCollection{"seq": json.RawMessage(fmt.Sprint(i))}},
			})
		}
		res, err := c.RunBulkOperation(t.Context(), dps.BulkModeCreate, batch, nil)
		if err != nil || !res.IsSuccessful {
			t.Fatalf("bulk create: %v, %+v", err, res)
		}
	}
	got, err := emu.Client.QueryEnrollments(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("got %d enrollments from the query, want %d", len(got), n)
	}
	st := stateSeqs(got)
	for i := range n {
		if s, ok := st[fmt.Sprintf("dev-%02d", i)]; !ok || s != i {
			t.Errorf("got seq %d (present %v) for dev-%02d, want %d", s, ok, i, i)
		}
	}
	counters, err := emu.Counters(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got := counters["bulkItems"]; got != float64(n) {
		t.Errorf("got bulkItems %v from /admin/counters, want %d", got, n)
	}
	if err := emu.SetFaults(t.Context(), map[string]any{"errorRates": map[string]float64{"*": 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := emu.Client.QueryEnrollments(t.Context()); err == nil {
		t.Error("got a query answered under a 100 % error rate, want an error")
	}
	if err := emu.ClearFaults(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := emu.Client.QueryEnrollments(t.Context()); err != nil {
		t.Errorf("got %v after clearing faults, want nil", err)
	}
	if err := emu.Client.Admin(t.Context(), http.MethodGet, "nope", nil, nil); err == nil {
		t.Error("got nil for an unknown admin path, want an error")
	}
}

// stateSeqs maps lower-cased ids to initialTwin.tags.seq.
func stateSeqs(es []dps.IndividualEnrollment) map[string]int {
	out := map[string]int{}
	for _, e := range es {
		var s int
		if e.InitialTwin != nil {
			_ = json.Unmarshal(e.InitialTwin.Tags["seq"], &s)
		}
		out[strings.ToLower(e.RegistrationID)] = s
	}
	return out
}
