package dlq

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/dlq/dlqtest"
)

// BenchmarkReplay measures replaying 1,000 letters of 100 keys (republish, PubAck, a fake
// worker's settle, the look for a new letter and for held ones), and the headers-only scan
// of List.
func BenchmarkReplay(b *testing.B) {
	ctx := context.Background()
	js := dlqtest.StartJetStream(b)
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		b.Fatal(err)
	}
	dlqtest.EventsStream(b, js, "", time.Minute)
	dlqtest.StartSettler(b, js, dlqtest.SettlerOptions{})
	pub, err := NewPublisher(js, PublisherOptions{WorkerID: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	st, err := OpenStore(ctx, js, StoreOptions{})
	if err != nil {
		b.Fatal(err)
	}
	const n = 1000
	var origin uint64
	var list, replay time.Duration
	for b.Loop() {
		ls := make([]Letter, n)
		for i := range ls {
			origin++
			ls[i] = letter(fmt.Sprintf("enrollment/dev-%d", i%100), origin, "update", ClassPermanent, 409201, t0)
		}
		if _, err := pub.PublishBatch(ctx, ls); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if got, err := st.List(ctx, Filter{}); err != nil || len(got) != n {
			b.Fatalf("list: %d %v", len(got), err)
		}
		list += time.Since(start)
		start = time.Now()
		rep, err := st.Replay(ctx, Filter{}, ReplayOptions{})
		if err != nil || len(rep.Replayed) != n {
			b.Fatalf("replay: %d %v", len(rep.Replayed), err)
		}
		replay += time.Since(start)
	}
	b.ReportMetric(float64(list.Microseconds())/float64(b.N*n), "µs/listed-letter")
	b.ReportMetric(float64(n*b.N)/replay.Seconds(), "replayed-letters/s")
}
