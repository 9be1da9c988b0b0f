package dlqcli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dlq/dlqtest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/nats-io/nats.go/jetstream.(*orderedConsumer).reset.func1"),
	)
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const primary = "cHJpbWFyeS1zZWNyZXQ="

func eventBytes(id, op string) []byte {
	return fmt.Appendf(nil, `{"specversion":"1.0","id":"ev-%s-%s","source":"erp","type":"dpsync.enrollment","data":{"operation":%q,"enrollment":{"registrationId":%q,"attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":%q,"secondaryKey":"c2Vjb25kYXJ5LXNlY3JldA=="}},"initialTwin":{"tags":{"line":7}}}}}`, id, op, op, id, primary)
}

type fixture struct {
	url  string
	js   jetstream.JetStream
	seqs []uint64
}

// setup stores five letters: dev-1's failed create and its held update, a transient
// group letter with a redrive history, an invalid event and a TPM enrollment.
func setup(t *testing.T) *fixture {
	t.Helper()
	srv := dlqtest.Start(t)
	js := srv.Connect(t)
	ctx := context.Background()
	if _, err := dlq.EnsureStream(ctx, js, dlq.StreamConfig{MemoryStorage: true}); err != nil {
		t.Fatal(err)
	}
	dlqtest.EventsStream(t, js, "", time.Hour)
	pub, err := dlq.NewPublisher(js, dlq.PublisherOptions{WorkerID: "worker-a"})
	if err != nil {
		t.Fatal(err)
	}
	base := func(key string, seq uint64, op string) dlq.Letter {
		kind, id, _ := strings.Cut(key, "/")
		return dlq.Letter{
			Data: eventBytes(id, op), OriginStream: "DPS_EVENTS", OriginSubject: "dpsync.events." + kind + "." + id,
			OriginSeq: seq, Position: seq, Key: key, Kind: kind, Operation: op, EventID: "ev-" + id + "-" + op,
		}
	}
	create := base("enrollment/dev-1", 11, "create")
	create.Class, create.Code, create.Status, create.Attempts = dlq.ClassPermanent, 409201, 409, 1
	create.Reason = "DPS 409201: enrollment dev-1 already exists"
	create.FirstFailure, create.LastFailure = t0.Add(-3*time.Hour), t0.Add(-3*time.Hour)
	create.Traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

	held := base("enrollment/dev-1", 12, "update")
	held.Class = dlq.ClassHeld
	held.LastFailure = t0.Add(-3*time.Hour + time.Second)
	held.Reason = "held behind dead letter 1 (DPS 409201: enrollment dev-1 already exists)"

	group := base("group/line-a", 13, "update")
	group.Data = []byte(`{"specversion":"1.0","id":"g1","data":{"operation":"update","enrollmentGroup":{"enrollmentGroupId":"line-a","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"Z3JvdXAtc2VjcmV0","secondaryKey":""}}}}}`)
	group.Class, group.Status, group.Attempts, group.Redrives = dlq.ClassTransient, 503, 7, 1
	group.Reason = "DPS unavailable (503) after 7 attempts"
	group.FirstFailure, group.LastFailure = t0.Add(-26*time.Hour), t0.Add(-20*time.Minute)
	group.History = []dlq.Failure{{Class: dlq.ClassTransient, Status: 503, Attempts: 6, Reason: "DPS unavailable (503)", First: t0.Add(-26 * time.Hour), When: t0.Add(-25 * time.Hour)}}

	invalid := dlq.Letter{Data: []byte(`{"id": "x", "primaryKey": "bm90LWpzb24tc2VjcmV0", oops`), OriginStream: "DPS_EVENTS",
		OriginSubject: "dpsync.events.enrollment.bad", OriginSeq: 14, Position: 14, Key: "enrollment/bad",
		Class: dlq.ClassInvalid, Attempts: 1, Reason: "event is not JSON: invalid character 'o' looking for beginning of object key string",
		FirstFailure: t0.Add(-9 * 24 * time.Hour), LastFailure: t0.Add(-9 * 24 * time.Hour)}

	tpm := base("enrollment/tpm-9", 15, "create")
	tpm.Data = []byte(`{"specversion":"1.0","id":"t9","data":{"operation":"create","enrollment":{"registrationId":"tpm-9","attestation":{"type":"tpm","tpm":{"endorsementKey":"AToAAQALAAMAsgAgg3GXZ0SEs","storageRootKey":"AToAAQALAAMAsgAgXYZ"}}}}}`)
	tpm.Class, tpm.Code, tpm.Status, tpm.Attempts = dlq.ClassPermanent, 400004, 400, 1
	tpm.Reason = "DPS 400004: invalid endorsement key"
	tpm.FirstFailure, tpm.LastFailure = t0.Add(-72*time.Hour), t0.Add(-72*time.Hour)

	f := &fixture{url: srv.URL(), js: js}
	for _, l := range []dlq.Letter{create, held, group, invalid, tpm} {
		seq, err := pub.Publish(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		f.seqs = append(f.seqs, seq)
	}
	return f
}

type result struct {
	code           int
	stdout, stderr string
}

// output is stdout, then stderr under a marker if there is any.
func (r result) output() string {
	if r.stderr == "" {
		return r.stdout
	}
	return r.stdout + "--- stderr\n" + r.stderr
}

func (f *fixture) run(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), args, Env{
		Stdin:  strings.NewReader(stdin),
		Stdout: &out,
		Stderr: &errOut,
		Connect: func(ctx context.Context) (jetstream.JetStream, func(), error) {
			return f.js, func() {}, nil
		},
		Now: func() time.Time { return t0 },
	})
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

var storedRe = regexp.MustCompile(`(Stored:\s+)\S+ \([^)]*\)|("stored": )"[^"]*"`)

// golden compares got with testdata/<name>.golden (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	got = storedRe.ReplaceAllString(got, "${1}${2}<stored>")
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s: got\n%s\nwant\n%s", name, got, want)
	}
}

func TestOutputs(t *testing.T) {
	f := setup(t)
	tests := []struct {
		name  string
		stdin string
		args  []string
	}{
		{"list", "", []string{"list"}},
		{"list_filtered", "", []string{"list", "--key", "dev-*", "--since", "4h", "--limit", "5"}},
		{"list_json", "", []string{"list", "--class", "permanent", "--json"}},
		{"list_empty", "", []string{"list", "--code", "412002"}},
		{"show", "", []string{"show", strconv.FormatUint(f.seqs[0], 10)}},
		{"show_group", "", []string{"show", strconv.FormatUint(f.seqs[2], 10)}},
		{"show_invalid", "", []string{"show", strconv.FormatUint(f.seqs[3], 10)}},
		{"show_tpm_json", "", []string{"show", strconv.FormatUint(f.seqs[4], 10), "--json"}},
		{"stats", "", []string{"stats"}},
		{"stats_json", "", []string{"stats", "--json"}},
		{"replay_dry", "", []string{"replay", "--code", "409201", "--as", "update", "--dry-run"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.run(t, tt.stdin, tt.args...)
			if r.code != 0 {
				t.Fatalf("exit code: got %d, want 0 (stderr %q)", r.code, r.stderr)
			}
			golden(t, tt.name, r.output())
		})
	}
}

func TestSecretsMasked(t *testing.T) {
	f := setup(t)
	secrets := []string{primary, "c2Vjb25kYXJ5LXNlY3JldA==", "Z3JvdXAtc2VjcmV0", "bm90LWpzb24tc2VjcmV0", "AToAAQALAAMAsgAgg3GXZ0SEs", "AToAAQALAAMAsgAgXYZ"}
	var all strings.Builder
	for _, s := range f.seqs {
		for _, extra := range [][]string{nil, {"--json"}} {
			r := f.run(t, "", append([]string{"show", strconv.FormatUint(s, 10)}, extra...)...)
			all.WriteString(r.stdout + r.stderr)
		}
	}
	for _, args := range [][]string{{"list"}, {"list", "--json"}, {"stats"}, {"replay", "--dry-run"}} {
		r := f.run(t, "", args...)
		all.WriteString(r.stdout + r.stderr)
	}
	for _, s := range secrets {
		if strings.Contains(all.String(), s) {
			t.Errorf("output contains the secret %q", s)
		}
	}
	r := f.run(t, "", "show", "--show-secrets", strconv.FormatUint(f.seqs[0], 10))
	if !strings.Contains(r.stdout, primary) {
		t.Errorf("--show-secrets: got\n%s\nwant the primary key shown", r.stdout)
	}
}

func TestPurge(t *testing.T) {
	f := setup(t)
	// Declined: nothing removed.
	r := f.run(t, "n\n", "purge", "--class", "invalid")
	if r.code != 1 || !strings.Contains(r.stderr, "Purge 1 letter? [y/N]") || !strings.Contains(r.stderr, "nothing removed") {
		t.Errorf("declined purge: got %d %q, want exit 1 after the question", r.code, r.stderr)
	}
	r = f.run(t, "y\n", "purge", "--class", "invalid")
	if r.code != 0 {
		t.Fatalf("purge: got exit %d, stderr %q", r.code, r.stderr)
	}
	golden(t, "purge", r.output())
	r = f.run(t, "", "purge", "--key", "group/*", "--yes")
	if r.code != 0 || strings.Contains(r.stderr, "[y/N]") {
		t.Errorf("purge --yes: got %d %q, want no question", r.code, r.stderr)
	}
	golden(t, "purge_yes", r.output())
	r = f.run(t, "", "list")
	if strings.Contains(r.stdout, "group/line-a") || strings.Contains(r.stdout, "enrollment/bad") {
		t.Errorf("after purge: got\n%s\nwant the purged letters gone", r.stdout)
	}
}

// waitLineRe matches the progress line of a wait for a worker longer than a second, which
// a loaded machine may print.
var waitLineRe = regexp.MustCompile(`(?m)^replay: waiting .*\n`)

func TestReplay(t *testing.T) {
	f := setup(t)
	settler := dlqtest.StartSettler(t, f.js, dlqtest.SettlerOptions{})
	r := f.run(t, "", "replay", "--key", "dev-1", "--as", "update")
	if r.code != 0 {
		t.Fatalf("replay: got exit %d, stderr %q", r.code, r.stderr)
	}
	r.stderr = waitLineRe.ReplaceAllString(r.stderr, "")
	golden(t, "replay", r.output())
	events, err := f.js.Stream(context.Background(), "DPS_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	msgs := dlqtest.Messages(t, events)
	var ops []string
	for _, m := range msgs {
		op := regexp.MustCompile(`"operation":"(\w+)"`).FindSubmatch(m.Data)
		ops = append(ops, m.Header.Get(dlq.HeaderPosition)+":"+string(op[1]))
	}
	if got, want := strings.Join(ops, " "), "11:update 12:update"; got != want {
		t.Errorf("replayed events: got %s, want %s", got, want)
	}
	// No worker: the replay waits --wait for the letter to be settled, then says so.
	settler.Stop()
	r = f.run(t, "", "replay", "--key", "group/*", "--wait", "200ms")
	want := regexp.MustCompile(`(?m)^failed  letter ` + strconv.FormatUint(f.seqs[2], 10) + ` of group/line-a was republished \(events #\d+\) but no worker settled it within 200ms — is a worker running and does it own the partition\? Re-run replay to continue: the republish is deduplicated$`)
	if r.code != 1 || !want.MatchString(r.stdout) || !strings.Contains(r.stderr, "1 letters failed") {
		t.Errorf("replay without a worker: got %d\n%s%s\nwant exit 1 and the letter that was not settled", r.code, r.stdout, r.stderr)
	}
	// A failed replay: the origin subject has no stream.
	if err := f.js.DeleteStream(context.Background(), "DPS_EVENTS"); err != nil {
		t.Fatal(err)
	}
	r = f.run(t, "", "replay", "--key", "tpm-*")
	if r.code != 1 || !strings.Contains(r.stdout, "failed  "+strconv.FormatUint(f.seqs[4], 10)) {
		t.Errorf("failed replay: got %d\n%s%s\nwant exit 1 naming the letter", r.code, r.stdout, r.stderr)
	}
}

func TestProgressBar(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b, true)
	for i := 1; i <= 3; i++ {
		p.update(dlq.ReplayProgress{Done: i, Total: 3})
	}
	p.finish()
	want := "\rreplay [##########....................] 1/3\rreplay [####################..........] 2/3\rreplay [##############################] 3/3\n"
	if b.String() != want {
		t.Errorf("terminal bar: got %q, want %q", b.String(), want)
	}
	// A wait longer than a second names the letter; the line after it is padded over it.
	b.Reset()
	p = newProgress(&b, true)
	l := dlq.Letter{Seq: 17, Key: "enrollment/dev-1"}
	p.update(dlq.ReplayProgress{Done: 1, Total: 3, Waiting: []dlq.ReplayWait{{Letter: l, Event: 1234, For: 3500 * time.Millisecond}, {Letter: l, For: time.Second}}})
	p.update(dlq.ReplayProgress{Done: 2, Total: 3})
	p.finish()
	wait := "replay [##########....................] 1/3  waiting 3s for a worker to settle letter 17 of enrollment/dev-1 (+1 more)"
	next := "replay [####################..........] 2/3"
	want = "\r" + wait + "\r" + next + strings.Repeat(" ", len(wait)-len(next)) + "\n"
	if b.String() != want {
		t.Errorf("terminal bar with a wait: got %q, want %q", b.String(), want)
	}
	b.Reset()
	p = newProgress(&b, false)
	for i := 1; i <= 100; i++ {
		p.update(dlq.ReplayProgress{Done: i, Total: 100})
	}
	if n := strings.Count(b.String(), "\n"); n != 11 {
		t.Errorf("plain progress: got %d lines, want 11 (the first letter, then every 10 %%):\n%s", n, b.String())
	}
	// Plain: a wait is told when it passes a second and every 15 s after; a total that
	// grows (held letters joining) still ends with its last line.
	b.Reset()
	p = newProgress(&b, false)
	for _, pr := range []dlq.ReplayProgress{
		{Done: 1, Total: 2},
		{Done: 1, Total: 2, Waiting: []dlq.ReplayWait{{Letter: l, Event: 1234, For: time.Second}}},
		{Done: 1, Total: 2, Waiting: []dlq.ReplayWait{{Letter: l, Event: 1234, For: 2 * time.Second}}},
		{Done: 1, Total: 2, Waiting: []dlq.ReplayWait{{Letter: l, Event: 1234, For: 16 * time.Second}}},
		{Done: 2, Total: 2},
		{Done: 2, Total: 3},
		{Done: 3, Total: 3},
	} {
		p.update(pr)
	}
	want = "replay: 1/2 letters\n" +
		"replay: waiting 1s for a worker to settle letter 17 of enrollment/dev-1 (events #1234)\n" +
		"replay: waiting 16s for a worker to settle letter 17 of enrollment/dev-1 (events #1234)\n" +
		"replay: 2/2 letters\n" +
		"replay: 3/3 letters\n"
	if b.String() != want {
		t.Errorf("plain progress with a wait:\ngot\n%s\nwant\n%s", b.String(), want)
	}
}

func TestErrors(t *testing.T) {
	f := setup(t)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: worker dlq"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"list", "--since", "2x"}, 2, `--since: "2x" is neither a duration nor an RFC 3339 time`},
		{[]string{"list", "--until", "yesterday"}, 2, `--until: "yesterday" is neither a duration nor an RFC 3339 time`},
		{[]string{"list", "--since", "1h", "--until", "2h"}, 2, "is not before until"},
		{[]string{"stats", "--class", "broken"}, 2, `--class: "broken" is not one of transient, permanent, invalid, held`},
		{[]string{"purge", "--code", "abc"}, 2, `--code: "abc" is not a DPS error code`},
		{[]string{"list", "--key", "[dev"}, 2, `key glob "[dev"`},
		{[]string{"list", "--limit", "-3"}, 2, "--limit: -3 is negative"},
		{[]string{"list", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"list", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"replay", "--as", "upsert"}, 2, `--as: "upsert" is not one of create, update, updateIfMatchETag, delete`},
		{[]string{"replay", "--wait", "0s"}, 2, `--wait: 0s is not positive`},
		{[]string{"show"}, 2, "want one sequence number"},
		{[]string{"show", "abc"}, 2, `"abc" is not a sequence number`},
		{[]string{"show", "999"}, 1, "dlq show: dead letter 999: not found"},
		{[]string{"list", "--stream", "NOPE"}, 1, "dlq list: dlq stream NOPE not found"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := f.run(t, "", tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("got exit %d, stderr %q; want exit %d containing %q", r.code, r.stderr, tt.code, tt.want)
			}
		})
	}
	if r := f.run(t, "", "list", "-h"); r.code != 0 || !strings.Contains(r.stderr, "-since") {
		t.Errorf("list -h: got %d %q, want the flags and exit 0", r.code, r.stderr)
	}
}

func TestUnreachableServer(t *testing.T) {
	var errOut bytes.Buffer
	code := Main(context.Background(), []string{"list"}, Env{
		Stderr: &errOut,
		Connect: func(ctx context.Context) (jetstream.JetStream, func(), error) {
			nc, err := nats.Connect("nats://127.0.0.1:1", nats.Timeout(time.Second))
			if err != nil {
				return nil, nil, fmt.Errorf("nats://127.0.0.1:1: %w", err)
			}
			nc.Close()
			return nil, nil, fmt.Errorf("unexpected connection")
		},
	})
	if code != 1 || !strings.Contains(errOut.String(), "dlq list: connect: nats://127.0.0.1:1: nats: no servers available for connection") {
		t.Errorf("got exit %d, %q; want 1 and the connect error", code, errOut.String())
	}
}

// stringFlag is a flag.Value that keeps its value when registered again.
type stringFlag string

func (s *stringFlag) String() string     { return string(*s) }
func (s *stringFlag) Set(v string) error { *s = stringFlag(v); return nil }

// The connection flags (Env.ConnFlags) may follow the command, and every usage text lists
// them.
func TestConnectionFlagsAfterTheCommand(t *testing.T) {
	f := setup(t)
	var url string
	env := func(out, errOut *bytes.Buffer) Env {
		return Env{
			Stdout: out, Stderr: errOut, Now: func() time.Time { return t0 },
			ConnFlags: func(fs *flag.FlagSet) {
				fs.Var((*stringFlag)(&url), "nats-url", "NATS server URLs")
			},
			Connect: func(ctx context.Context) (jetstream.JetStream, func(), error) {
				nc, err := nats.Connect(url)
				if err != nil {
					return nil, nil, err
				}
				js, err := jetstream.New(nc)
				return js, nc.Close, err
			},
		}
	}
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), []string{"stats", "--nats-url", f.url}, env(&out, &errOut)); code != 0 || !strings.Contains(out.String(), "5 dead letters") {
		t.Fatalf("stats --nats-url U: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if url != f.url {
		t.Errorf("url: got %q, want %q", url, f.url)
	}
	for _, args := range [][]string{{"help"}, {"--help"}, {"list", "-h"}, {}} {
		out.Reset()
		errOut.Reset()
		code := Main(context.Background(), args, env(&out, &errOut))
		text := out.String() + errOut.String()
		if !strings.Contains(text, "-nats-url") {
			t.Errorf("%v: usage lacks the connection flags:\n%s", args, text)
		}
		if wantCode := map[bool]int{true: 2, false: 0}[len(args) == 0]; code != wantCode {
			t.Errorf("%v: exit %d, want %d", args, code, wantCode)
		}
	}
}
