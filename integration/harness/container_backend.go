//go:build containers

package harness

// A container backend runs the same programs as ProcessBackend in containers, for a machine
// with a Docker engine (testcontainers-go, pinned in go.mod). It is not compiled by default:
// `go test -tags containers ./integration/...` selects it once it is written.
//
// How it plugs in, without touching the scenarios (they only see Backend, Cluster, Worker):
//
//   - StartCluster: one network (network.New), three `nats:2.15.2` containers named n0..n2
//     with the config nodeConfig writes (listen 0.0.0.0, routes by container name,
//     sync_interval always), store on a volume so Kill/Start keeps it. Kill = the Docker API's
//     kill with SIGKILL; Start = container start; Stop/Cont = ContainerPause/Unpause (the
//     freezer cgroup, the container equivalent of SIGSTOP); URLs = mapped client ports on
//     127.0.0.1; StreamLeader/WaitHealthy/ConnectedNode as in cluster.go over the mapped
//     monitoring port.
//   - StartWorker: an image built from the repository's Dockerfile (deploy/), the same flags
//     as workerArgs, DPSYNC_DPS_CONNECTION_STRING in the container's environment, the
//     emulator's CA mounted as a file; Term = stop with SIGTERM and a timeout, exit code
//     from ContainerInspect; logs streamed into a file in t.TempDir so ScanSecrets and the
//     failure dump work unchanged.
//   - The emulator and toxiproxy can stay in-process (reach them from containers through
//     host.docker.internal), or run as ghcr.io/shopify/toxiproxy:2.5.0 with the client package.

import (
	"context"
	"errors"
)

// ContainerBackend will run the cluster and workers in containers; see the comment above.
type ContainerBackend struct{}

var _ Backend = ContainerBackend{}

var errNoContainers = errors.New("container backend: not implemented yet (see container_backend.go)")

// StartCluster is not implemented yet.
func (ContainerBackend) StartCluster(context.Context, TB, ClusterSpec) (Cluster, error) {
	return nil, errNoContainers
}

// StartWorker is not implemented yet.
func (ContainerBackend) StartWorker(context.Context, TB, WorkerSpec) (Worker, error) {
	return nil, errNoContainers
}
