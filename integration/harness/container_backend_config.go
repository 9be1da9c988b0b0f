package harness

// The parts of the container backend (container_backend.go, build tag `containers`) that
// need no Docker: the NATS image and config, the plan of how a worker container reaches
// the addresses it is given, the ambassador's script and the parsing of Docker's
// timestamped log lines. They are compiled by default so `go test -short` checks them.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// natsServerModule is the module whose pinned version names the NATS image.
const natsServerModule = "github.com/nats-io/nats-server/v2"

// NATSImageEnv overrides the NATS image of the container backend (default: the official
// image at the version go.mod pins, see NATSImageFromGoMod).
const NATSImageEnv = "DPSYNC_NATS_IMAGE"

var releaseVersion = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)

// NATSImageFromGoMod returns the official NATS image ("nats:X.Y.Z-alpine") at the version
// of nats-server the go.mod file pins, so the containers run the server the process
// backend builds. A replace of the module by another version counts; a replace by a fork
// or a directory, or a version that is not a release (a pseudo-version, a pre-release), is
// an error: no official image has it (set DPSYNC_NATS_IMAGE).
func NATSImageFromGoMod(gomod []byte) (string, error) {
	type replace struct {
		from   string // the replaced version, "" for all
		target []string
	}
	var required string
	var replaces []replace
	block := ""
	for _, line := range strings.Split(string(gomod), "\n") {
		if i := strings.Index(line, "//"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if block != "" {
			if f[0] == ")" {
				block = ""
				continue
			}
			f = append([]string{block}, f...)
		} else if len(f) == 2 && f[1] == "(" {
			block = f[0]
			continue
		}
		if len(f) < 3 || f[1] != natsServerModule {
			continue
		}
		switch f[0] {
		case "require":
			required = f[2]
		case "replace": // replace M [v] => N [v']
			arrow := slices.Index(f, "=>")
			if (arrow != 2 && arrow != 3) || arrow+1 >= len(f) {
				return "", fmt.Errorf("go.mod: malformed replace of %s", natsServerModule)
			}
			r := replace{target: f[arrow+1:]}
			if arrow == 3 {
				r.from = f[2]
			}
			replaces = append(replaces, r)
		}
	}
	if required == "" {
		return "", fmt.Errorf("go.mod does not require %s", natsServerModule)
	}
	v := required
	for _, r := range replaces {
		if r.from != "" && r.from != required {
			continue // replaces another version than the one required
		}
		if len(r.target) != 2 || r.target[0] != natsServerModule {
			return "", fmt.Errorf("go.mod replaces %s by a fork or a directory: no official image; set %s", natsServerModule, NATSImageEnv)
		}
		v = r.target[1]
	}
	if !releaseVersion.MatchString(v) {
		return "", fmt.Errorf("go.mod pins %s %s, not a release: no official image; set %s", natsServerModule, v, NATSImageEnv)
	}
	return "nats:" + strings.TrimPrefix(v, "v") + "-alpine", nil
}

// Ports and paths inside a NATS container.
const (
	natsClientPort  = 4222
	natsRoutePort   = 6222
	natsMonitorPort = 8222
	natsConfigPath  = "/etc/nats/dpsync.conf"
	natsDataDir     = "/data" // a volume: kept across Kill and Start
)

// containerNodeName is node i's server name and its host name on the cluster's network.
func containerNodeName(i int) string { return fmt.Sprintf("n%d", i) }

// containerNodeConfig is node name's nats-server config inside a container: the same
// settings as nodeConfig (sync_interval from spec, no_advertise so clients stay on the URLs
// they were given), listening on all interfaces of the container, with routes to every
// node by its host name on the cluster's network. sync_interval is quoted: unquoted, the
// config parser reads "2m" as a size (2,000,000) and then as that many seconds.
func containerNodeConfig(name string, spec ClusterSpec) string {
	var routes []string
	for i := range spec.Nodes {
		routes = append(routes, fmt.Sprintf("nats-route://%s:%d", containerNodeName(i), natsRoutePort))
	}
	return fmt.Sprintf(`server_name: %s
listen: 0.0.0.0:%d
http: 0.0.0.0:%d
jetstream {
  store_dir: %q
  sync_interval: %q
  max_memory_store: 256MB
  max_file_store: 4GB
}
cluster {
  name: %s
  listen: 0.0.0.0:%d
  routes: [%s]
  no_advertise: true
}
`, name, natsClientPort, natsMonitorPort, natsDataDir+"/jetstream", spec.SyncInterval, spec.Name,
		natsRoutePort, strings.Join(routes, ", "))
}

// clusterRoute is how a container reaches a NATS node of a container cluster directly: its
// host name on the cluster's network and its client port there.
type clusterRoute struct {
	Network string
	Host    string
	Port    int
}

// forward is one listener of a worker's ambassador: 127.0.0.1:Port inside the worker's
// network namespace, forwarded to Target.
type forward struct {
	Port   int
	Target string
	// Host: Target is a port on the test machine, reached through testcontainers' host
	// access (an SSH tunnel whose far end dials localhost:Port on the test machine).
	Host bool
}

// forwardPlan is how a worker container reaches every address in its spec unchanged.
type forwardPlan struct {
	Forwards []forward
	// HostPorts are the test machine's ports to expose (ContainerRequest.HostAccessPorts).
	HostPorts []int
	// Networks the ambassador joins to reach cluster nodes directly.
	Networks []string
	// HTTPPort is a port for the worker's /readyz and /metrics that no forward uses.
	HTTPPort int
}

// hostAccessName is testcontainers.HostInternal: the name under which a container with
// HostAccessPorts reaches the test machine.
const hostAccessName = "host.testcontainers.internal"

// planForwards plans the ambassador of a worker that was given addrs (host:port). A
// worker in a container must see the same addresses as a worker process: the emulator's
// certificate names 127.0.0.1 and service SAS tokens name the HostName, so rewriting the
// host would break TLS and authentication. So every loopback address keeps its port on the
// worker's own loopback, where the ambassador listens and forwards: to the node itself,
// over the cluster's network, when the port is a node's mapped client port (routes), or to
// the same port on the test machine otherwise (the emulator, a tap, a proxy). Addresses
// that are not loopback are left to the worker's resolver.
func planForwards(addrs []string, routes map[int]clusterRoute) (forwardPlan, error) {
	var p forwardPlan
	seen := map[int]bool{}
	for _, a := range addrs {
		host, portStr, err := net.SplitHostPort(a)
		if err != nil {
			return forwardPlan{}, fmt.Errorf("address %q: %w", a, err)
		}
		if !isLoopbackHost(host) {
			continue
		}
		port, err := strconv.Atoi(portStr)
		if err != nil || port <= 0 || port > 65535 {
			return forwardPlan{}, fmt.Errorf("address %q: bad port", a)
		}
		if seen[port] {
			continue
		}
		seen[port] = true
		if r, ok := routes[port]; ok {
			p.Forwards = append(p.Forwards, forward{Port: port, Target: net.JoinHostPort(r.Host, strconv.Itoa(r.Port))})
			if !slices.Contains(p.Networks, r.Network) {
				p.Networks = append(p.Networks, r.Network)
			}
			continue
		}
		p.Forwards = append(p.Forwards, forward{Port: port, Target: net.JoinHostPort(hostAccessName, portStr), Host: true})
		p.HostPorts = append(p.HostPorts, port)
	}
	p.HTTPPort = 8080
	for seen[p.HTTPPort] {
		p.HTTPPort++
	}
	return p, nil
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// workerAddrs are the host:port addresses a worker with spec connects to: its NATS URLs
// and the HostName of its DPS connection string.
func workerAddrs(spec WorkerSpec) ([]string, error) {
	var addrs []string
	for _, u := range spec.NATSURLs {
		for _, one := range strings.Split(u, ",") {
			one = strings.TrimSpace(one)
			if one == "" {
				continue
			}
			if !strings.Contains(one, "://") {
				one = "nats://" + one
			}
			pu, err := url.Parse(one)
			if err != nil || pu.Host == "" {
				return nil, fmt.Errorf("nats url %q: not a URL", one)
			}
			host := pu.Host
			if pu.Port() == "" {
				host = net.JoinHostPort(pu.Hostname(), strconv.Itoa(natsClientPort))
			}
			addrs = append(addrs, host)
		}
	}
	dps := HostOf(spec.DPS.ConnectionString)
	if dps == "" {
		return nil, errors.New("dps connection string has no HostName")
	}
	if _, _, err := net.SplitHostPort(dps); err != nil {
		dps = net.JoinHostPort(dps, "443")
	}
	return append(addrs, dps), nil
}

// ambassadorScript is the ambassador's shell script (alpine/socat): one socat per forward,
// listening on 127.0.0.1 only (the worker shares the network namespace; nothing else needs
// the listeners), a new upstream connection, resolved anew, per accepted one. The shell
// stays up whatever the socats do: the worker's network namespace is the ambassador's.
func ambassadorScript(fwds []forward) string {
	var b strings.Builder
	b.WriteString("trap 'exit 0' TERM INT\n")
	for _, f := range fwds {
		fmt.Fprintf(&b, "socat TCP4-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr TCP:%s &\n", f.Port, f.Target)
	}
	b.WriteString("while :; do sleep 3600 & wait $!; done\n")
	return b.String()
}

// listeningCheck is a shell command that succeeds once every port listens on 127.0.0.1
// (read from /proc/net/tcp, so it depends on no tool's output format).
func listeningCheck(ports []int) string {
	var b strings.Builder
	for _, p := range ports {
		// local address 0100007F:PORT, remote 00000000:0000, state 0A (LISTEN)
		fmt.Fprintf(&b, "grep -q '0100007F:%04X 00000000:0000 0A' /proc/net/tcp && ", p)
	}
	b.WriteString("true")
	return b.String()
}

// tsLineWriter turns Docker's timestamped log stream (each line prefixed with an RFC 3339
// timestamp and a space) into plain lines written to out, and remembers the last
// timestamp, so a follower that resumes (a restarted node, a broken stream) asks for the
// lines after it and neither loses nor repeats one. Safe for concurrent use by the stdout
// and stderr streams of one container (each needs its own tsLineWriter sharing mu, out and
// last).
type tsLineWriter struct {
	mu   *sync.Mutex
	out  io.Writer
	last *time.Time
	buf  []byte
}

func (w *tsLineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		if err := w.line(w.buf[:i+1]); err != nil {
			return 0, err
		}
		w.buf = w.buf[i+1:]
	}
}

// Flush writes a last line without a newline.
func (w *tsLineWriter) Flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.line(append(w.buf, '\n'))
	w.buf = nil
	return err
}

func (w *tsLineWriter) line(l []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if sp := bytes.IndexByte(l, ' '); sp > 0 {
		if ts, err := time.Parse(time.RFC3339Nano, string(l[:sp])); err == nil {
			if ts.After(*w.last) {
				*w.last = ts
			}
			l = l[sp+1:]
		}
	}
	_, err := w.out.Write(l)
	return err
}

// dockerSince is the "since" argument of Docker's log API that returns the lines after
// last (the API includes lines stamped exactly since).
func dockerSince(last time.Time) string {
	if last.IsZero() {
		return ""
	}
	next := last.Add(time.Nanosecond)
	return fmt.Sprintf("%d.%09d", next.Unix(), next.Nanosecond())
}
