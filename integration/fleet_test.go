package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dpsync/dpsync/integration/harness"
	"github.com/dpsync/dpsync/integration/workload"
	"github.com/dpsync/dpsync/internal/consumer"
)

// The process-level tests of issue 6 (scale-out): takeover after kill -9, one DPS quota for
// the fleet, and fencing of a worker paused past its lease.

const partitions = 16

// TestFleetTakeover: 3 workers, 10,000 events over 1,000 ids; kill -9 of one worker
// mid-run and a fresh one started. The final state equals the model, every event is applied
// or dead-lettered with a reason, the dead worker's partitions get new owners within the
// bound (--lease-ttl 8.5 s, the default, + detection ≤ 10 s), the fresh worker gets its fair share, and
// no worker ever writes to DPS for a partition it does not own.
func TestFleetTakeover(t *testing.T) {
	const leaseTTL, bound = 8500 * time.Millisecond, 10 * time.Second
	e := newEnv(t, envOptions{tap: true, worker: harness.WorkerSpec{
		LeaseTTL: leaseTTL, DPSTryTimeout: 3 * time.Second, AckWait: 5 * time.Second,
	}})
	for _, id := range []string{"a1", "a2", "a3"} {
		e.mustStartWorker(id)
	}
	leases := e.watchLeases()
	var (
		killedAt, freshReady time.Time
		victim               harness.Worker
		victimParts          []int
	)
	report := e.run(runSpec{
		workload: workloadOf(pick(10_000, 10_000), pick(1000, 1000)),
		publish:  workload.PublishOptions{Rate: pick(400.0, 400.0)},
		chaos: func(e *env) {
			if !e.sleep(8 * time.Second) {
				return
			}
			live := e.liveWorkers()
			victim = live[e.intn(len(live))]
			if err := victim.Kill(); err != nil {
				e.t.Errorf("kill %s: %v", victim.ID(), err)
				return
			}
			killedAt = time.Now()
			victimParts = leases.ownedBy(victim.ID(), killedAt, partitions)
			e.t.Logf("SIGKILL worker %s, which owned partitions %v", victim.ID(), victimParts)
			if _, err := e.startWorker("b1"); err != nil {
				e.t.Errorf("start the fresh worker: %v", err)
				return
			}
			freshReady = time.Now()
			e.t.Logf("fresh worker b1 ready %v after the kill", freshReady.Sub(killedAt).Round(time.Millisecond))
			// Let ownership settle while events still flow.
			e.sleep(bound + 5*time.Second)
		},
		converge: pick(3*time.Minute, 10*time.Minute),
	})
	if victim == nil {
		return
	}
	if len(victimParts) == 0 {
		t.Fatalf("worker %s owned no partition when it was killed", victim.ID())
	}
	took, all := leases.takenOver(victimParts, victim.ID(), killedAt)
	var worst time.Duration
	for _, d := range took {
		worst = max(worst, d)
	}
	t.Logf("takeover after kill -9 of %s: %d partitions, slowest %v (bound %v): %v", victim.ID(), len(victimParts), worst.Round(time.Millisecond), bound, roundAll(took))
	if !all {
		t.Errorf("got partitions of %s taken over %v, want all of %v", victim.ID(), roundAll(took), victimParts)
	}
	if worst > bound {
		t.Errorf("got takeover in %v, want ≤ %v (--lease-ttl %v + one renewal)", worst, bound, leaseTTL)
	}
	// The fresh worker's fair share (⌊16/3⌋ = 5) once the dead member expired: within the
	// join bound after both it was ready and the takeover.
	share := partitions / 3
	from := killedAt.Add(worst)
	if freshReady.After(from) {
		from = freshReady
	}
	if when, ok := leases.reachedShare("b1", share, partitions, freshReady); !ok {
		t.Errorf("fresh worker b1 never owned %d partitions", share)
	} else {
		t.Logf("fresh worker b1 owned its fair share (%d) %v after it was ready, %v after the takeover", share,
			when.Sub(freshReady).Round(time.Millisecond), when.Sub(from).Round(time.Millisecond))
		if d := when.Sub(from); d > bound {
			t.Errorf("got the fresh worker's fair share %v after the takeover, want ≤ %v", d, bound)
		}
	}
	if stale := staleWrites(e.writes.Writes(), leases, e.partitionOfKeys()); len(stale) > 0 {
		t.Errorf("%d writes for partitions the writer did not own, e.g.:\n%s", len(stale), strings.Join(stale[:min(10, len(stale))], "\n"))
	}
	t.Logf("%d writes checked against the lease history; %d events applied, %d dead-lettered", len(e.writes.Writes()), report.Applied, report.DeadLettered)
}

func roundAll(m map[int]time.Duration) map[int]time.Duration {
	out := make(map[int]time.Duration, len(m))
	for k, v := range m {
		out[k] = v.Round(10 * time.Millisecond)
	}
	return out
}

// TestFleetPausedWorker: a worker frozen with SIGSTOP for longer than the takeover bound,
// then resumed with SIGCONT, must not send anything for the partitions it lost: every write
// that reaches DPS is checked against the lease in force when it arrived, and the final state
// must equal the model.
func TestFleetPausedWorker(t *testing.T) {
	const leaseTTL = 4 * time.Second
	e := newEnv(t, envOptions{tap: true, worker: harness.WorkerSpec{
		LeaseTTL: leaseTTL, DPSTryTimeout: time.Second, AckWait: 5 * time.Second,
	}})
	for _, id := range []string{"p1", "p2", "p3"} {
		e.mustStartWorker(id)
	}
	leases := e.watchLeases()
	pause := pick(3*leaseTTL, 5*leaseTTL)
	var (
		paused             harness.Worker
		stoppedAt, contAt  time.Time
		lost               []int
		tookDuringThePause bool
	)
	e.run(runSpec{
		workload: workloadOf(pick(5000, 20_000), pick(500, 2000)),
		publish:  workload.PublishOptions{Rate: pick(250.0, 400.0)},
		chaos: func(e *env) {
			if !e.sleep(6 * time.Second) {
				return
			}
			live := e.liveWorkers()
			paused = live[e.intn(len(live))]
			if err := paused.Stop(); err != nil {
				e.t.Errorf("SIGSTOP %s: %v", paused.ID(), err)
				return
			}
			stoppedAt = time.Now()
			lost = leases.ownedBy(paused.ID(), stoppedAt, partitions)
			e.t.Logf("SIGSTOP worker %s (partitions %v) for %v", paused.ID(), lost, pause)
			e.sleep(pause)
			took, all := leases.takenOver(lost, paused.ID(), stoppedAt)
			tookDuringThePause = all
			if err := paused.Cont(); err != nil {
				e.t.Errorf("SIGCONT %s: %v", paused.ID(), err)
			}
			contAt = time.Now()
			e.t.Logf("SIGCONT worker %s; its partitions were taken over after %v", paused.ID(), roundAll(took))
		},
		converge: pick(3*time.Minute, 10*time.Minute),
	})
	if paused == nil {
		return
	}
	// The checks below run also when the model check failed: they tell whether a stale
	// write explains it.
	if len(lost) == 0 {
		t.Fatalf("worker %s owned no partition when it was paused", paused.ID())
	}
	if !tookDuringThePause {
		t.Errorf("the partitions of the paused worker were not all taken over during the %v pause", pause)
	}
	writes := e.writes.Writes()
	stale := staleWrites(writes, leases, e.partitionOfKeys())
	if len(stale) > 0 {
		t.Errorf("%d writes for partitions the writer did not own, e.g.:\n%s", len(stale), strings.Join(stale[:min(10, len(stale))], "\n"))
	}
	after := 0
	for _, w := range writes {
		if w.Tap == paused.ID() && w.At.After(contAt) {
			after++
		}
	}
	log, _ := os.ReadFile(paused.LogFile())
	t.Logf("worker %s after SIGCONT: %d writes (all for partitions it owned again); log: %d × \"partition fenced\", %d × \"request not sent\"; %d writes checked",
		paused.ID(), after, strings.Count(string(log), "partition fenced"), strings.Count(string(log), "request not sent"), len(writes))
}

// TestFleetQuota: emulator quota 1,000 operations/min, 3 workers with --quota 1000 and a
// backlog: no calendar minute over the budget as the emulator counts it, 429 answers under
// 1 % of calls, and a drain rate of at least 90 % of the ceiling (10 items × budget per
// minute). The run must last more than a minute for a fleet pacing too fast to be caught
// (the emulator would throttle it), so the default backlog takes ~75 s at the ceiling.
func TestFleetQuota(t *testing.T) {
	const budget = 1000
	e := newEnv(t, envOptions{tap: true, quota: budget, worker: harness.WorkerSpec{Quota: budget}})
	// The backlog goes into the stream before any worker runs: create the stream as the
	// worker would (it checks and keeps it).
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	if _, err := consumer.EnsureStream(ctx, e.js, consumer.StreamConfig{Replicas: 3, Partitions: partitions}); err != nil {
		t.Fatal(err)
	}
	cancel()
	n := pick(12_000, 30_000)
	// Mostly creates of distinct ids: full batches are possible, so the ceiling is reachable.
	events := workload.Generate(workload.Config{Seed: e.seed, Events: n, IDs: n})
	ledger := workload.NewLedger()
	start := time.Now()
	if err := workload.Publish(e.ctx, e.js, events, ledger, workload.PublishOptions{Concurrency: 32}); err != nil {
		t.Fatal(err)
	}
	t.Logf("backlog of %d events published in %v", ledger.Len(), time.Since(start).Round(time.Millisecond))

	for _, id := range []string{"q1", "q2", "q3"} {
		if _, err := e.startWorker(id); err != nil {
			t.Fatal(err)
		}
	}
	// Drained and equal to the model; the state is read from the emulator directly, so the
	// checker spends none of the quota.
	deadline := time.Now().Add(pick(3*time.Minute, 10*time.Minute))
	var report *workload.Report
	for {
		drained, _ := e.drained()
		if drained {
			lctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
			letters, err := workload.ReadDeadLetters(lctx, e.js, dlqStream)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			report = workload.Check(ledger, workload.StateOf(stateEnrollments(e.emu)), letters, workload.Hold)
			if report.OK() {
				break
			}
		}
		if time.Now().After(deadline) {
			c := e.emu.Server.Counters()
			t.Fatalf("backlog not drained within the bound: %d of %d writes seen, emulator: %d ops, %d throttled, %d bulk calls with %d items, calls %v, ops per minute %v; last report:\n%v",
				len(e.writes.Writes()), ledger.Len(), c.ServiceOps, c.Throttled, c.BulkCalls, c.BulkItems, c.Calls, c.ServiceOpsPerMinute, report)
		}
		e.sleep(500 * time.Millisecond)
	}
	t.Logf("drained:\n%s", report)
	writes := e.writes.Writes()
	if len(writes) == 0 {
		t.Fatal("no write reached DPS")
	}
	first, last := writes[0].At, writes[len(writes)-1].At
	c := e.emu.Server.Counters()
	calls, byStatus := 0, map[string]int{}
	for _, outcomes := range c.Calls {
		for status, k := range outcomes {
			calls += k
			byStatus[status] += k
		}
	}
	elapsed := last.Sub(first)
	perMin := float64(ledger.Len()) / elapsed.Minutes()
	ceiling := float64(10 * budget)
	var minutes []string
	for _, m := range c.ServiceOpsPerMinute {
		minutes = append(minutes, fmt.Sprintf("%s:%d", m.Minute.Format("15:04"), m.Ops))
	}
	t.Logf("emulator: %d calls %v, %d throttled (%.2f %%), %d bulk calls with %d items (%.1f per call), ops per minute %v (max %d), drain %v from first to last write = %.0f events/min (ceiling %.0f, %.0f %%)",
		calls, byStatus, c.Throttled, 100*float64(c.Throttled)/float64(max(1, calls)), c.BulkCalls, c.BulkItems,
		float64(c.BulkItems)/float64(max(1, c.BulkCalls)), minutes, c.MaxServiceOpsPerMinute, elapsed.Round(time.Millisecond), perMin, ceiling, 100*perMin/ceiling)
	if c.MaxServiceOpsPerMinute > budget {
		t.Errorf("got %d operations in one minute, want ≤ %d", c.MaxServiceOpsPerMinute, budget)
	}
	if float64(c.Throttled) >= 0.01*float64(calls) {
		t.Errorf("got %d × 429 of %d calls, want under 1 %%", c.Throttled, calls)
	}
	if perMin < 0.9*ceiling {
		t.Errorf("got %.0f events/min, want ≥ 90 %% of the ceiling %.0f", perMin, ceiling)
	}
	if elapsed < time.Minute {
		t.Logf("note: the drain lasted %v, under a minute: a pace error of the fleet would not show as 429", elapsed)
	}
	e.stopAll()
}
