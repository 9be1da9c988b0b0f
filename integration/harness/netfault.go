package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Network runs toxiproxy in-process: TCP proxies whose connections the harness can slow
// down, reset or black-hole. Point a worker at a proxy's address instead of the real one
// (its NATS URLs, or the HostName of its DPS connection string).
type Network struct {
	server *toxiproxy.ApiServer

	mu      sync.Mutex
	proxies []*Proxy
}

// NewNetwork returns a Network whose proxies t.Cleanup stops.
func NewNetwork(t TB) *Network {
	n := &Network{server: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())}
	t.Cleanup(n.Close)
	return n
}

// Proxy starts a proxy named name on a free 127.0.0.1 port that forwards to upstream
// (host:port).
func (n *Network) Proxy(name, upstream string) (*Proxy, error) {
	p := toxiproxy.NewProxy(n.server, name, "127.0.0.1:0", upstream)
	if err := n.server.Collection.Add(p, true); err != nil {
		return nil, fmt.Errorf("start proxy %s: %w", name, err)
	}
	px := &Proxy{p: p, name: name, addr: p.Listen}
	n.mu.Lock()
	n.proxies = append(n.proxies, px)
	n.mu.Unlock()
	return px, nil
}

// Close stops every proxy and closes their connections.
func (n *Network) Close() {
	n.server.Collection.Clear()
}

// Proxy is one TCP proxy. Its toxics apply to open and new connections.
type Proxy struct {
	p    *toxiproxy.Proxy
	name string
	addr string
}

// Addr is the proxy's listen address, host:port.
func (p *Proxy) Addr() string { return p.addr }

// Direction says which way a toxic acts: Upstream is client → server, Downstream server →
// client.
type Direction string

// Directions of a toxic.
const (
	Upstream   Direction = "upstream"
	Downstream Direction = "downstream"
)

type toxic struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     Direction      `json:"stream"`
	Toxicity   float64        `json:"toxicity"`
	Attributes map[string]any `json:"attributes"`
}

func (p *Proxy) add(tx toxic) error {
	b, err := json.Marshal(tx)
	if err != nil {
		return err
	}
	if _, err := p.p.Toxics.AddToxicJson(bytes.NewReader(b)); err != nil {
		return fmt.Errorf("proxy %s: add toxic %s: %w", p.name, tx.Name, err)
	}
	return nil
}

// Latency delays data in both directions by latency ± jitter.
func (p *Proxy) Latency(latency, jitter time.Duration) error {
	for _, d := range []Direction{Upstream, Downstream} {
		if err := p.add(toxic{Name: "latency_" + string(d), Type: "latency", Stream: d, Toxicity: 1,
			Attributes: map[string]any{"latency": latency.Milliseconds(), "jitter": jitter.Milliseconds()}}); err != nil {
			return err
		}
	}
	return nil
}

// ResetPeer resets (TCP RST) every connection that sends data, after delay; new
// connections are reset the same way until Clear.
func (p *Proxy) ResetPeer(delay time.Duration) error {
	return p.add(toxic{Name: "reset_peer", Type: "reset_peer", Stream: Upstream, Toxicity: 1,
		Attributes: map[string]any{"timeout": delay.Milliseconds()}})
}

// BlackHole drops all data both ways and never closes the connections: the peer sees a hung
// server, not an error, until its own timeouts fire.
func (p *Proxy) BlackHole() error {
	for _, d := range []Direction{Upstream, Downstream} {
		if err := p.add(toxic{Name: "timeout_" + string(d), Type: "timeout", Stream: d, Toxicity: 1,
			Attributes: map[string]any{"timeout": 0}}); err != nil {
			return err
		}
	}
	return nil
}

// Clear removes every toxic. Connections a black hole held stay open and resume.
func (p *Proxy) Clear(ctx context.Context) {
	p.p.Toxics.ResetToxics(ctx)
}

// Cut stops the proxy: open connections are closed and new ones refused until Restore.
func (p *Proxy) Cut() { p.p.Stop() }

// Restore starts a cut proxy again on the same address.
func (p *Proxy) Restore() error {
	if err := p.p.Start(); err != nil && err != toxiproxy.ErrProxyAlreadyStarted {
		return fmt.Errorf("restore proxy %s: %w", p.name, err)
	}
	return nil
}
