package harness

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// nodeSet is what the health checks shared by the cluster backends need: the nodes, which
// run, their client URLs, and each one's name and /healthz URL.
type nodeSet interface {
	Size() int
	Running(i int) bool
	URL(i int) string
	healthz(i int) (name, url string)
}

// connectNodes opens a client connection to the running nodes of c.
func connectNodes(c nodeSet) (*nats.Conn, error) {
	var urls []string
	for i := range c.Size() {
		if c.Running(i) {
			urls = append(urls, c.URL(i))
		}
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.Name("dpsync-harness"), nats.Timeout(2*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connect to cluster: %w", err)
	}
	return nc, nil
}

// waitHealthy polls nodesHealthy until it passes or ctx ends.
func waitHealthy(ctx context.Context, c nodeSet) error {
	var last error
	for {
		if last = nodesHealthy(ctx, c); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not healthy: %w (last: %w)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// nodesHealthy checks that every running node answers /healthz and the JetStream API works.
func nodesHealthy(ctx context.Context, c nodeSet) error {
	for i := range c.Size() {
		if !c.Running(i) {
			continue
		}
		name, url := c.healthz(i)
		if err := httpOK(ctx, url); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	nc, err := connectNodes(c)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(actx); err != nil {
		return fmt.Errorf("jetstream account info: %w", err)
	}
	return nil
}

// streamLeader returns the index of the node of c leading stream.
func streamLeader(ctx context.Context, c nodeSet, stream string) (int, error) {
	nc, err := connectNodes(c)
	if err != nil {
		return -1, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return -1, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, fmt.Errorf("stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return -1, fmt.Errorf("stream %s info: %w", stream, err)
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, fmt.Errorf("stream %s has no leader", stream)
	}
	for i := range c.Size() {
		if name, _ := c.healthz(i); name == info.Cluster.Leader {
			return i, nil
		}
	}
	return -1, fmt.Errorf("stream %s: leader %q is not a node of this cluster", stream, info.Cluster.Leader)
}
