package harness

import (
	"context"
	"time"
)

// Backend starts the processes of a scenario. Scenarios talk only to Backend, Cluster and
// Worker, so a backend that runs the same programs in containers (see container_backend.go)
// can replace ProcessBackend without touching them.
//
// Everything a Backend starts is cleaned up by t.Cleanup of the test that started it, also
// when the test fails or panics.
type Backend interface {
	// StartCluster starts a JetStream cluster and waits until it is healthy.
	StartCluster(ctx context.Context, t TB, spec ClusterSpec) (Cluster, error)
	// StartWorker starts one `worker run` process. It returns once the process runs; call
	// Worker.WaitReady to wait for its /readyz.
	StartWorker(ctx context.Context, t TB, spec WorkerSpec) (Worker, error)
}

// TB is the part of testing.TB the harness uses.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Cleanup(func())
	Failed() bool
	TempDir() string
	Name() string
}

// ClusterSpec shapes a JetStream cluster. Zero fields take the defaults.
type ClusterSpec struct {
	// Nodes is the number of servers (default 3).
	Nodes int
	// Name is the cluster name (default "dpsync-it").
	Name string
	// SyncInterval is JetStream's sync_interval (default "always": fsync before the PubAck;
	// the server's own default is 2 min, see integration/README.md).
	SyncInterval string
}

func (s *ClusterSpec) setDefaults() {
	if s.Nodes == 0 {
		s.Nodes = 3
	}
	if s.Name == "" {
		s.Name = "dpsync-it"
	}
	if s.SyncInterval == "" {
		s.SyncInterval = "always"
	}
}

// Cluster is a running JetStream cluster. Node indexes run from 0 to Size()-1.
type Cluster interface {
	// Size is the number of nodes.
	Size() int
	// URLs are the client URLs of all nodes, in index order.
	URLs() []string
	// URL is node i's client URL.
	URL(i int) string
	// Kill sends SIGKILL to node i and waits until it is gone. Its store stays.
	Kill(i int) error
	// Start starts a killed node i again with the same ports, config and store.
	Start(i int) error
	// Restart kills node i (if running) and starts it again.
	Restart(i int) error
	// Stop freezes node i with SIGSTOP; Cont resumes it with SIGCONT.
	Stop(i int) error
	Cont(i int) error
	// Running reports whether node i's process is alive (stopped counts as alive).
	Running(i int) bool
	// StreamLeader returns the index of the node leading stream.
	StreamLeader(ctx context.Context, stream string) (int, error)
	// WaitHealthy waits until every running node answers /healthz and the JetStream API works.
	WaitHealthy(ctx context.Context) error
	// ConnectedNode returns the index of the node holding a client connection with the given
	// name (nats.Name), or an error if no running node has one.
	ConnectedNode(ctx context.Context, connName string) (int, error)
	// LogFiles are the nodes' log files, in index order.
	LogFiles() []string
	// Close kills every node. It is idempotent; t.Cleanup calls it too.
	Close() error
}

// WorkerSpec configures one `worker run` process. Zero fields take the defaults noted.
type WorkerSpec struct {
	// ID is the worker id (--worker-id); required.
	ID string
	// NATSURLs are the servers the worker connects to (required): the cluster's URLs, or the
	// proxies' URLs when the scenario injects network faults.
	NATSURLs []string
	// DPS is where the worker applies changes (required).
	DPS DPSTarget
	// Partitions of the events stream (default 16), Replicas (default 3).
	Partitions int
	Replicas   int
	// Quota is DPS operations per minute for the fleet (default -1, unlimited).
	Quota int
	// LeaseTTL bounds takeover after a worker dies (default 4 s; the worker requires at
	// least 2 × (DPSTryTimeout + 1 s)).
	LeaseTTL time.Duration
	// DPSTryTimeout bounds one DPS request (default 1 s).
	DPSTryTimeout time.Duration
	// Linger of a partial batch (default 20 ms).
	Linger time.Duration
	// RetryBudget of transient failures before dead-lettering (default 2 min).
	RetryBudget time.Duration
	// AckWait of the consumers (default 5 s): how long a new owner waits for a dead
	// owner's unacknowledged events to come back.
	AckWait time.Duration
	// RedriveSchedule of transient dead letters (default none).
	RedriveSchedule []time.Duration
	// ShutdownTimeout bounds the graceful stop (default 20 s).
	ShutdownTimeout time.Duration
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
}

// DPSTarget is how a worker reaches DPS. The connection string is a secret: the harness
// passes it in the child's environment (DPSYNC_DPS_CONNECTION_STRING), never on the command
// line.
type DPSTarget struct {
	ConnectionString string
	CAFile           string
}

// Worker is a running worker process.
type Worker interface {
	// ID is the worker id; ConnName the name of its NATS connection.
	ID() string
	ConnName() string
	// HTTPAddr is the host:port of /healthz, /readyz and /metrics.
	HTTPAddr() string
	// WaitReady waits until /readyz answers 200.
	WaitReady(ctx context.Context) error
	// Kill sends SIGKILL and waits until the process is gone.
	Kill() error
	// Term sends SIGTERM and waits up to timeout for exit code 0.
	Term(timeout time.Duration) error
	// Stop freezes the process with SIGSTOP; Cont resumes it.
	Stop() error
	Cont() error
	// Running reports whether the process is alive.
	Running() bool
	// LogFile is where its stdout and stderr go.
	LogFile() string
}
