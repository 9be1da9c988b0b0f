package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/integration/harness"
)

// TestClusterLeaderFailover checks the harness itself on a real 3-node cluster: an R3
// stream keeps accepting confirmed writes when its leader is killed, a new leader is
// elected, and the restarted node catches up without losing a confirmed message.
func TestClusterLeaderFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node nats-server cluster")
	}
	ctx := testCtx(t)
	c, err := backend.StartCluster(ctx, t, harness.ClusterSpec{})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(c.URL(0)+","+c.URL(1)+","+c.URL(2), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// While the cluster forms, an API response can be lost: bound each attempt and retry
	// (CreateOrUpdate is idempotent), rather than wait for the test's deadline.
	var serr error
	for attempt := 0; attempt < 6; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, serr = js.CreateOrUpdateStream(actx, jetstream.StreamConfig{
			Name: "T", Subjects: []string{"t.>"}, Replicas: 3, Storage: jetstream.FileStorage,
		})
		cancel()
		if serr == nil {
			break
		}
		t.Logf("create stream (attempt %d): %v", attempt+1, serr)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	confirmed := 0
	publish := func(n int) {
		t.Helper()
		for range n {
			id := fmt.Sprintf("m-%d", confirmed)
			if err := publishRetry(ctx, js, "t.x", id); err != nil {
				t.Fatalf("publish %s: %v", id, err)
			}
			confirmed++
		}
	}
	publish(100)

	leader, err := c.StreamLeader(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	publish(100) // retried through the election
	var next int
	deadline := time.Now().Add(20 * time.Second)
	for {
		next, err = c.StreamLeader(ctx, "T")
		if err == nil && next != leader {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new leader after killing node %d: leader %d, err %v", leader, next, err)
		}
		time.Sleep(100 * time.Millisecond) // polling an external process, not ordering
	}
	if err := c.Start(leader); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	publish(100)

	s, err := js.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := info.State.Msgs, uint64(confirmed); got != want {
		t.Errorf("stream holds %d messages, want %d (every confirmed publish, none twice)", got, want)
	}
	// The restarted node catches up: it is listed as a current replica.
	name := fmt.Sprintf("n%d", leader)
	for caughtUp := false; !caughtUp; {
		if info, err = s.Info(ctx); err != nil {
			t.Fatal(err)
		}
		if info.Cluster != nil && info.Cluster.Leader == name {
			caughtUp = true
		}
		for _, r := range info.Cluster.Replicas {
			if r.Name == name && r.Current {
				caughtUp = true
			}
		}
		if !caughtUp {
			if time.Now().After(deadline.Add(30 * time.Second)) {
				t.Fatalf("restarted node %s is not a current replica: %+v", name, info.Cluster)
			}
			time.Sleep(200 * time.Millisecond) // polling an external process
		}
	}
	t.Logf("leader n%d killed, new leader n%d, restarted node rejoined; %d messages confirmed", leader, next, confirmed)
}

// publishRetry publishes until confirmed, always with the same Nats-Msg-Id.
func publishRetry(ctx context.Context, js jetstream.JetStream, subject, id string) error {
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.PublishMsg(pctx, &nats.Msg{Subject: subject, Header: nats.Header{"Nats-Msg-Id": {id}}, Data: []byte(id)})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
