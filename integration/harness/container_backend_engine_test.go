//go:build containers

package harness

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestContainerBackendEngine drives ContainerBackend against a Docker engine: a cluster
// (leader kill and start, pause and unpause of a node) and a worker (ready, paused,
// resumed, stopped gracefully, its logs free of the connection string). It runs only with
// DPSYNC_BACKEND=containers, and skips, saying why, when no engine answers.
//
//	DPSYNC_BACKEND=containers go test -tags containers -run TestContainerBackendEngine ./integration/harness/
func TestContainerBackendEngine(t *testing.T) {
	if os.Getenv(BackendEnv) != BackendContainers {
		t.Skipf("container backend: set %s=%s to run it against a Docker engine", BackendEnv, BackendContainers)
	}
	cli, err := PingDocker(t.Context())
	if errors.Is(err, ErrNoEngine) {
		t.Skipf("%s=%s, but no Docker engine answers, so the container backend cannot run here: %v",
			BackendEnv, BackendContainers, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	cli.Close()
	if testing.Short() {
		t.Skip("container backend: starts containers and builds the worker image")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	b := NewContainerBackend()

	c, err := b.StartCluster(ctx, t, ClusterSpec{})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(joinURLs(c.URLs()), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	leader, err := c.StreamLeader(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	if c.Running(leader) {
		t.Fatalf("node %d runs after Kill", leader)
	}
	if _, err := js.Publish(ctx, "t.x", []byte("while the leader is down")); err != nil {
		t.Fatalf("publish with 2 of 3 nodes: %v", err)
	}
	if err := c.Start(leader); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(0); err != nil {
		t.Fatal(err)
	}
	if !c.Running(0) {
		t.Error("a paused node does not count as running")
	}
	if err := c.Cont(0); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}

	emu, err := StartEmulator(ctx, t, EmulatorOptions{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	w, err := b.StartWorker(ctx, t, WorkerSpec{ID: "w0", NATSURLs: c.URLs(), DPS: emu.Target()})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ConnectedNode(ctx, w.ConnName()); err != nil {
		t.Error(err)
	}
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := w.Cont(); err != nil {
		t.Fatal(err)
	}
	if err := w.Term(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if w.Running() {
		t.Error("worker runs after Term")
	}
	found, err := ScanSecrets(append([]string{w.LogFile()}, c.LogFiles()...), emu.ConnectionString, KeyOf(emu.ConnectionString))
	if err != nil {
		t.Fatal(err)
	}
	if len(found) > 0 {
		t.Errorf("secrets in logs: %v", found)
	}
}

func joinURLs(urls []string) string {
	s := ""
	for i, u := range urls {
		if i > 0 {
			s += ","
		}
		s += u
	}
	return s
}
