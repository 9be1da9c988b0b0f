//go:build containers

package harness

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	mobynet "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/nats-io/nats.go"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

type containerNode struct {
	name       string
	clientPort int // published on 127.0.0.1
	httpPort   int // monitoring, published on 127.0.0.1
	logPath    string
	ctr        testcontainers.Container // nil until created
	logs       *logFollower
}

type containerCluster struct {
	b     *ContainerBackend
	cli   *testcontainers.DockerClient
	spec  ClusterSpec
	net   *testcontainers.DockerNetwork
	nodes []*containerNode

	mu        sync.Mutex // guards closed and the nodes' ctr and logs
	closed    bool
	closeErr  error
	closeOnce sync.Once
}

var _ Cluster = (*containerCluster)(nil)

// StartCluster creates the cluster's network and one NATS container per node, and waits
// until the cluster is healthy.
func (b *ContainerBackend) StartCluster(ctx context.Context, t TB, spec ClusterSpec) (Cluster, error) {
	t.Helper()
	spec.setDefaults()
	cli, err := b.engine(ctx)
	if err != nil {
		return nil, err
	}
	image, err := b.natsImageName(ctx)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2 * spec.Nodes)
	if err != nil {
		return nil, err
	}
	nw, err := network.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("cluster network: %w", err)
	}
	dir := t.TempDir()
	c := &containerCluster{b: b, cli: cli, spec: spec, net: nw}
	for i := range spec.Nodes {
		name := containerNodeName(i)
		c.nodes = append(c.nodes, &containerNode{
			name:       name,
			clientPort: ports[2*i],
			httpPort:   ports[2*i+1],
			logPath:    filepath.Join(dir, name+".log"),
		})
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("--- tail of %s (%s):\n%s", n.name, n.logPath, tailFile(n.logPath, 40))
			}
		}
		if err := c.Close(); err != nil {
			t.Logf("close container cluster: %v", err)
		}
	})
	for _, n := range c.nodes {
		if err := c.create(ctx, n, image); err != nil {
			return nil, err
		}
		b.addRoute(n.clientPort, clusterRoute{Network: nw.Name, Host: n.name, Port: natsClientPort})
	}
	if err := c.WaitHealthy(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// create runs node n's container: config copied in before the start, store on an
// anonymous volume, client and monitoring ports published on 127.0.0.1 at the node's
// ports (fixed, so a restart keeps them).
func (c *containerCluster) create(ctx context.Context, n *containerNode, image string) error {
	conf := containerNodeConfig(n.name, c.spec)
	clientPort := mobynet.MustParsePort(strconv.Itoa(natsClientPort) + "/tcp")
	httpPort := mobynet.MustParsePort(strconv.Itoa(natsMonitorPort) + "/tcp")
	loopback := netip.MustParseAddr("127.0.0.1")
	req := testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:          image,
			Entrypoint:     []string{"nats-server"},
			Cmd:            []string{"--config", natsConfigPath},
			ExposedPorts:   []string{clientPort.String(), httpPort.String()},
			Networks:       []string{c.net.Name},
			NetworkAliases: map[string][]string{c.net.Name: {n.name}},
			Files: []testcontainers.ContainerFile{{
				Reader: strings.NewReader(conf), ContainerFilePath: natsConfigPath, FileMode: 0o644,
			}},
			Mounts: testcontainers.ContainerMounts{testcontainers.VolumeMount("", natsDataDir)},
			HostConfigModifier: func(hc *container.HostConfig) {
				hc.PortBindings = mobynet.PortMap{
					clientPort: {{HostIP: loopback, HostPort: strconv.Itoa(n.clientPort)}},
					httpPort:   {{HostIP: loopback, HostPort: strconv.Itoa(n.httpPort)}},
				}
			},
			WaitingFor: wait.ForLog("Server is ready").WithStartupTimeout(time.Minute),
		},
		Started: true,
	}
	ctr, err := testcontainers.GenericContainer(ctx, req)
	c.mu.Lock()
	n.ctr = ctr // set even on error: Close removes what was created
	c.mu.Unlock()
	if ctr != nil {
		logs, lerr := followLogs(c.cli, n.name, ctr.GetContainerID(), n.logPath)
		if lerr != nil {
			return errors.Join(err, lerr)
		}
		c.mu.Lock()
		n.logs = logs
		c.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("start %s (%s): %w", n.name, image, err)
	}
	return nil
}

func (c *containerCluster) Size() int { return len(c.nodes) }

func (c *containerCluster) URL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].clientPort)
}

func (c *containerCluster) URLs() []string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.URL(i)
	}
	return urls
}

func (c *containerCluster) LogFiles() []string {
	var files []string
	for _, n := range c.nodes {
		files = append(files, n.logPath)
	}
	return files
}

// container returns node i's container id.
func (c *containerCluster) container(i int) (*containerNode, string, error) {
	if i < 0 || i >= len(c.nodes) {
		return nil, "", fmt.Errorf("node %d: cluster has nodes 0..%d", i, len(c.nodes)-1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.ctr == nil {
		return n, "", fmt.Errorf("node %s: never started", n.name)
	}
	return n, n.ctr.GetContainerID(), nil
}

func (c *containerCluster) Kill(i int) error {
	n, id, err := c.container(i)
	if err != nil {
		return err
	}
	return killContainer(c.cli, n.name, id)
}

// Start starts killed node i's container again: same config, volume and ports.
func (c *containerCluster) Start(i int) error {
	n, id, err := c.container(i)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("start node: cluster is closed")
	}
	ctx, cancel := opCtx()
	defer cancel()
	st, err := containerState(ctx, c.cli, id)
	if err != nil {
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	if st.Running {
		return fmt.Errorf("start %s: already running", n.name)
	}
	if _, err := c.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	if n.logs != nil {
		n.logs.Wake()
	}
	return nil
}

func (c *containerCluster) Restart(i int) error {
	if err := c.Kill(i); err != nil {
		return err
	}
	return c.Start(i)
}

func (c *containerCluster) Stop(i int) error { return c.pause(i, false) }
func (c *containerCluster) Cont(i int) error { return c.pause(i, true) }

func (c *containerCluster) pause(i int, resume bool) error {
	n, id, err := c.container(i)
	if err != nil {
		return err
	}
	return pauseContainer(c.cli, n.name, id, resume)
}

func (c *containerCluster) Running(i int) bool {
	_, id, err := c.container(i)
	return err == nil && containerRunning(c.cli, id)
}

// Close removes every node's container (with its volume) and the network. It is
// idempotent.
func (c *containerCluster) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		ctrs := make([]testcontainers.Container, len(c.nodes))
		logs := make([]*logFollower, len(c.nodes))
		for i, n := range c.nodes {
			ctrs[i], logs[i] = n.ctr, n.logs
		}
		c.mu.Unlock()
		var errs []error
		for i, n := range c.nodes {
			c.b.removeRoute(n.clientPort)
			if err := terminate(ctrs[i]); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", n.name, err))
			}
			if logs[i] != nil {
				logs[i].Close()
			}
		}
		ctx, cancel := opCtx()
		defer cancel()
		if err := c.net.Remove(ctx); err != nil {
			errs = append(errs, fmt.Errorf("remove network: %w", err))
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// connect opens a client connection to the running nodes.
func (c *containerCluster) connect() (*nats.Conn, error) { return connectNodes(c) }

func (c *containerCluster) WaitHealthy(ctx context.Context) error { return waitHealthy(ctx, c) }

func (c *containerCluster) healthz(i int) (name, url string) {
	return c.nodes[i].name, fmt.Sprintf("http://127.0.0.1:%d/healthz", c.nodes[i].httpPort)
}

func (c *containerCluster) StreamLeader(ctx context.Context, stream string) (int, error) {
	return streamLeader(ctx, c, stream)
}

func (c *containerCluster) ConnectedNode(ctx context.Context, connName string) (int, error) {
	for i, n := range c.nodes {
		if !c.Running(i) {
			continue
		}
		var cz connz
		if err := getJSON(ctx, fmt.Sprintf("http://127.0.0.1:%d/connz?limit=10000", n.httpPort), &cz); err != nil {
			continue // a paused node does not answer
		}
		for _, conn := range cz.Connections {
			if conn.Name == connName {
				return i, nil
			}
		}
	}
	return -1, fmt.Errorf("no running node has a connection named %q", connName)
}
