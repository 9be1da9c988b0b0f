package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// ProcessBackend runs nats-server and the worker as local processes on 127.0.0.1.
type ProcessBackend struct {
	// Builder builds the binaries (shared by all tests of a test binary).
	Builder *Builder
}

var _ Backend = (*ProcessBackend)(nil)

type node struct {
	name       string
	clientPort int
	routePort  int
	httpPort   int
	confPath   string
	logPath    string
	p          *proc // nil before the first start
}

type processCluster struct {
	bin   string
	spec  ClusterSpec
	nodes []*node

	mu     sync.Mutex // guards nodes[i].p
	closed bool
}

// StartCluster writes one config file per node, starts the nodes and waits until the
// cluster is healthy.
func (b *ProcessBackend) StartCluster(ctx context.Context, t TB, spec ClusterSpec) (Cluster, error) {
	t.Helper()
	spec.setDefaults()
	bin, err := b.Builder.NATSServer(ctx)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3 * spec.Nodes)
	if err != nil {
		return nil, err
	}
	dir := t.TempDir()
	c := &processCluster{bin: bin, spec: spec}
	var routes []string
	for i := range spec.Nodes {
		n := &node{
			name:       fmt.Sprintf("n%d", i),
			clientPort: ports[3*i],
			routePort:  ports[3*i+1],
			httpPort:   ports[3*i+2],
		}
		n.confPath = filepath.Join(dir, n.name+".conf")
		n.logPath = filepath.Join(dir, n.name+".log")
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", n.routePort))
		c.nodes = append(c.nodes, n)
	}
	for _, n := range c.nodes {
		conf := nodeConfig(n, spec, filepath.Join(dir, n.name+"-store"), routes)
		if err := os.WriteFile(n.confPath, []byte(conf), 0o600); err != nil {
			return nil, fmt.Errorf("write config of %s: %w", n.name, err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("--- tail of %s (%s):\n%s", n.name, n.logPath, tailFile(n.logPath, 40))
			}
		}
		c.Close()
	})
	for i := range c.nodes {
		if err := c.Start(i); err != nil {
			return nil, err
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// nodeConfig is a nats-server config file. no_advertise keeps clients on the URLs they were
// given (the proxies, in network-fault scenarios) instead of learning the nodes' own.
func nodeConfig(n *node, spec ClusterSpec, storeDir string, routes []string) string {
	return fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
jetstream {
  store_dir: %q
  sync_interval: %q
  max_memory_store: 256MB
  max_file_store: 4GB
}
cluster {
  name: %s
  listen: 127.0.0.1:%d
  routes: [%s]
  no_advertise: true
}
`, n.name, n.clientPort, n.httpPort, storeDir, spec.SyncInterval, spec.Name, n.routePort, strings.Join(routes, ", "))
}

func (c *processCluster) Size() int { return len(c.nodes) }

func (c *processCluster) URL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].clientPort)
}

func (c *processCluster) URLs() []string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.URL(i)
	}
	return urls
}

func (c *processCluster) LogFiles() []string {
	var files []string
	for _, n := range c.nodes {
		files = append(files, n.logPath)
	}
	return files
}

func (c *processCluster) proc(i int) (*proc, error) {
	if i < 0 || i >= len(c.nodes) {
		return nil, fmt.Errorf("node %d: cluster has nodes 0..%d", i, len(c.nodes)-1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].p, nil
}

func (c *processCluster) Start(i int) error {
	if i < 0 || i >= len(c.nodes) {
		return fmt.Errorf("node %d: cluster has nodes 0..%d", i, len(c.nodes)-1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("start node: cluster is closed")
	}
	n := c.nodes[i]
	if n.p != nil && n.p.Running() {
		return fmt.Errorf("start %s: already running", n.name)
	}
	p, err := startProc(n.name, n.logPath, c.bin, []string{"-c", n.confPath}, nil)
	if err != nil {
		return err
	}
	n.p = p
	return nil
}

func (c *processCluster) Kill(i int) error {
	p, err := c.proc(i)
	if err != nil || p == nil {
		return err
	}
	return p.Kill()
}

func (c *processCluster) Restart(i int) error {
	if err := c.Kill(i); err != nil {
		return err
	}
	return c.Start(i)
}

func (c *processCluster) Stop(i int) error { return c.signal(i, syscall.SIGSTOP) }
func (c *processCluster) Cont(i int) error { return c.signal(i, syscall.SIGCONT) }

func (c *processCluster) signal(i int, sig syscall.Signal) error {
	p, err := c.proc(i)
	if err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("signal node %d: never started", i)
	}
	return p.signal(sig)
}

func (c *processCluster) Running(i int) bool {
	p, err := c.proc(i)
	return err == nil && p != nil && p.Running()
}

func (c *processCluster) Close() error {
	c.mu.Lock()
	c.closed = true
	ps := make([]*proc, 0, len(c.nodes))
	for _, n := range c.nodes {
		if n.p != nil {
			ps = append(ps, n.p)
		}
	}
	c.mu.Unlock()
	var errs []error
	for _, p := range ps {
		errs = append(errs, p.Kill())
	}
	return errors.Join(errs...)
}

// connect opens a client connection to the running nodes.
func (c *processCluster) connect() (*nats.Conn, error) { return connectNodes(c) }

func (c *processCluster) WaitHealthy(ctx context.Context) error { return waitHealthy(ctx, c) }

func (c *processCluster) healthz(i int) (name, url string) {
	return c.nodes[i].name, fmt.Sprintf("http://127.0.0.1:%d/healthz", c.nodes[i].httpPort)
}

func httpOK(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return nil
}

func (c *processCluster) StreamLeader(ctx context.Context, stream string) (int, error) {
	return streamLeader(ctx, c, stream)
}

// connz is the part of nats-server's /connz the harness reads.
type connz struct {
	Connections []struct {
		Name string `json:"name"`
	} `json:"connections"`
}

func (c *processCluster) ConnectedNode(ctx context.Context, connName string) (int, error) {
	for i, n := range c.nodes {
		if !c.Running(i) {
			continue
		}
		var cz connz
		if err := getJSON(ctx, fmt.Sprintf("http://127.0.0.1:%d/connz?limit=10000", n.httpPort), &cz); err != nil {
			continue // a stopped node does not answer
		}
		for _, conn := range cz.Connections {
			if conn.Name == connName {
				return i, nil
			}
		}
	}
	return -1, fmt.Errorf("no running node has a connection named %q", connName)
}

func getJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
