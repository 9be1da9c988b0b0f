package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig names and shapes the events stream. Zero fields take the defaults.
type StreamConfig struct {
	// Name of the stream (default "DPS_EVENTS").
	Name string
	// Prefix of the subjects producers publish to (default "dpsync.events"): events go to
	// "<Prefix>.<kind>.<token>".
	Prefix string
	// PartitionPrefix of the stored subjects (default "dpsync.part"): the stream rewrites
	// "<Prefix>.<kind>.<token>" to "<PartitionPrefix>.<p>.<kind>.<token>".
	PartitionPrefix string
	// Partitions is the fixed number of partitions (default 16). It is part of the stream's
	// subject transform: changing it on an existing stream is refused (see docs/OPERATIONS.md
	// for how to change it).
	Partitions int
	// Replicas of the stream (default 1; 3 in a cluster).
	Replicas int
	// MemoryStorage keeps the stream in memory instead of files (tests only).
	MemoryStorage bool
	// MaxAge drops events older than this (default 7 days).
	MaxAge time.Duration
	// DuplicateWindow is how long the stream remembers Nats-Msg-Id values (default 2 min).
	DuplicateWindow time.Duration
	// MaxBytes bounds the stream's size (default unlimited, -1).
	MaxBytes int64
}

func (c *StreamConfig) setDefaults() {
	if c.Name == "" {
		c.Name = "DPS_EVENTS"
	}
	if c.Prefix == "" {
		c.Prefix = "dpsync.events"
	}
	if c.PartitionPrefix == "" {
		c.PartitionPrefix = "dpsync.part"
	}
	if c.Partitions == 0 {
		c.Partitions = 16
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.MaxAge == 0 {
		c.MaxAge = 7 * 24 * time.Hour
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 2 * time.Minute
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = -1
	}
}

// Validate reports the first invalid field.
func (c StreamConfig) Validate() error {
	c.setDefaults()
	switch {
	case c.Partitions < 1 || c.Partitions > 1024:
		return fmt.Errorf("stream partitions: %d is outside 1..1024", c.Partitions)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("stream replicas: %d is outside 1..5", c.Replicas)
	case c.MaxAge < 0:
		return fmt.Errorf("stream max age: %v is negative", c.MaxAge)
	case c.DuplicateWindow < 100*time.Millisecond || c.DuplicateWindow > c.MaxAge:
		return fmt.Errorf("stream duplicate window: %v must be between 100ms (JetStream's minimum) and the max age %v", c.DuplicateWindow, c.MaxAge)
	case strings.ContainsAny(c.Prefix, "*> ") || strings.ContainsAny(c.PartitionPrefix, "*> "):
		return errors.New("stream subject prefixes must not contain wildcards or spaces")
	}
	return nil
}

// WithDefaults returns c with every zero field set to its default.
func (c StreamConfig) WithDefaults() StreamConfig {
	c.setDefaults()
	return c
}

// PartitionSubject is the filter of partition p's consumer.
func (c StreamConfig) PartitionSubject(p int) string {
	c.setDefaults()
	return c.PartitionPrefix + "." + strconv.Itoa(p) + ".>"
}

// ConsumerName is the durable name of partition p's consumer.
func (c StreamConfig) ConsumerName(p int) string { return fmt.Sprintf("dpsync-p%03d", p) }

// OriginSubject maps a stored subject "<PartitionPrefix>.<p>.<kind>.<token>" back to the
// subject a producer published to, "<Prefix>.<kind>.<token>", and returns the partition.
func (c StreamConfig) OriginSubject(stored string) (string, int, error) {
	c.setDefaults()
	rest, ok := strings.CutPrefix(stored, c.PartitionPrefix+".")
	if !ok {
		return "", 0, fmt.Errorf("subject %q is not under %q", stored, c.PartitionPrefix)
	}
	ps, tail, ok := strings.Cut(rest, ".")
	if !ok {
		return "", 0, fmt.Errorf("subject %q has no partition token", stored)
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p < 0 || p >= c.Partitions {
		return "", 0, fmt.Errorf("subject %q has partition %q outside 0..%d", stored, ps, c.Partitions-1)
	}
	return c.Prefix + "." + tail, p, nil
}

func (c StreamConfig) jetstreamConfig() jetstream.StreamConfig {
	storage := jetstream.FileStorage
	if c.MemoryStorage {
		storage = jetstream.MemoryStorage
	}
	return jetstream.StreamConfig{
		Name:        c.Name,
		Description: "dpsync device events, partitioned by ordering key",
		Subjects:    []string{c.Prefix + ".*.*"},
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source:      c.Prefix + ".*.*",
			Destination: fmt.Sprintf("%s.{{partition(%d,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}", c.PartitionPrefix, c.Partitions),
		},
		Retention:  jetstream.LimitsPolicy,
		Storage:    storage,
		Replicas:   c.Replicas,
		MaxAge:     c.MaxAge,
		MaxBytes:   c.MaxBytes,
		Duplicates: c.DuplicateWindow,
		Discard:    jetstream.DiscardOld,
	}
}

// EnsureStream creates the events stream or updates it to cfg. It refuses to change the
// partition count of an existing stream: that would move keys between partitions while
// consumers hold unacknowledged events, breaking order.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	want := cfg.jetstreamConfig()
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", cfg.Name, err)
	}
	have := s.CachedInfo().Config
	if have.SubjectTransform != nil && have.SubjectTransform.Destination != want.SubjectTransform.Destination {
		return nil, fmt.Errorf("stream %s is partitioned as %q, configuration asks for %q: change the partition count by migrating to a new stream (docs/OPERATIONS.md)",
			cfg.Name, have.SubjectTransform.Destination, want.SubjectTransform.Destination)
	}
	if have.Storage != want.Storage {
		return nil, fmt.Errorf("stream %s keeps its events in %s storage, configuration asks for %s: JetStream cannot change a stream's storage in place; drain the stream and delete it (or use another --stream name) to change it",
			cfg.Name, strings.ToLower(have.Storage.String()), strings.ToLower(want.Storage.String()))
	}
	s, err = js.UpdateStream(ctx, want)
	if err != nil {
		return nil, fmt.Errorf("update stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// ConsumerConfig shapes the per-partition consumers.
type ConsumerConfig struct {
	// AckWait is how long the server waits for an ack before redelivering (default 15 s).
	// The engine sends InProgress while an event waits, so this bounds only how fast a dead
	// worker's events come back.
	AckWait time.Duration
	// MaxAckPending bounds unacknowledged events per partition (default DefaultMaxAckPending).
	// It is what bounds a worker's memory: partitions owned × MaxAckPending events are held
	// at most (a few KB each). Deeper lets more events of a device coalesce while they wait
	// for the DPS quota (fewer operations per event), at that cost in memory.
	MaxAckPending int
}

// DefaultMaxAckPending is the default ConsumerConfig.MaxAckPending. With 16 partitions a
// worker holds up to 16,000 events (~7 KB each in memory: ~170 MB of RSS while it drains a
// backlog, BENCHMARKS.md). 600 keeps it near 150 MB but, under the DPS quota, lets fewer
// events of a device wait together and coalesce: the fleet benchmark then paid 0.325 DPS
// operations per event instead of 0.256 (27 % more of the quota) — the quota is the
// scarcer resource, so the default favours it.
const DefaultMaxAckPending = 1000

func (c *ConsumerConfig) setDefaults() {
	if c.AckWait == 0 {
		c.AckWait = 15 * time.Second
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
}

// EnsureConsumer creates or updates the durable pull consumer of partition p.
func EnsureConsumer(ctx context.Context, s jetstream.Stream, sc StreamConfig, cc ConsumerConfig, p int) (jetstream.Consumer, error) {
	sc.setDefaults()
	cc.setDefaults()
	if cc.AckWait < time.Second {
		return nil, fmt.Errorf("consumer ack wait: %v is under 1s", cc.AckWait)
	}
	if cc.MaxAckPending < 1 {
		return nil, fmt.Errorf("consumer max ack pending: %d must be positive", cc.MaxAckPending)
	}
	cons, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       sc.ConsumerName(p),
		Description:   fmt.Sprintf("dpsync partition %d", p),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cc.AckWait,
		MaxDeliver:    -1,
		FilterSubject: sc.PartitionSubject(p),
		MaxAckPending: cc.MaxAckPending,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
		Replicas:      0, // inherit the stream's
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer %s: %w", sc.ConsumerName(p), err)
	}
	return cons, nil
}
