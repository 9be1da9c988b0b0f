package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dlq/dlqtest"
)

// subprocessArgs names the environment variable that turns the test binary into the
// worker binary: its value is the JSON array of the command line.
const subprocessArgs = "DPSYNC_TEST_WORKER_ARGS"

func TestMain(m *testing.M) {
	if v := os.Getenv(subprocessArgs); v != "" {
		var args []string
		if err := json.Unmarshal([]byte(v), &args); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", subprocessArgs, err)
			os.Exit(2)
		}
		os.Args = append([]string{"worker"}, args...)
		os.Exit(mainWithSignals())
	}
	os.Exit(m.Run())
}

// workerProcess starts the worker (this test binary in worker mode) with args.
func workerProcess(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	b, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), subprocessArgs+"="+string(b))
	return cmd
}

var progressRe = regexp.MustCompile(`^replay: (\d+)/(\d+) letters`)

// A replay killed with SIGKILL half-way and run again: every letter is replayed exactly
// once (none lost, none doubled: a letter republished but not yet removed when the
// process died is deduplicated by its derived Nats-Msg-Id), and each key's events are in
// the events stream in their original order.
func TestReplayKilledHalfWayThenRerun(t *testing.T) {
	if testing.Short() {
		t.Skip("replays thousands of letters in a subprocess")
	}
	srv := startNATS(t, nil) // file storage
	url := srv.ClientURL()
	js := connectAdmin(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	events := eventsStream(t, js)
	dlqStream, err := dlq.EnsureStream(ctx, js, dlq.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// The worker's part of the replay protocol: a replay waits for each letter's event to
	// be settled (the letter removed) before the key's next letter.
	dlqtest.StartSettler(t, js, dlqtest.SettlerOptions{})
	pub, err := dlq.NewPublisher(js, dlq.PublisherOptions{WorkerID: "w"})
	if err != nil {
		t.Fatal(err)
	}
	// keys × perKey letters, the keys interleaved as a stream would hold them: per key a
	// failed create, then the held updates behind it.
	const keys, perKey = 40, 75
	const total = keys * perKey
	now := time.Now()
	pos := uint64(0)
	for i := 0; i < perKey; i++ {
		for k := 0; k < keys; k++ {
			pos++
			id := fmt.Sprintf("dev-%02d", k)
			l := dlq.Letter{
				Data:          fmt.Appendf(nil, `{"specversion":"1.0","id":"ev-%d","source":"t","type":"com.dpsync.enrollment.v1","data":{"operation":"update","enrollment":{"registrationId":%q}}}`, pos, id),
				OriginStream:  "DPS_EVENTS",
				OriginSubject: "dpsync.events.enrollment." + id,
				OriginSeq:     pos,
				Position:      pos,
				Key:           "enrollment/" + id,
				Kind:          "enrollment",
				Operation:     "update",
				EventID:       fmt.Sprintf("ev-%d", pos),
				Class:         dlq.ClassHeld,
				Reason:        "held behind dead letter",
				LastFailure:   now,
			}
			if i == 0 {
				l.Class, l.Operation, l.Code, l.Status, l.Attempts = dlq.ClassPermanent, "create", 409201, 409, 1
				l.Reason = "DPS 409201"
			}
			if _, err := pub.Publish(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func(s jetstream.Stream) uint64 {
		t.Helper()
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	if n := count(dlqStream); n != total {
		t.Fatalf("dead letters stored: %d, want %d", n, total)
	}

	// First run: SIGKILL once it reported a third of the letters.
	cmd := workerProcess(t, "dlq", "--nats-url", url, "replay")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	killed := false
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if m := progressRe.FindStringSubmatch(sc.Text()); m != nil {
			done, _ := strconv.Atoi(m[1])
			if !killed && done >= total/3 {
				if err := cmd.Process.Kill(); err != nil { // SIGKILL: no cleanup at all
					t.Fatal(err)
				}
				killed = true
			}
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("the replay ended before it could be killed (%v):\n%v", err, lines)
	}
	left := count(dlqStream)
	firstRun := count(events)
	t.Logf("killed after %d of %d letters were removed; %d events published (%d republished but not removed)", total-int(left), total, firstRun, int(firstRun)-(total-int(left)))
	if left == 0 || left == total {
		t.Fatalf("after the kill: %d of %d letters left, want the replay interrupted half-way", left, total)
	}

	// Second run, to the end.
	out, err := workerProcess(t, "dlq", "--nats-url", url, "replay").CombinedOutput()
	if err != nil {
		t.Fatalf("second replay: %v\n%s", err, out)
	}
	if n := count(dlqStream); n != 0 {
		t.Fatalf("after the second run: %d letters left, want 0\n%s", n, out)
	}

	// Exactly once, in order per key.
	info, err := events.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != total {
		t.Errorf("events stream: %d events, want %d (one per letter)", info.State.Msgs, total)
	}
	seen := map[string]int{}
	lastPos := map[string]uint64{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := events.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("event %d: %v", seq, err)
		}
		of := m.Header.Get(dlq.HeaderReplayOf)
		seen[of]++
		p, err := strconv.ParseUint(m.Header.Get(dlq.HeaderPosition), 10, 64)
		if err != nil {
			t.Fatalf("event %d: position %q", seq, m.Header.Get(dlq.HeaderPosition))
		}
		if p <= lastPos[m.Subject] {
			t.Errorf("%s: position %d after %d: the key's order is broken", m.Subject, p, lastPos[m.Subject])
		}
		lastPos[m.Subject] = p
	}
	if len(seen) != total {
		t.Errorf("distinct letters replayed: %d, want %d", len(seen), total)
	}
	for of, n := range seen {
		if n != 1 {
			t.Errorf("letter %s replayed %d times, want once", of, n)
		}
	}
	if len(lastPos) != keys {
		t.Errorf("keys in the events stream: %d, want %d", len(lastPos), keys)
	}
}
