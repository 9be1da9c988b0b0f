//go:build containers

package harness

// ContainerBackend runs the same programs as ProcessBackend in Docker containers through
// testcontainers-go. It is compiled only with the build tag `containers` and selected with
// DPSYNC_BACKEND=containers (NewBackend); scenarios see only Backend, Cluster and Worker.
//
// NOTE: written against the testcontainers-go v0.45.0 API and compiled and vetted in CI,
// but never run against a Docker engine (dpsync's CI has none). See integration/README.md,
// "Backends".
//
// Cluster (container_backend_cluster.go): one user-defined network per cluster
// (network.New); one container per node from the official image at the version go.mod pins
// (NATSImageFromGoMod, or DPSYNC_NATS_IMAGE), named n0..n2 on that network, config from
// containerNodeConfig (sync_interval, routes by name, no_advertise), store on an anonymous
// volume. Client and monitoring ports are published on 127.0.0.1 at ports chosen once, so a
// killed node started again keeps its URL. Faults:
//   - Kill = the Docker API's kill with SIGKILL (nats-server is the container's PID 1), then
//     wait until the container is not running; the container and its volume stay.
//   - Start = start the same container again (same config, volume and published ports).
//   - Stop / Cont = pause / unpause: the cgroup freezer, the container form of SIGSTOP and
//     SIGCONT (the process cannot notice either).
//   - StreamLeader, WaitHealthy, ConnectedNode: as the process cluster, over the published
//     client and monitoring ports.
//
// Worker (container_backend_worker.go): an image built once per test binary from
// deploy/Dockerfile (the shipped image: static, distroless, nonroot), run with the flags
// of workerArgs and the DPS connection string only in its environment; the emulator's CA
// is copied into the container. The worker must see the addresses it is given (127.0.0.1
// ports of the emulator, a tap, a proxy or a node): the emulator's certificate names
// 127.0.0.1 and SAS tokens name the HostName, so they cannot be rewritten. The worker
// therefore runs in the network namespace of an ambassador container (alpine/socat) that
// listens on each of those 127.0.0.1 ports and forwards to the node over the cluster's
// network, or to the test machine through testcontainers' host access
// (host.testcontainers.internal, an SSH tunnel that dials localhost on the test machine,
// so listeners bound to 127.0.0.1 are reachable on Linux and Docker Desktop alike).
// Kill = SIGKILL, Term = SIGTERM and the exit code from inspect, Stop / Cont =
// pause / unpause of the worker container only (the ambassador keeps running, as the
// kernel keeps a stopped process's sockets).
//
// Logs of every container are followed into files in the test's temp dir (across restarts,
// without repeating a line), so the failure dump, keepLogs and ScanSecrets read them as
// they read the process logs.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
)

// ContainersBuilt reports whether this binary has the container backend (build tag
// `containers`).
const ContainersBuilt = true

// Images and paths of the container backend besides NATS.
const (
	// ambassadorImage runs the worker's forwarders (socat and a shell).
	ambassadorImage = "alpine/socat:1.8.0.3"
	// workerDockerfile builds the worker image, relative to the module root.
	workerDockerfile = "deploy/Dockerfile"
	// workerImageRepo names the built image (the tag is random per test binary).
	workerImageRepo = "dpsync-worker-it"
	// Paths inside the worker container.
	workerCAPath  = "/etc/dpsync/dps-ca.pem"
	workerDataDir = "/var/lib/dpsync"
)

// ContainerBackend runs the cluster and the workers in Docker containers; see the comment
// at the top of this file. Create it with NewContainerBackend (or NewBackend with
// DPSYNC_BACKEND=containers) and share it between the tests of a test binary: the worker
// image is built once.
type ContainerBackend struct {
	engineOnce sync.Once
	cli        *testcontainers.DockerClient
	engineErr  error

	natsOnce  sync.Once
	natsImage string
	natsErr   error

	imageOnce   sync.Once
	workerImage string
	imageErr    error

	mu sync.Mutex
	// routes maps the published client port (on 127.0.0.1) of every node of a running
	// cluster of this backend to the node on its network: a worker given the node's URL
	// reaches it directly, container to container.
	routes map[int]clusterRoute
}

var _ Backend = (*ContainerBackend)(nil)

// NewContainerBackend returns a ContainerBackend. It does not contact Docker: the first
// StartCluster or StartWorker does, and fails with a clear error if no engine answers.
func NewContainerBackend() *ContainerBackend {
	return &ContainerBackend{routes: map[int]clusterRoute{}}
}

func newContainerBackend(*Builder) (Backend, error) {
	if os.Getenv("DPSYNC_WORKER_RACE") == "1" {
		return nil, fmt.Errorf("%s=%s: DPSYNC_WORKER_RACE=1 is not supported: the worker image is built from %s with CGO_ENABLED=0, and -race needs cgo",
			BackendEnv, BackendContainers, workerDockerfile)
	}
	return NewContainerBackend(), nil
}

// ErrNoEngine wraps the error of a container backend that found no Docker engine.
var ErrNoEngine = errors.New("no Docker engine answers")

// engine returns the Docker client, after checking once that an engine answers.
func (b *ContainerBackend) engine(ctx context.Context) (*testcontainers.DockerClient, error) {
	b.engineOnce.Do(func() {
		b.cli, b.engineErr = PingDocker(ctx)
	})
	return b.cli, b.engineErr
}

// PingDocker connects to the Docker engine testcontainers-go finds (DOCKER_HOST, the
// docker context, ~/.testcontainers.properties, the default socket) and pings it. The
// error wraps ErrNoEngine.
func PingDocker(ctx context.Context) (*testcontainers.DockerClient, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	const where = "DOCKER_HOST, ~/.testcontainers.properties, the docker context, the default sockets"
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return nil, fmt.Errorf("container backend: %w (looked at %s): %w", ErrNoEngine, where, err)
	}
	if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("container backend: %w (looked at %s): %w", ErrNoEngine, where, err)
	}
	return cli, nil
}

// natsImageName is DPSYNC_NATS_IMAGE or the official image at go.mod's nats-server.
func (b *ContainerBackend) natsImageName(ctx context.Context) (string, error) {
	b.natsOnce.Do(func() {
		if img := os.Getenv(NATSImageEnv); img != "" {
			b.natsImage = img
			return
		}
		root, err := ModuleRoot(ctx)
		if err != nil {
			b.natsErr = err
			return
		}
		gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
		if err != nil {
			b.natsErr = err
			return
		}
		b.natsImage, b.natsErr = NATSImageFromGoMod(gomod)
	})
	return b.natsImage, b.natsErr
}

// workerImageName builds the worker image from deploy/Dockerfile once and returns its
// name. The build context is the module's files that git tracks or would track (not
// .git, not ignored build output); the image carries testcontainers' session labels, so
// its reaper removes it after the test binary exits.
func (b *ContainerBackend) workerImageName(ctx context.Context) (string, error) {
	b.imageOnce.Do(func() {
		// The first test pays for the build; a build cut short by its deadline would fail
		// every later test, so the build gets its own bound.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Minute)
		defer cancel()
		b.workerImage, b.imageErr = buildWorkerImage(bctx)
	})
	return b.workerImage, b.imageErr
}

func buildWorkerImage(ctx context.Context) (string, error) {
	root, err := ModuleRoot(ctx)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "dpsync-it-build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	if err := copyBuildContext(ctx, root, dir); err != nil {
		return "", fmt.Errorf("worker image: build context: %w", err)
	}
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return "", fmt.Errorf("worker image: %w", err)
	}
	defer provider.Close()
	tag := make([]byte, 6)
	if _, err := rand.Read(tag); err != nil {
		return "", err
	}
	var buildLog strings.Builder
	req := testcontainers.ContainerRequest{FromDockerfile: testcontainers.FromDockerfile{
		Context:        dir,
		Dockerfile:     workerDockerfile,
		Repo:           workerImageRepo,
		Tag:            hex.EncodeToString(tag),
		BuildLogWriter: &buildLog,
	}}
	image, err := provider.BuildImage(ctx, &req)
	if err != nil {
		return "", fmt.Errorf("worker image: docker build -f %s: %w\n%s", workerDockerfile, err, lastLines(buildLog.String(), 30))
	}
	return image, nil
}

// copyBuildContext copies the files of root that git tracks or would track (tracked and
// untracked, not ignored) into dir: what `docker build .` would send with a .dockerignore
// equal to .gitignore plus .git. Without git (not a work tree) it copies everything but
// .git.
func copyBuildContext(ctx context.Context, root, dir string) error {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	var files []string
	if err == nil {
		for _, f := range strings.Split(string(out), "\x00") {
			if f != "" {
				files = append(files, f)
			}
		}
	} else {
		err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && d.Name() == ".git" {
				return filepath.SkipDir
			}
			if d.Type().IsRegular() {
				rel, err := filepath.Rel(root, path)
				if err != nil {
					return err
				}
				files = append(files, rel)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for _, f := range files {
		if err := copyFile(filepath.Join(root, f), filepath.Join(dir, f)); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // tracked but deleted in the work tree
			}
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// routesSnapshot copies the backend's cluster routes.
func (b *ContainerBackend) routesSnapshot() map[int]clusterRoute {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[int]clusterRoute, len(b.routes))
	for k, v := range b.routes {
		m[k] = v
	}
	return m
}

func (b *ContainerBackend) addRoute(port int, r clusterRoute) {
	b.mu.Lock()
	b.routes[port] = r
	b.mu.Unlock()
}

func (b *ContainerBackend) removeRoute(port int) {
	b.mu.Lock()
	delete(b.routes, port)
	b.mu.Unlock()
}

// opTimeout bounds one Docker API call of a fault operation (Kill, Stop, …), which have
// no context of their own.
const opTimeout = 30 * time.Second

func opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}
