package harness

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// TestNodeConfigSyncInterval: the process nodes' config says what the spec asks, as
// nats-server reads it. Unquoted, "2m" was read as 2,000,000 seconds.
func TestNodeConfigSyncInterval(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		always   bool
		interval time.Duration
	}{
		{"always", true, 0},
		{"2m", false, 2 * time.Minute},
		{"30s", false, 30 * time.Second},
	} {
		spec := ClusterSpec{Name: "dpsync-it", SyncInterval: tc.spec}
		n := &node{name: "n0", clientPort: 4222, routePort: 6222, httpPort: 8222}
		path := filepath.Join(t.TempDir(), "n0.conf")
		if err := os.WriteFile(path, []byte(nodeConfig(n, spec, t.TempDir(), []string{"nats://127.0.0.1:6223"})), 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := server.ProcessConfigFile(path)
		if err != nil {
			t.Fatalf("sync_interval %s: nats-server rejects the config: %v", tc.spec, err)
		}
		if o.SyncAlways != tc.always || (!tc.always && o.SyncInterval != tc.interval) {
			t.Errorf("sync_interval %s: got always %v interval %v, want always %v interval %v",
				tc.spec, o.SyncAlways, o.SyncInterval, tc.always, tc.interval)
		}
	}
}
