package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestSmokeEveryScenario runs every scenario on a trivially small workload and checks the
// JSON report has the figures of issue 8. It asserts no timing: only that each scenario ran,
// applied the events correctly, and reported its fields.
//
// The in-process scenarios and the worker-process ones run as two invocations side by side
// (each worker stop takes seconds), so the test stays short.
func TestSmokeEveryScenario(t *testing.T) {
	common := []string{"-n", "200", "-paced", "100", "-paced-for", "200ms", "-backlog", "300",
		"-fleet-duration", "1s", "-fleet-warmup", "0s", "-worker-shutdown-timeout", "2s"}
	reports := make([]map[string]any, 2)
	t.Run("group", func(t *testing.T) {
		for i, scen := range []string{"bare,dpsync,naive", "backlog,fleet"} {
			t.Run(scen, func(t *testing.T) {
				t.Parallel()
				reports[i] = runReport(t, append(common, "-scenarios", scen))
			})
		}
	})
	if t.Failed() {
		return
	}
	seen := map[string]map[string]any{}
	for _, rep := range reports {
		for _, r := range rep["results"].([]any) {
			m := r.(map[string]any)
			seen[m["scenario"].(string)] = m
		}
	}
	checkScenarios(t, seen)
	ratios, _ := reports[0]["ratios"].(map[string]any)
	for _, k := range []string{"dpsyncOverNaive", "dpsyncOverBare"} {
		if v, _ := ratios[k].(float64); v <= 0 {
			t.Errorf("ratio %s = %v, want > 0", k, ratios[k])
		}
	}
	for i, rep := range reports {
		if targets, _ := rep["targets"].([]any); len(targets) != 7 {
			t.Errorf("report %d: %d targets, want the 7 of issue 8", i, len(targets))
		}
	}
}

// runReport runs the program with args and returns its JSON report.
func runReport(t *testing.T, args []string) map[string]any {
	t.Helper()
	out := filepath.Join(t.TempDir(), "bench.json")
	var stdout, stderr bytes.Buffer
	if code := run(append(args, "-out", out), &stdout, &stderr); code != 0 {
		t.Fatalf("run %v: exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", args, code, stdout.String(), stderr.String())
	}
	if !bytes.Contains(stdout.Bytes(), []byte("targets (reported, not asserted)")) {
		t.Errorf("stdout has no targets section:\n%s", stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]any
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	for _, k := range []string{"machine", "config", "mix", "dpsRoundTripMsP50", "results", "ratios", "targets"} {
		if _, ok := rep[k]; !ok {
			t.Errorf("report has no %q", k)
		}
	}
	return rep
}

func checkScenarios(t *testing.T, seen map[string]map[string]any) {
	t.Helper()
	for _, name := range allScenarios {
		r, ok := seen[name]
		if !ok {
			t.Errorf("scenario %s: not in the report", name)
			continue
		}
		if e, ok := r["error"]; ok {
			t.Errorf("scenario %s: error %v", name, e)
			continue
		}
		for _, k := range []string{"events", "eventsPerSec", "dpsOpsPerEvent", "itemsPerBulkCall", "peakRSSMB", "peakHeapMB", "throttledShare", "idsNotInExpectedState", "deadLetters"} {
			if _, ok := r[k]; !ok {
				t.Errorf("scenario %s: no %q", name, k)
			}
		}
		if r["events"].(float64) <= 0 || r["eventsPerSec"].(float64) <= 0 || r["peakRSSMB"].(float64) <= 0 {
			t.Errorf("scenario %s: events %v, events/s %v, peak RSS %v; want all > 0", name, r["events"], r["eventsPerSec"], r["peakRSSMB"])
		}
		if name != "bare" {
			if r["dpsOpsPerEvent"].(float64) <= 0 {
				t.Errorf("scenario %s: %v DPS operations per event, want > 0", name, r["dpsOpsPerEvent"])
			}
			if n := r["idsNotInExpectedState"].(float64); n != 0 {
				t.Errorf("scenario %s: %v ids not in the expected final state, want 0", name, n)
			}
			if n := r["deadLetters"].(float64); n != 0 {
				t.Errorf("scenario %s: %v dead letters (%v), want 0", name, n, r["deadLettersByReason"])
			}
		}
		switch name {
		case "bare", "dpsync", "naive":
			lat, _ := r["latency"].(map[string]any)
			for _, k := range []string{"p50Ms", "p99Ms", "samples", "method"} {
				if _, ok := lat[k]; !ok {
					t.Errorf("scenario %s: latency has no %q", name, k)
				}
			}
			if lat["samples"].(float64) <= 0 {
				t.Errorf("scenario %s: no latency samples", name)
			}
		case "fleet":
			for _, k := range []string{"opsPerMinute", "quotaUse", "ceilingEventsPerSec", "workerRSSMB"} {
				if _, ok := r[k]; !ok {
					t.Errorf("scenario fleet: no %q", k)
				}
			}
		}
	}
}
