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

// TestTap checks that a tap serves the emulator and records each write with its ids, seqs,
// status and failed bulk items.
func TestTap(t *testing.T) {
	emu, err := StartEmulator(t.Context(), t, EmulatorOptions{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	var log WriteLog
	target, err := emu.Tap(t, "w7", &log)
	if err != nil {
		t.Fatal(err)
	}
	c, err := dps.NewClientFromConnectionString(target.ConnectionString, &dps.ClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: emu.Server.Client()},
	})
	if err != nil {
		t.Fatal(err)
	}
	en := func(id string, seq int) dps.IndividualEnrollment {
		return dps.IndividualEnrollment{
			RegistrationID: id,
			Attestation:    &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey},
			InitialTwin:    &dps.InitialTwin{Tags: dps.TwinCollection{"seq": json.RawMessage(fmt.Sprint(seq))}},
		}
	}
	ctx := t.Context()
	if _, err := c.RunBulkOperation(ctx, dps.BulkModeCreate, []dps.IndividualEnrollment{en("A", 1), en("b", 2)}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RunBulkOperation(ctx, dps.BulkModeCreate, []dps.IndividualEnrollment{en("a", 3), en("c", 4)}, nil); err != nil {
		t.Fatal(err) // a exists: item error
	}
	if _, err := c.CreateOrUpdateEnrollment(ctx, en("c", 5), &dps.CreateOrUpdateEnrollmentOptions{IfMatch: to(azcore.ETagAny)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteEnrollment(ctx, "b", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetEnrollment(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	got := log.Writes()
	if len(got) != 4 {
		t.Fatalf("got %d writes %+v, want 4 (the GET is not a write)", len(got), got)
	}
	for i, want := range []struct {
		method string
		ids    []string
		seqs   []int
		failed []string
	}{
		{"POST", []string{"a", "b"}, []int{1, 2}, nil},
		{"POST", []string{"a", "c"}, []int{3, 4}, []string{"a"}},
		{"PUT", []string{"c"}, []int{5}, nil},
		{"DELETE", []string{"b"}, []int{-1}, nil},
	} {
		w := got[i]
		if w.Tap != "w7" || w.Method != want.method || fmt.Sprint(w.IDs) != fmt.Sprint(want.ids) ||
			fmt.Sprint(w.Seqs) != fmt.Sprint(want.seqs) || fmt.Sprint(w.Failed) != fmt.Sprint(want.failed) || w.Status/100 != 2 {
			t.Errorf("write %d: got %+v, want %s %v seqs %v failed %v from tap w7", i, w, want.method, want.ids, want.seqs, want.failed)
		}
	}
	if got[1].Applied("a") || !got[1].Applied("c") {
		t.Errorf("got Applied(a)=%v Applied(c)=%v for the second bulk, want false, true", got[1].Applied("a"), got[1].Applied("c"))
	}
}

func to[T any](v T) *T { return &v }
