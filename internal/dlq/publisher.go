package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublisherOptions configure a Publisher.
type PublisherOptions struct {
	// Stream is the dead-letter stream (default "DPS_DLQ"). Publishes are refused unless
	// this stream stores them.
	Stream string
	// SubjectPrefix of the letters' subjects (default "dpsync.dlq").
	SubjectPrefix string
	// WorkerID names this worker in every letter. Required.
	WorkerID string
	// Index, if set, learns every published letter, so the worker's own letters hold later
	// events of their key at once.
	Index *HoldIndex
	// Now fills LastFailure (and FirstFailure) of letters that leave it zero
	// (default time.Now).
	Now func() time.Time
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Publisher publishes dead letters and waits for the stream's acknowledgement. It is safe
// for concurrent use.
type Publisher struct {
	js     jetstream.JetStream
	opts   PublisherOptions
	logger *slog.Logger
}

// NewPublisher returns a Publisher over js.
func NewPublisher(js jetstream.JetStream, opts PublisherOptions) (*Publisher, error) {
	if js == nil {
		return nil, errors.New("dlq publisher: no JetStream context")
	}
	if opts.Stream == "" {
		opts.Stream = DefaultStream
	}
	if opts.SubjectPrefix == "" {
		opts.SubjectPrefix = DefaultSubjectPrefix
	}
	if strings.ContainsAny(opts.SubjectPrefix, "*> ") {
		return nil, fmt.Errorf("dlq publisher: subject prefix %q must be a literal subject", opts.SubjectPrefix)
	}
	if strings.TrimSpace(opts.WorkerID) == "" {
		return nil, errors.New("dlq publisher: WorkerID is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Publisher{js: js, opts: opts, logger: opts.Logger.With("component", "dlq")}, nil
}

// MsgID is the Nats-Msg-Id of the letter of the event at originSeq of originStream. It is
// deterministic: if a worker crashes after publishing a letter and before acknowledging the
// event, the redelivered event's letter has the same id and the stream drops the copy
// (within its duplicate window).
func MsgID(originStream string, originSeq uint64) string {
	return "dlq." + originStream + "." + strconv.FormatUint(originSeq, 10)
}

// ReplayMsgID is the Nats-Msg-Id of the event republished from the letter at dlqSeq. It
// differs from the event's own id, so the events stream's duplicate window does not
// swallow the replay, and it is the same on every run, so an interrupted replay that is run
// again is deduplicated.
func ReplayMsgID(dlqSeq uint64) string { return "replay." + strconv.FormatUint(dlqSeq, 10) }

// parkMsgID is the Nats-Msg-Id of the letter that parks (replaces) the letter at dlqSeq.
func parkMsgID(dlqSeq uint64) string { return "park." + strconv.FormatUint(dlqSeq, 10) }

// Subject is the subject of a letter in the dead-letter stream:
// "<prefix>.<kind>.<token>", the last two tokens of its origin subject (the producer form
// "dpsync.events.<kind>.<token>"), so all letters of a key share one subject.
func Subject(prefix string, l Letter) string {
	if toks := strings.Split(l.OriginSubject, "."); len(toks) >= 3 && toks[len(toks)-1] != "" && toks[len(toks)-2] != "" {
		return prefix + "." + toks[len(toks)-2] + "." + toks[len(toks)-1]
	}
	kind, id, ok := strings.Cut(l.Key, "/")
	if !ok {
		kind, id = l.Kind, l.Key
	}
	if kind == "" {
		kind = "unknown"
	}
	if id == "" {
		id = "_"
	}
	return prefix + "." + token(kind) + "." + token(id)
}

// token makes s a single NATS subject token: lower case, with '.', wildcards, white space
// and '%' percent-encoded.
func token(s string) string {
	var b strings.Builder
	for _, c := range []byte(strings.ToLower(s)) {
		if c <= ' ' || c == '.' || c == '*' || c == '>' || c == '%' || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// prepare validates l and fills the worker and failure times.
func (p *Publisher) prepare(l Letter) (Letter, *nats.Msg, error) {
	switch {
	case l.OriginStream == "" || l.OriginSeq == 0:
		return l, nil, errors.New("dead letter: origin stream and sequence are required (they make its id)")
	case !l.Class.Valid():
		return l, nil, fmt.Errorf("dead letter: class %q is not transient, permanent, invalid or held", l.Class)
	}
	if l.Worker == "" {
		l.Worker = p.opts.WorkerID
	}
	if l.LastFailure.IsZero() {
		l.LastFailure = p.opts.Now()
	}
	if l.FirstFailure.IsZero() {
		l.FirstFailure = l.LastFailure
	}
	if l.TraceID == "" {
		l.TraceID = traceIDOf(l.Traceparent)
	}
	l.Subject = Subject(p.opts.SubjectPrefix, l)
	msg := &nats.Msg{Subject: l.Subject, Data: l.Data, Header: l.Header()}
	return l, msg, nil
}

// Publish publishes l (its Seq, Subject, Time and Size are ignored) with the deterministic
// id MsgID(l.OriginStream, l.OriginSeq) and returns the letter's sequence in the
// dead-letter stream once the stream acknowledged it; a duplicate returns the sequence of
// the letter already stored. Worker and failure times default from the options. On error
// the letter may or may not be stored: the caller must not acknowledge the event, and a
// later Publish of the same event is deduplicated.
func (p *Publisher) Publish(ctx context.Context, l Letter) (uint64, error) {
	l, msg, err := p.prepare(l)
	if err != nil {
		return 0, err
	}
	id := MsgID(l.OriginStream, l.OriginSeq)
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(p.opts.Stream))
	if err != nil {
		return 0, fmt.Errorf("publish dead letter %s of key %q: %w", id, l.Key, err)
	}
	p.learn(l, ack)
	return ack.Sequence, nil
}

func (p *Publisher) learn(l Letter, ack *jetstream.PubAck) {
	if ack.Duplicate {
		p.logger.Debug("dead letter already stored", "key", l.Key, "origin_seq", l.OriginSeq, "seq", ack.Sequence)
	}
	if p.opts.Index != nil {
		l.Seq = ack.Sequence
		p.opts.Index.AddLetter(l)
	}
}

// PublishBatch publishes letters without waiting between them and then waits for every
// acknowledgement (faster than Publish in a loop when many events fail at once). seqs[i] is
// the sequence of letters[i], or 0 if that letter failed; err joins the failures. Only the
// events whose letter has a sequence may be acknowledged.
func (p *Publisher) PublishBatch(ctx context.Context, letters []Letter) (seqs []uint64, err error) {
	seqs = make([]uint64, len(letters))
	futures := make([]jetstream.PubAckFuture, len(letters))
	prepared := make([]Letter, len(letters))
	var errs []error
	for i, l := range letters {
		l, msg, err := p.prepare(l)
		if err != nil {
			errs = append(errs, fmt.Errorf("letter %d: %w", i, err))
			continue
		}
		prepared[i] = l
		id := MsgID(l.OriginStream, l.OriginSeq)
		f, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(p.opts.Stream))
		if err != nil {
			errs = append(errs, fmt.Errorf("publish dead letter %s of key %q: %w", id, l.Key, err))
			continue
		}
		futures[i] = f
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		l := prepared[i]
		select {
		case ack := <-f.Ok():
			seqs[i] = ack.Sequence
			p.learn(l, ack)
		case err := <-f.Err():
			errs = append(errs, fmt.Errorf("publish dead letter %s of key %q: %w", MsgID(l.OriginStream, l.OriginSeq), l.Key, err))
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("publish dead letter %s of key %q: %w", MsgID(l.OriginStream, l.OriginSeq), l.Key, ctx.Err()))
		}
	}
	return seqs, errors.Join(errs...)
}
