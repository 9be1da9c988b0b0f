package harness

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// The container backend's pure parts (container_backend_config.go,
// container_backend_select.go) run in every build; the backend itself needs the build tag
// `containers` and a Docker engine (container_backend_engine_test.go).

func TestNATSImageFromGoMod(t *testing.T) {
	const pinned = "github.com/nats-io/nats-server/v2 v2.15.2"
	tests := []struct {
		name, gomod, want, wantErr string
	}{
		{name: "require block", gomod: "module x\n\nrequire (\n\tgithub.com/a/b v1.0.0\n\t" + pinned + "\n)\n", want: "nats:2.15.2-alpine"},
		{name: "require line", gomod: "module x\nrequire " + pinned + " // indirect\n", want: "nats:2.15.2-alpine"},
		{name: "replace before require", gomod: "module x\nreplace github.com/nats-io/nats-server/v2 => github.com/nats-io/nats-server/v2 v2.15.3\nrequire " + pinned + "\n", want: "nats:2.15.3-alpine"},
		{name: "replace of the required version", gomod: "module x\nrequire " + pinned + "\nreplace (\n\tgithub.com/nats-io/nats-server/v2 v2.15.2 => github.com/nats-io/nats-server/v2 v2.15.4\n)\n", want: "nats:2.15.4-alpine"},
		{name: "replace of another version", gomod: "module x\nrequire " + pinned + "\nreplace github.com/nats-io/nats-server/v2 v2.9.0 => ../fork\n", want: "nats:2.15.2-alpine"},
		{name: "other replaces", gomod: "module x\nreplace github.com/Azure/go-ansiterm => github.com/Azure/go-ansiterm v0.0.0-20250102033503-faa5f7b0171c\nrequire " + pinned + "\n", want: "nats:2.15.2-alpine"},
		{name: "replaced by a fork", gomod: "module x\nrequire " + pinned + "\nreplace github.com/nats-io/nats-server/v2 => github.com/me/nats-server/v2 v2.15.2\n", wantErr: "fork"},
		{name: "replaced by a directory", gomod: "module x\nrequire " + pinned + "\nreplace github.com/nats-io/nats-server/v2 => ../nats-server\n", wantErr: "fork or a directory"},
		{name: "pseudo-version", gomod: "module x\nrequire github.com/nats-io/nats-server/v2 v2.15.3-0.20260101000000-abcdefabcdef\n", wantErr: "not a release"},
		{name: "missing", gomod: "module x\nrequire github.com/nats-io/nats.go v1.55.0\n", wantErr: "does not require"},
		{name: "commented out", gomod: "module x\n// require " + pinned + "\n", wantErr: "does not require"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NATSImageFromGoMod([]byte(tt.gomod))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), NATSImageEnv) && tt.wantErr != "does not require" {
					t.Errorf("error %q does not name %s", err, NATSImageEnv)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestNATSImageMatchesGoMod: the image the container backend runs is the server the go
// command resolves for this module (what the process backend builds).
func TestNATSImageMatchesGoMod(t *testing.T) {
	ctx := t.Context()
	root, err := ModuleRoot(ctx)
	if err != nil {
		t.Skipf("no module root: %v", err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := NATSImageFromGoMod(gomod)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}", natsServerModule)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("go list -m %s: %v", natsServerModule, err)
	}
	if want := "nats:" + strings.TrimPrefix(strings.TrimSpace(string(out)), "v") + "-alpine"; img != want {
		t.Errorf("image %q, want %q (the version go list resolves)", img, want)
	}
}

// TestContainerNodeConfig parses the rendered config with the pinned nats-server's own
// parser.
func TestContainerNodeConfig(t *testing.T) {
	spec := ClusterSpec{}
	spec.setDefaults()
	conf := containerNodeConfig("n1", spec)
	path := filepath.Join(t.TempDir(), "n1.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server rejects the config: %v\n%s", err, conf)
	}
	if o.ServerName != "n1" || o.Host != "0.0.0.0" || o.Port != natsClientPort || o.HTTPPort != natsMonitorPort {
		t.Errorf("server_name %q listen %s:%d http %d", o.ServerName, o.Host, o.Port, o.HTTPPort)
	}
	if !o.JetStream || o.StoreDir != natsDataDir+"/jetstream" {
		t.Errorf("jetstream %v store_dir %q", o.JetStream, o.StoreDir)
	}
	if !o.SyncAlways {
		t.Errorf("sync_interval: SyncAlways = false, want true (spec %q)", spec.SyncInterval)
	}
	if o.Cluster.Name != "dpsync-it" || o.Cluster.Port != natsRoutePort || !o.Cluster.NoAdvertise {
		t.Errorf("cluster name %q port %d no_advertise %v", o.Cluster.Name, o.Cluster.Port, o.Cluster.NoAdvertise)
	}
	var routes []string
	for _, u := range o.Routes {
		routes = append(routes, u.Host)
	}
	if want := []string{"n0:6222", "n1:6222", "n2:6222"}; !slices.Equal(routes, want) {
		t.Errorf("routes %v, want %v", routes, want)
	}

	spec.SyncInterval = "2m"
	path2 := filepath.Join(t.TempDir(), "n0.conf")
	if err := os.WriteFile(path2, []byte(containerNodeConfig("n0", spec)), 0o600); err != nil {
		t.Fatal(err)
	}
	if o, err := server.ProcessConfigFile(path2); err != nil || o.SyncAlways || o.SyncInterval != 2*time.Minute {
		if o == nil {
			t.Fatalf("sync_interval 2m: %v", err)
		}
		t.Errorf("sync_interval 2m: err %v, always %v, interval %v", err, o.SyncAlways, o.SyncInterval)
	}
}

func TestPlanForwards(t *testing.T) {
	routes := map[int]clusterRoute{
		41001: {Network: "net-a", Host: "n0", Port: 4222},
		41002: {Network: "net-a", Host: "n1", Port: 4222},
	}
	addrs := []string{
		"127.0.0.1:41001",   // a node: direct
		"127.0.0.1:41002",   // a node: direct
		"localhost:41001",   // same port again
		"127.0.0.1:8080",    // a proxy on the test machine that took 8080
		"127.0.0.1:43000",   // the emulator
		"[::1]:43001",       // loopback too
		"nats.example:4222", // not loopback: left alone
	}
	p, err := planForwards(addrs, routes)
	if err != nil {
		t.Fatal(err)
	}
	want := []forward{
		{Port: 41001, Target: "n0:4222"},
		{Port: 41002, Target: "n1:4222"},
		{Port: 8080, Target: hostAccessName + ":8080", Host: true},
		{Port: 43000, Target: hostAccessName + ":43000", Host: true},
		{Port: 43001, Target: hostAccessName + ":43001", Host: true},
	}
	if !slices.Equal(p.Forwards, want) {
		t.Errorf("forwards\n%+v\nwant\n%+v", p.Forwards, want)
	}
	if !slices.Equal(p.HostPorts, []int{8080, 43000, 43001}) {
		t.Errorf("host ports %v", p.HostPorts)
	}
	if !slices.Equal(p.Networks, []string{"net-a"}) {
		t.Errorf("networks %v", p.Networks)
	}
	if p.HTTPPort != 8081 {
		t.Errorf("http port %d, want 8081 (8080 is forwarded)", p.HTTPPort)
	}
	if _, err := planForwards([]string{"127.0.0.1"}, nil); err == nil {
		t.Error("an address without a port is accepted")
	}
}

func TestWorkerAddrs(t *testing.T) {
	spec := WorkerSpec{
		NATSURLs: []string{"nats://127.0.0.1:41001", "nats://127.0.0.1:41002,nats://127.0.0.1:41003", "tls://n9", "127.0.0.1:41004"},
		DPS:      DPSTarget{ConnectionString: "HostName=127.0.0.1:43000;SharedAccessKeyName=p;SharedAccessKey=a2V5"},
	}
	got, err := workerAddrs(spec)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.1:41001", "127.0.0.1:41002", "127.0.0.1:41003", "n9:4222", "127.0.0.1:41004", "127.0.0.1:43000"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	spec.DPS.ConnectionString = "HostName=dps.example;SharedAccessKeyName=p;SharedAccessKey=a2V5"
	if got, _ := workerAddrs(spec); got[len(got)-1] != "dps.example:443" {
		t.Errorf("dps without a port: %v", got)
	}
	spec.DPS.ConnectionString = "SharedAccessKey=a2V5"
	if _, err := workerAddrs(spec); err == nil {
		t.Error("a connection string without HostName is accepted")
	}
}

func TestAmbassadorScript(t *testing.T) {
	s := ambassadorScript([]forward{{Port: 41001, Target: "n0:4222"}, {Port: 43000, Target: hostAccessName + ":43000", Host: true}})
	for _, want := range []string{
		"socat TCP4-LISTEN:41001,bind=127.0.0.1,fork,reuseaddr TCP:n0:4222 &",
		"socat TCP4-LISTEN:43000,bind=127.0.0.1,fork,reuseaddr TCP:host.testcontainers.internal:43000 &",
		"trap 'exit 0' TERM",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if sh, err := exec.LookPath("sh"); err == nil {
		if out, err := exec.Command(sh, "-n", "-c", s).CombinedOutput(); err != nil {
			t.Errorf("sh -n: %v\n%s", err, out)
		}
	}
}

// TestListeningCheck runs the ambassador's readiness check against this machine's
// /proc/net/tcp: it passes for a port listening on 127.0.0.1, fails for one that is not.
func TestListeningCheck(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/net/tcp")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	open := ln.Addr().(*net.TCPAddr).Port
	closed, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sh, "-c", listeningCheck([]int{open})).CombinedOutput(); err != nil {
		t.Errorf("port %d listens, check fails: %v %s", open, err, out)
	}
	if err := exec.Command(sh, "-c", listeningCheck([]int{open, closed[0]})).Run(); err == nil {
		t.Errorf("port %d does not listen, check passes", closed[0])
	}
	if err := exec.Command(sh, "-c", listeningCheck(nil)).Run(); err != nil {
		t.Errorf("no ports: %v", err)
	}
}

func TestTSLineWriter(t *testing.T) {
	var mu sync.Mutex
	var out bytes.Buffer
	var last time.Time
	w := &tsLineWriter{mu: &mu, out: &out, last: &last}
	for _, chunk := range []string{
		"2026-05-01T10:00:00.000000001Z first line\n2026-05-01T10:00:00.5",
		"00000000Z second ",
		"line\nno timestamp here\n2026-05-01T10:00:01.000000000Z",
		" last, no newline",
	} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := "first line\nsecond line\nno timestamp here\nlast, no newline\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	if want := time.Date(2026, 5, 1, 10, 0, 1, 0, time.UTC); !last.Equal(want) {
		t.Errorf("last %v, want %v", last, want)
	}
	if got := dockerSince(last); got != strconv.FormatInt(last.Unix(), 10)+".000000001" {
		t.Errorf("since %q", got)
	}
	if dockerSince(time.Time{}) != "" {
		t.Error("since of no line is not empty")
	}
}

func TestNewBackendSelection(t *testing.T) {
	b := NewBuilder(t.TempDir(), false)
	for _, v := range []string{"", "process"} {
		t.Setenv(BackendEnv, v)
		got, err := NewBackend(b)
		if err != nil {
			t.Fatalf("%s=%q: %v", BackendEnv, v, err)
		}
		if pb, ok := got.(*ProcessBackend); !ok || pb.Builder != b {
			t.Errorf("%s=%q: got %T, want the process backend with the builder", BackendEnv, v, got)
		}
	}
	t.Setenv(BackendEnv, "kubernetes")
	if _, err := NewBackend(b); err == nil || !strings.Contains(err.Error(), BackendContainers) {
		t.Errorf("unknown backend: %v", err)
	}
	t.Setenv(BackendEnv, BackendContainers)
	t.Setenv("DPSYNC_WORKER_RACE", "")
	got, err := NewBackend(b)
	if !ContainersBuilt {
		if err == nil || !strings.Contains(err.Error(), "-tags containers") {
			t.Errorf("without the tag: got %T, %v; want an error naming -tags containers", got, err)
		}
		return
	}
	if err != nil || fmt.Sprintf("%T", got) != "*harness.ContainerBackend" {
		t.Errorf("with the tag: got %T, %v", got, err)
	}
	t.Setenv("DPSYNC_WORKER_RACE", "1")
	if _, err := NewBackend(b); err == nil {
		t.Error("DPSYNC_WORKER_RACE=1 is accepted by the container backend")
	}
}
