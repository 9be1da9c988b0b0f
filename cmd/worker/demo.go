package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/app"
	"github.com/dpsync/dpsync/internal/batcher"
	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/schemas"
)

// cmdDemo runs the worker's main job on the embedded default and shows it end to end: the
// bundled example events flow in, enrollments appear on the emulator, a bad example lands in
// the dead-letter stream, and a summary says so.
func cmdDemo(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("worker demo", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	dataDir := fs.String("data-dir", "", "keep the embedded JetStream's files (the events and dead letters) in this directory (default: a temporary directory, removed at exit)")
	events := fs.String("events", "", "JSONL events to publish (default: the bundled schemas/examples/demo.jsonl)")
	verbose := fs.Bool("v", false, "show the worker's logs")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up when the events are not processed by then")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: worker demo [flags]   (every flag also as DPSYNC_<NAME>)")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, e); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "worker demo: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if err := applyEnv(fs, e.getenv); err != nil {
		fmt.Fprintf(e.stderr, "worker demo: %v\n", err)
		return 2
	}
	data := schemas.DemoEvents()
	if *events != "" {
		b, err := os.ReadFile(*events)
		if err != nil {
			fmt.Fprintf(e.stderr, "worker demo: %v\n", err)
			return 1
		}
		data = b
	}
	dir := *dataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "dpsync-demo-")
		if err != nil {
			fmt.Fprintf(e.stderr, "worker demo: %v\n", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	logs := io.Discard
	if *verbose {
		logs = e.stderr
	}
	ready := make(chan app.Info, 1)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	go func() {
		runErr <- app.Run(runCtx, app.Options{
			DataDir:          dir,
			EmbeddedNATSAddr: "127.0.0.1:0",
			HTTPAddr:         "127.0.0.1:0",
			Logger:           newLogger(logs, "info"),
			OnReady:          func(i app.Info) { ready <- i },
			Batcher:          batcher.DefaultConfig(),
		})
	}()
	var info app.Info
	select {
	case info = <-ready:
	case err := <-runErr:
		fmt.Fprintf(e.stderr, "worker demo: worker did not start: %v\n", err)
		return 1
	case <-ctx.Done():
		return 1
	}
	fmt.Fprintf(e.stdout, "dpsync demo\n  embedded JetStream  %s  (stream %s, subjects %s.<enrollment|group>.<token>, token = the lower-cased id with . as %%2E)\n  embedded DPS        %s\n  metrics             http://%s/metrics\n\n",
		info.NATSURL, info.Stream, info.SubjectPrefix, info.EmulatorURL, info.HTTPAddr)
	code := demo(ctx, e, info, data, *timeout, *dataDir)
	stop()
	if err := <-runErr; err != nil {
		fmt.Fprintf(e.stderr, "worker demo: worker stopped with: %v\n", err)
		return 1
	}
	return code
}

// demo publishes data to the running worker described by info, waits until every event is
// settled and prints what DPS holds and the dead letters. keptDir is the --data-dir the
// worker's JetStream lives in ("" when it is a temporary directory).
func demo(ctx context.Context, e env, info app.Info, data []byte, timeout time.Duration, keptDir string) int {
	nc, err := nats.Connect(info.NATSURL)
	if err != nil {
		fmt.Fprintf(e.stderr, "worker demo: %v\n", err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(e.stderr, "worker demo: %v\n", err)
		return 1
	}
	rep, err := publishEvents(ctx, js, info.SubjectPrefix, bytes.NewReader(data), 64, nil)
	if err != nil {
		fmt.Fprintf(e.stderr, "worker demo: publish: %v\n", err)
		return 1
	}
	fmt.Fprintf(e.stdout, "published %d example events\n", rep.Published)
	for _, r := range rep.Rejected {
		fmt.Fprintf(e.stdout, "  not publishable (%s)\n", r)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := waitDrained(wctx, js, info.Stream); err != nil {
		fmt.Fprintf(e.stderr, "worker demo: %v\n", err)
		return 1
	}

	// What DPS holds now, read back through the DPS client.
	var enrollments []dps.IndividualEnrollment
	pager := info.DPS.NewEnrollmentQueryPager(nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			fmt.Fprintf(e.stderr, "worker demo: query enrollments: %v\n", err)
			return 1
		}
		enrollments = append(enrollments, page.Enrollments...)
	}
	sort.Slice(enrollments, func(i, j int) bool { return enrollments[i].RegistrationID < enrollments[j].RegistrationID })
	var groups []dps.EnrollmentGroup
	gp := info.DPS.NewEnrollmentGroupQueryPager(nil)
	for gp.More() {
		page, err := gp.NextPage(ctx)
		if err != nil {
			fmt.Fprintf(e.stderr, "worker demo: query groups: %v\n", err)
			return 1
		}
		groups = append(groups, page.EnrollmentGroups...)
	}
	store, err := dlq.OpenStore(ctx, js, dlq.StoreOptions{Stream: info.DLQStream})
	if err != nil {
		fmt.Fprintf(e.stderr, "worker demo: %v\n", err)
		return 1
	}
	letters, err := store.List(ctx, dlq.Filter{})
	if err != nil {
		fmt.Fprintf(e.stderr, "worker demo: %v\n", err)
		return 1
	}

	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "\nENROLLMENTS ON DPS (%d)\nREGISTRATION ID\tATTESTATION\tSTATUS\tHUB\n", len(enrollments))
	for _, en := range enrollments {
		att, status := "", "enabled"
		if en.Attestation != nil {
			att = string(en.Attestation.Type)
		}
		if en.ProvisioningStatus != nil {
			status = string(*en.ProvisioningStatus)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", en.RegistrationID, att, status, en.IotHubHostName)
	}
	fmt.Fprintf(w, "\nENROLLMENT GROUPS ON DPS (%d)\n", len(groups))
	for _, g := range groups {
		fmt.Fprintf(w, "%s\n", g.EnrollmentGroupID)
	}
	fmt.Fprintf(w, "\nDEAD LETTERS (%d)\nSEQ\tKEY\tOP\tCLASS\tREASON\n", len(letters))
	for _, l := range letters {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", l.Seq, l.Key, l.Operation, l.Class, l.Reason)
	}
	w.Flush()
	fmt.Fprintf(e.stdout, "\nsummary: %s published, %s and %s on the emulator, %s, 0 events waiting\n",
		plural(rep.Published, "event"), plural(len(enrollments), "enrollment"), plural(len(groups), "group"), plural(len(letters), "dead letter"))
	fmt.Fprint(e.stdout, demoNext(keptDir))
	if len(enrollments) == 0 {
		return 1
	}
	return 0
}

// demoNext is the demo's closing hint: how to look at its dead letters with `worker dlq`.
func demoNext(keptDir string) string {
	if keptDir == "" {
		return "next: this demo's JetStream lived in a temporary directory, removed now. To inspect the dead\n" +
			"letters with `worker dlq`, run `worker demo --data-dir DIR`, then `worker run --data-dir DIR`\n" +
			"(it serves that JetStream on nats://127.0.0.1:4222) and, in another shell, `worker dlq list`\n" +
			"and `worker dlq show SEQ` (`worker` is `go run ./cmd/worker` in a checkout).\n"
	}
	return fmt.Sprintf("next: the events and dead letters are kept in %s. Run `worker run --data-dir %s`\n"+
		"(it serves that JetStream on nats://127.0.0.1:4222) and, in another shell, `worker dlq list`\n"+
		"and `worker dlq show SEQ` (`worker` is `go run ./cmd/worker` in a checkout).\n", keptDir, keptDir)
}

// plural is "1 event", "2 events".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// waitDrained waits until every partition consumer of stream has delivered and seen
// acknowledged everything, twice in a row.
func waitDrained(ctx context.Context, js jetstream.JetStream, stream string) error {
	quiet := 0
	for {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		cfg := consumer.StreamConfig{Name: stream}.WithDefaults()
		left := uint64(0)
		found := 0
		for p := 0; p < cfg.Partitions; p++ {
			c, err := s.Consumer(ctx, cfg.ConsumerName(p))
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			ci, err := c.Info(ctx)
			if err != nil {
				return err
			}
			found++
			left += ci.NumPending + uint64(ci.NumAckPending)
		}
		if found == cfg.Partitions && left == 0 {
			quiet++
			if quiet >= 2 {
				return nil
			}
		} else {
			quiet = 0
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("events still waiting: %d (%w)", left, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
