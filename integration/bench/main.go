// Command bench compares dpsync with its baselines in one run, on the same events over the
// same ids:
//
//   - bare: a JetStream consume + ack loop (the broker's ceiling on this machine);
//   - dpsync: one worker in this process (app.Run) against the DPS emulator, quotas off;
//   - naive: one DPS call per event, ack after, one ordered reader per partition;
//   - backlog: one worker process draining a large backlog (its peak RSS);
//   - fleet: 3 worker processes against the emulator at the real quota (1,000 ops/min).
//
// It prints a table and writes the figures as JSON (-out). Run it from the repository root:
//
//	go run ./integration/bench                 # the full run (several minutes)
//	go run ./integration/bench -quick          # a short run
//
// See BENCHMARKS.md for what each figure means and how it is measured.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dpsync/dpsync/internal/batcher"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// config is the command line.
type config struct {
	Events      int
	Paced       int
	PacedFor    time.Duration
	Backlog     int
	Quota       int
	FleetFor    time.Duration
	FleetWarmup time.Duration
	Seed        uint64
	Scenarios   map[string]bool
	Out         string
	CPUProfile  string
	WorkerBin   string
	// WorkerLog receives the in-process worker's log at info level ("" = errors to stderr).
	WorkerLog string
	// DPSLatency is added by the emulator to every call of the dpsync and naive scenarios.
	DPSLatency time.Duration
	// WorkerStop is the --shutdown-timeout of worker processes.
	WorkerStop time.Duration
	TmpDir     string
	// Progress receives one line per phase (not a flag).
	Progress io.Writer
}

func (c config) logf(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, "bench:   "+format+"\n", args...)
	}
}

var allScenarios = []string{"bare", "dpsync", "naive", "backlog", "fleet"}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	quick := fs.Bool("quick", false, "short run: -n 5000 -backlog 20000 -fleet-duration 40s -fleet-warmup 10s -paced-for 3s (explicit flags still win)")
	fs.IntVar(&c.Events, "n", 20000, "events of the backlog the bare, dpsync and naive scenarios drain")
	fs.IntVar(&c.Paced, "paced", 20000, "most events of the paced (half-load) phase that measures latency")
	fs.DurationVar(&c.PacedFor, "paced-for", 10*time.Second, "length of the paced phase")
	fs.IntVar(&c.Backlog, "backlog", 200000, "events of the backlog scenario (the target is stated for 1,000,000)")
	fs.IntVar(&c.Quota, "quota", 1000, "DPS service operations per minute in the fleet scenario")
	fs.DurationVar(&c.FleetFor, "fleet-duration", 3*time.Minute, "measured window of the fleet scenario")
	fs.DurationVar(&c.FleetWarmup, "fleet-warmup", 20*time.Second, "warm-up of the fleet scenario before the window")
	seed := fs.Uint64("seed", 1, "workload seed")
	scen := fs.String("scenarios", strings.Join(allScenarios, ","), "scenarios to run, comma-separated")
	fs.StringVar(&c.Out, "out", filepath.Join("integration", "bench", "results", "latest.json"), "JSON output file")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the in-process dpsync scenario to this file")
	fs.StringVar(&c.WorkerBin, "worker", "", "prebuilt worker binary (default: build ./cmd/worker)")
	fs.StringVar(&c.WorkerLog, "worker-log", "", "file for the in-process dpsync worker's log at info level (default: errors only, to stderr)")
	fs.DurationVar(&c.DPSLatency, "dps-latency", 0, "latency the emulator adds to every DPS call in the dpsync and naive scenarios (0 = loopback speed; real DPS answers in tens of ms)")
	fs.DurationVar(&c.WorkerStop, "worker-shutdown-timeout", 5*time.Second, "--shutdown-timeout of worker processes (a paced worker with a backlog uses all of it)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		quickDefaults := map[string]func(){
			"n":              func() { c.Events = 5000 },
			"paced":          func() { c.Paced = 5000 },
			"paced-for":      func() { c.PacedFor = 3 * time.Second },
			"backlog":        func() { c.Backlog = 20000 },
			"fleet-duration": func() { c.FleetFor = 40 * time.Second },
			"fleet-warmup":   func() { c.FleetWarmup = 10 * time.Second },
		}
		for name, apply := range quickDefaults {
			if !set[name] {
				apply()
			}
		}
	}
	c.Seed = *seed
	c.Scenarios = map[string]bool{}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		known := false
		for _, k := range allScenarios {
			known = known || k == s
		}
		if !known {
			return c, fmt.Errorf("unknown scenario %q (known: %s)", s, strings.Join(allScenarios, ", "))
		}
		c.Scenarios[s] = true
	}
	if c.Events < 1 || c.Backlog < 1 || c.Quota < 1 {
		return c, errors.New("-n, -backlog and -quota must be positive")
	}
	return c, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	rep, err := bench(ctx, cfg, stderr)
	if rep != nil {
		rep.writeTable(stdout)
		if werr := rep.save(cfg.Out); werr != nil {
			err = errors.Join(err, werr)
		} else {
			fmt.Fprintf(stdout, "\nJSON written to %s\n", cfg.Out)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	return 0
}

// bench runs the selected scenarios in order and returns the report, also when one fails
// (its error is recorded in the report and returned joined).
func bench(ctx context.Context, cfg config, progress io.Writer) (*report, error) {
	dir, err := os.MkdirTemp(cfg.TmpDir, "dpsync-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cfg.TmpDir = dir
	cfg.Progress = progress
	rep := newReport(cfg)
	w := newWorkload(cfg.Seed, cfg.Events, cfg.Paced)
	rep.Mix = w.mix
	rep.RoundTripMs, err = dpsRoundTrip(ctx, cfg)
	rep.RoundTripMs += ms(cfg.DPSLatency)
	if err != nil {
		return rep, fmt.Errorf("measure DPS round trip: %w", err)
	}
	var bin string
	var errs []error
	step := func(name string, f func() (*result, error)) {
		if !cfg.Scenarios[name] || ctx.Err() != nil {
			return
		}
		fmt.Fprintf(progress, "bench: %s … (load %s)\n", name, loadAvg())
		t := time.Now()
		res, err := f()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			res = &result{Scenario: name, Error: err.Error()}
		}
		res.LoadAvg = loadAvg()
		rep.Results = append(rep.Results, res)
		fmt.Fprintf(progress, "bench: %s done in %v\n", name, time.Since(t).Round(time.Second))
	}
	step("bare", func() (*result, error) { return runBare(ctx, cfg, w) })
	step("dpsync", func() (*result, error) {
		return runDPSScenario(ctx, cfg, w, dpsScenario{name: "dpsync", title: "dpsync, 1 worker in-process, quotas off",
			consumers: consumerNames(), start: startDpsync, profile: cfg.CPUProfile})
	})
	step("naive", func() (*result, error) {
		return runDPSScenario(ctx, cfg, w, dpsScenario{name: "naive", title: "naive: 1 DPS call per event, ack after",
			consumers: partitionConsumers("naive-p"), start: startNaive})
	})
	if cfg.Scenarios["backlog"] || cfg.Scenarios["fleet"] {
		if bin, err = buildWorker(ctx, cfg); err != nil {
			errs = append(errs, fmt.Errorf("build worker: %w", err))
			cfg.Scenarios["backlog"], cfg.Scenarios["fleet"] = false, false
		}
	}
	step("backlog", func() (*result, error) { return runBacklog(ctx, cfg, bin) })
	step("fleet", func() (*result, error) { return runFleet(ctx, cfg, bin) })
	rep.finish()
	return rep, errors.Join(errs...)
}

// report is the JSON the program writes.
type report struct {
	Started     time.Time     `json:"started"`
	Machine     machine       `json:"machine"`
	Command     string        `json:"command"`
	Config      reportConfig  `json:"config"`
	Mix         mix           `json:"mix"`
	RoundTripMs float64       `json:"dpsRoundTripMsP50"`
	Results     []*result     `json:"results"`
	Ratios      ratios        `json:"ratios"`
	Targets     []target      `json:"targets"`
	Elapsed     time.Duration `json:"elapsedNs"`
}

type machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpuModel"`
	GoVersion string `json:"goVersion"`
	OS        string `json:"os"`
	LoadStart string `json:"loadAvgAtStart"`
}

type reportConfig struct {
	Events        int     `json:"events"`
	Paced         int     `json:"pacedMax"`
	PacedForSec   float64 `json:"pacedForSeconds"`
	Backlog       int     `json:"backlog"`
	Quota         int     `json:"quotaPerMinute"`
	FleetSec      float64 `json:"fleetWindowSeconds"`
	FleetWarmSec  float64 `json:"fleetWarmupSeconds"`
	Seed          uint64  `json:"seed"`
	Partitions    int     `json:"partitions"`
	LingerMs      float64 `json:"lingerMs"`
	DPSLatencyMs  float64 `json:"dpsAddedLatencyMs"`
	BatchMaxItems int     `json:"batchMaxItems"`
}

type ratios struct {
	DpsyncOverNaive float64 `json:"dpsyncOverNaive"`
	DpsyncOverBare  float64 `json:"dpsyncOverBare"`
	NaiveOpsPerEvt  float64 `json:"naiveOpsPerEventOverDpsync"`
}

// target is one goal of issue 8 and whether this run met it. Nothing asserts them.
type target struct {
	Name   string  `json:"name"`
	Goal   string  `json:"goal"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Met    bool    `json:"met"`
	Note   string  `json:"note,omitempty"`
	Missed bool    `json:"notMeasured,omitempty"`
}

// result is one scenario's figures.
type result struct {
	Scenario               string         `json:"scenario"`
	Title                  string         `json:"title"`
	Error                  string         `json:"error,omitempty"`
	Events                 int            `json:"events"`
	Seconds                float64        `json:"seconds"`
	EventsPerSec           float64        `json:"eventsPerSec"`
	DPS                    *dpsCost       `json:"dps,omitempty"`
	OpsPerEvent            float64        `json:"dpsOpsPerEvent"`
	ItemsPerBulkCall       float64        `json:"itemsPerBulkCall"`
	Latency                *latency       `json:"latency,omitempty"`
	PeakHeapMB             float64        `json:"peakHeapMB"`
	PeakRSSMB              float64        `json:"peakRSSMB"`
	MemScope               string         `json:"memScope"`
	WrongIDs               int            `json:"idsNotInExpectedState"`
	DeadLetters            int            `json:"deadLetters"`
	DeadLetterWhy          map[string]int `json:"deadLettersByReason,omitempty"`
	Workers                int            `json:"workers,omitempty"`
	WorkerRSSMB            []float64      `json:"workerRSSMB,omitempty"`
	WindowSeconds          float64        `json:"windowSeconds,omitempty"`
	OpsPerMinute           float64        `json:"opsPerMinute,omitempty"`
	QuotaUse               float64        `json:"quotaUse,omitempty"`
	ThrottledShare         float64        `json:"throttledShare"`
	CeilingEventsPerSec    float64        `json:"ceilingEventsPerSec,omitempty"`
	MixCeilingEventsPerSec float64        `json:"mixCeilingEventsPerSec,omitempty"`
	LoadAvg                string         `json:"loadAvg"`
}

type latency struct {
	RatePerSec float64 `json:"ratePerSec"`
	Events     int     `json:"events"`
	Samples    int     `json:"samples"`
	P50Ms      float64 `json:"p50Ms"`
	P99Ms      float64 `json:"p99Ms"`
	MaxMs      float64 `json:"maxMs"`
	Method     string  `json:"method"`
}

func newLatency(rate float64, events int, ds []time.Duration, method string) *latency {
	return &latency{RatePerSec: rate, Events: events, Samples: len(ds), P50Ms: ms(percentile(ds, 50)),
		P99Ms: ms(percentile(ds, 99)), MaxMs: ms(percentile(ds, 100)), Method: method}
}

func mb(b uint64) float64 { return float64(b*10/(1<<20)) / 10 }

func (r *result) setThroughput(events int, d time.Duration) {
	r.Seconds = d.Seconds()
	if d > 0 {
		r.EventsPerSec = float64(events) / d.Seconds()
	}
}

func (r *result) setCost(c dpsCost, events int) {
	r.DPS = &c
	if events > 0 {
		r.OpsPerEvent = float64(c.Calls) / float64(events)
	}
	if c.BulkCalls > 0 {
		r.ItemsPerBulkCall = float64(c.BulkItems) / float64(c.BulkCalls)
	}
	if c.Calls > 0 {
		r.ThrottledShare = float64(c.Throttled) / float64(c.Calls)
	}
}

func (r *result) setMem(m *memSampler, scope string) {
	heap, rss := m.finish()
	r.PeakHeapMB, r.PeakRSSMB, r.MemScope = mb(heap), mb(rss), scope
}

func newReport(cfg config) *report {
	bc := batcher.DefaultConfig()
	return &report{
		Started: time.Now().UTC(),
		Machine: machine{CPUs: runtime.NumCPU(), CPUModel: cpuModel(), GoVersion: runtime.Version(),
			OS: runtime.GOOS + "/" + runtime.GOARCH, LoadStart: loadAvg()},
		Command: "go run ./integration/bench " + strings.Join(os.Args[1:], " "),
		Config: reportConfig{Events: cfg.Events, Paced: cfg.Paced, PacedForSec: cfg.PacedFor.Seconds(), Backlog: cfg.Backlog,
			Quota: cfg.Quota, FleetSec: cfg.FleetFor.Seconds(), FleetWarmSec: cfg.FleetWarmup.Seconds(), Seed: cfg.Seed,
			Partitions: partitions, LingerMs: ms(bc.Linger), DPSLatencyMs: ms(cfg.DPSLatency), BatchMaxItems: bc.MaxItems},
	}
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func (rep *report) get(name string) *result {
	for _, r := range rep.Results {
		if r.Scenario == name && r.Error == "" {
			return r
		}
	}
	return nil
}

// finish computes the ratios and the targets of issue 8.
func (rep *report) finish() {
	rep.Elapsed = time.Since(rep.Started)
	d, n, b := rep.get("dpsync"), rep.get("naive"), rep.get("bare")
	if d != nil && n != nil && n.EventsPerSec > 0 {
		rep.Ratios.DpsyncOverNaive = d.EventsPerSec / n.EventsPerSec
		if d.OpsPerEvent > 0 {
			rep.Ratios.NaiveOpsPerEvt = n.OpsPerEvent / d.OpsPerEvent
		}
	}
	if d != nil && b != nil && b.EventsPerSec > 0 {
		rep.Ratios.DpsyncOverBare = d.EventsPerSec / b.EventsPerSec
	}
	add := func(name, goal string, have bool, value float64, unit string, met bool, note string) {
		if !have {
			rep.Targets = append(rep.Targets, target{Name: name, Goal: goal, Missed: true, Note: "scenario not run or failed"})
			return
		}
		rep.Targets = append(rep.Targets, target{Name: name, Goal: goal, Value: value, Unit: unit, Met: met, Note: note})
	}
	// Items per call under sustained load: the backlog drains (dpsync in-process and the
	// backlog process) are sustained load.
	if d != nil {
		add("items per DPS bulk call (dpsync, sustained)", "≥ 9.5", true, d.ItemsPerBulkCall, "items", d.ItemsPerBulkCall >= 9.5, "")
		add("events/s, 1 worker, quotas off", "≥ 20000", true, d.EventsPerSec, "events/s", d.EventsPerSec >= 20000, "")
	} else {
		add("items per DPS bulk call (dpsync, sustained)", "≥ 9.5", false, 0, "", false, "")
		add("events/s, 1 worker, quotas off", "≥ 20000", false, 0, "", false, "")
	}
	add("dpsync / naive events/s", "≥ 10", d != nil && n != nil, rep.Ratios.DpsyncOverNaive, "×", rep.Ratios.DpsyncOverNaive >= 10, "")
	if d != nil && d.Latency != nil {
		bound := rep.Config.LingerMs + rep.RoundTripMs + 10
		add("p99 event→applied at half load", fmt.Sprintf("≤ linger %.0f ms + DPS round trip %.1f ms + 10 ms = %.1f ms", rep.Config.LingerMs, rep.RoundTripMs, bound),
			true, d.Latency.P99Ms, "ms", d.Latency.P99Ms <= bound, fmt.Sprintf("at %.0f events/s", d.Latency.RatePerSec))
	} else {
		add("p99 event→applied at half load", "≤ linger + round trip + 10 ms", false, 0, "", false, "")
	}
	if bl := rep.get("backlog"); bl != nil {
		note := ""
		if rep.Config.Backlog < 1_000_000 {
			note = fmt.Sprintf("measured with a %d-event backlog, not 1,000,000 (-backlog)", rep.Config.Backlog)
		}
		add("worker RSS while a backlog drains", "≤ 150 MB", true, bl.PeakRSSMB, "MB", bl.PeakRSSMB <= 150, note)
	} else {
		add("worker RSS while a backlog drains", "≤ 150 MB", false, 0, "", false, "")
	}
	if f := rep.get("fleet"); f != nil {
		add("quota use, 3 workers", "≥ 95 % of the quota", true, 100*f.QuotaUse, "%", f.QuotaUse >= 0.95,
			fmt.Sprintf("%.0f ops/min of %d; %.1f events/s applied vs ceiling %.0f/s at 10 items per call (%.1f/s at this mix's %.2f ops/event)",
				f.OpsPerMinute, rep.Config.Quota, f.EventsPerSec, f.CeilingEventsPerSec, f.MixCeilingEventsPerSec, f.OpsPerEvent))
		add("calls throttled, 3 workers", "< 1 %", true, 100*f.ThrottledShare, "%", f.ThrottledShare < 0.01, "")
	} else {
		add("quota use, 3 workers", "≥ 95 % of the quota", false, 0, "", false, "")
		add("calls throttled, 3 workers", "< 1 %", false, 0, "", false, "")
	}
}

func (rep *report) save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func (rep *report) writeTable(w io.Writer) {
	fmt.Fprintf(w, "\ndpsync bench — %d CPUs (%s), %s, load at start %s; mix: %d creates, %d updates w/o etag, %d updates of absent ids, %d updateIfMatchETag, %d deletes over %d ids (%d touched ≥ 2×)\n\n",
		rep.Machine.CPUs, rep.Machine.CPUModel, rep.Machine.GoVersion, rep.Machine.LoadStart,
		rep.Mix.Creates, rep.Mix.Updates, rep.Mix.CreatesByUpd, rep.Mix.IfMatch, rep.Mix.Deletes, rep.Mix.DistinctIDs, rep.Mix.IDsTouched2Up)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tevents\tevents/s\tDPS ops/event\titems/bulk call\tp50 ms\tp99 ms\tpeak heap MB\tpeak RSS MB\t429 share\twrong ids\tDLQ\t")
	for _, r := range rep.Results {
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\tERROR: %s\t\t\t\t\t\t\t\t\t\t\t\n", r.Scenario, r.Error)
			continue
		}
		p50, p99 := "-", "-"
		if r.Latency != nil && r.Latency.Samples > 0 {
			p50, p99 = fmt.Sprintf("%.1f", r.Latency.P50Ms), fmt.Sprintf("%.1f", r.Latency.P99Ms)
		}
		ops, items, heap := "-", "-", "-"
		if r.DPS != nil {
			ops, items = fmt.Sprintf("%.3f", r.OpsPerEvent), fmt.Sprintf("%.2f", r.ItemsPerBulkCall)
		}
		if r.PeakHeapMB > 0 {
			heap = fmt.Sprintf("%.0f", r.PeakHeapMB)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.2f%%\t%d\t%d\t\n", r.Scenario, r.Events, r.EventsPerSec, ops, items,
			p50, p99, heap, r.PeakRSSMB, 100*r.ThrottledShare, r.WrongIDs, r.DeadLetters)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nratios: dpsync/naive %.1f× events/s, dpsync/bare %.2f×, naive uses %.1f× the DPS operations per event; DPS round trip (bulk of 10, p50) %.1f ms\n",
		rep.Ratios.DpsyncOverNaive, rep.Ratios.DpsyncOverBare, rep.Ratios.NaiveOpsPerEvt, rep.RoundTripMs)
	if f := rep.get("fleet"); f != nil {
		fmt.Fprintf(w, "fleet: %.0f ops/min (%.1f%% of %d), %.1f events/s applied vs ceiling %.0f/s (10 items per call) or %.1f/s at this mix's %.2f ops/event, %.2f%% of calls throttled; worker RSS %v MB\n",
			f.OpsPerMinute, 100*f.QuotaUse, rep.Config.Quota, f.EventsPerSec, f.CeilingEventsPerSec, f.MixCeilingEventsPerSec, f.OpsPerEvent, 100*f.ThrottledShare, f.WorkerRSSMB)
	}
	fmt.Fprintln(w, "\ntargets (reported, not asserted):")
	for _, t := range rep.Targets {
		mark := "MISSED"
		switch {
		case t.Missed:
			mark = "n/a"
		case t.Met:
			mark = "met"
		}
		line := fmt.Sprintf("  %-6s %-45s %s", mark, t.Name, t.Goal)
		if !t.Missed {
			line += fmt.Sprintf(": %.2f %s", t.Value, t.Unit)
		}
		if t.Note != "" {
			line += " (" + t.Note + ")"
		}
		fmt.Fprintln(w, line)
	}
}
