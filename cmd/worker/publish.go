package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/event"
)

// publishReport counts what publishEvents did.
type publishReport struct {
	Published  int
	Duplicates int // deduplicated by the stream (same Nats-Msg-Id within its window)
	Rejected   []string
}

// route is what a publisher needs to know of an event: where it goes and its id.
type route struct {
	subject string
	msgID   string
}

// routeEvent reads just enough of an event line to route it. Validation is the worker's
// job: an event with a routable id but bad content is published and dead-lettered there,
// with a reason, like any producer's.
func routeEvent(prefix string, line []byte) (route, error) {
	var env struct {
		ID   string `json:"id"`
		Type string `json:"type"`
		Data struct {
			Enrollment *struct {
				RegistrationID string `json:"registrationId"`
			} `json:"enrollment"`
			Group *struct {
				EnrollmentGroupID string `json:"enrollmentGroupId"`
			} `json:"enrollmentGroup"`
		} `json:"data"`
	}
	if err := json.Unmarshal(line, &env); err != nil {
		return route{}, fmt.Errorf("not a JSON event: %v", err)
	}
	var kind event.Kind
	var id string
	switch {
	case env.Data.Enrollment != nil:
		kind, id = event.KindEnrollment, env.Data.Enrollment.RegistrationID
	case env.Data.Group != nil:
		kind, id = event.KindGroup, env.Data.Group.EnrollmentGroupID
	default:
		return route{}, errors.New("data has neither enrollment nor enrollmentGroup: cannot route it")
	}
	if strings.TrimSpace(id) == "" {
		return route{}, fmt.Errorf("data.%s has no id: cannot route it", map[event.Kind]string{event.KindEnrollment: "enrollment.registrationId", event.KindGroup: "enrollmentGroup.enrollmentGroupId"}[kind])
	}
	if env.ID == "" {
		return route{}, errors.New("id: missing (it becomes Nats-Msg-Id, the stream's dedupe key)")
	}
	return route{subject: prefix + "." + string(kind) + "." + event.SubjectToken(id), msgID: env.ID}, nil
}

// publishEvents publishes JSONL events from r, each confirmed by the stream, at most
// window unconfirmed at a time. progress is called after every confirmation.
func publishEvents(ctx context.Context, js jetstream.JetStream, prefix string, r io.Reader, window int, progress func(done int)) (publishReport, error) {
	var rep publishReport
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	type inflight struct {
		line int
		f    jetstream.PubAckFuture
	}
	var pending []inflight
	settle := func(all bool) error {
		for len(pending) > 0 && (all || len(pending) >= window) {
			p := pending[0]
			select {
			case ack := <-p.f.Ok():
				if ack.Duplicate {
					rep.Duplicates++
				} else {
					rep.Published++
				}
			case err := <-p.f.Err():
				return fmt.Errorf("line %d: publish: %w", p.line, err)
			case <-ctx.Done():
				return ctx.Err()
			}
			pending = pending[1:]
			if progress != nil {
				progress(rep.Published + rep.Duplicates)
			}
		}
		return nil
	}
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		rt, err := routeEvent(prefix, []byte(text))
		if err != nil {
			rep.Rejected = append(rep.Rejected, fmt.Sprintf("line %d: %v", line, err))
			continue
		}
		msg := &nats.Msg{Subject: rt.subject, Data: []byte(text), Header: nats.Header{}}
		f, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(rt.msgID))
		if err != nil {
			return rep, fmt.Errorf("line %d: publish: %w", line, err)
		}
		pending = append(pending, inflight{line, f})
		if err := settle(false); err != nil {
			return rep, err
		}
	}
	if err := sc.Err(); err != nil {
		return rep, fmt.Errorf("read events: %w", err)
	}
	return rep, settle(true)
}

// publishFlags binds the flags of "worker publish": the NATS connection flags (shared with
// run and dlq), the subject prefix and the publish window.
func publishFlags(fs *flag.FlagSet, conn *natsFlags) (prefix *string, window *int) {
	conn.urls = urlList{defaultNATSURL}
	conn.register(fs, "NATS server `URLs`, comma-separated")
	prefix = fs.String("subject-prefix", "dpsync.events", "subject prefix of the events stream")
	window = fs.Int("window", 256, "publishes awaiting confirmation at once")
	return prefix, window
}

func cmdPublish(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("worker publish", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var conn natsFlags
	prefix, window := publishFlags(fs, &conn)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: worker publish [flags] FILE|-   (JSONL: one CloudEvents event per line)")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, e); !ok {
		return code
	}
	if err := applyEnv(fs, e.getenv); err != nil {
		fmt.Fprintf(e.stderr, "worker publish: %v\n", err)
		return 2
	}
	if fs.NArg() != 1 {
		fs.SetOutput(e.stderr)
		fs.Usage()
		return 2
	}
	if err := conn.resolve(e.getenv); err != nil {
		fmt.Fprintf(e.stderr, "worker publish: %v\n", err)
		return 2
	}
	in := e.stdin
	total := -1
	if name := fs.Arg(0); name != "-" {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintf(e.stderr, "worker publish: %v\n", err)
			return 1
		}
		defer f.Close()
		total = countLines(name)
		in = f
	}
	nc, err := conn.connect("dpsync publish")
	if err != nil {
		fmt.Fprintf(e.stderr, "worker publish: %v\n", err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(e.stderr, "worker publish: %v\n", conn.redact(err.Error()))
		return 1
	}
	bar := newProgress(e.stderr, "publish", total)
	rep, err := publishEvents(ctx, js, *prefix, in, *window, bar.set)
	bar.done()
	for _, r := range rep.Rejected {
		fmt.Fprintf(e.stderr, "rejected %s\n", r)
	}
	fmt.Fprintf(e.stdout, "published %d events to %s (%d deduplicated by the stream, %d rejected)\n", rep.Published, conn.urls.String(), rep.Duplicates, len(rep.Rejected))
	if err != nil {
		fmt.Fprintf(e.stderr, "worker publish: %v\n", conn.redact(err.Error()))
		return 1
	}
	if len(rep.Rejected) > 0 {
		return 1
	}
	return 0
}

func countLines(name string) int {
	f, err := os.Open(name)
	if err != nil {
		return -1
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" && !strings.HasPrefix(t, "#") {
			n++
		}
	}
	return n
}
