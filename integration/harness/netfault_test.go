package harness

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echoServer echoes lines until the listener closes.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return l.Addr().String()
}

// roundTrip writes a line and reads it back within timeout.
func roundTrip(c net.Conn, r *bufio.Reader, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	c.SetDeadline(start.Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "ping\n" {
		return 0, errors.New("got " + line + ", want ping")
	}
	return time.Since(start), nil
}

func TestProxyToxics(t *testing.T) {
	n := NewNetwork(t)
	p, err := n.Proxy("echo", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	c, r := dial()
	if _, err := roundTrip(c, r, 2*time.Second); err != nil {
		t.Fatalf("clean proxy: %v", err)
	}

	// Latency applies to an open connection, both ways.
	if err := p.Latency(100*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	d, err := roundTrip(c, r, 5*time.Second)
	if err != nil {
		t.Fatalf("with latency: %v", err)
	}
	if d < 200*time.Millisecond {
		t.Errorf("got round trip %v with 100ms latency each way, want ≥ 200ms", d)
	}
	p.Clear(t.Context())

	// Black hole: no answer, no error, until cleared.
	if err := p.BlackHole(); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(c, r, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("black hole: got %v, want a read timeout", err)
	}
	p.Clear(t.Context())
	c2, r2 := dial()
	if _, err := roundTrip(c2, r2, 2*time.Second); err != nil {
		t.Fatalf("after clearing the black hole: %v", err)
	}

	// Reset peer: the connection dies with an error.
	if err := p.ResetPeer(0); err != nil {
		t.Fatal(err)
	}
	c3, r3 := dial()
	if _, err := roundTrip(c3, r3, 2*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("reset peer: got %v, want a connection error", err)
	}
	p.Clear(t.Context())

	// Cut closes connections and refuses new ones; Restore listens again on the same port.
	p.Cut()
	if c4, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c4.Close()
		t.Fatal("dial of a cut proxy succeeded, want refused")
	}
	if err := p.Restore(); err != nil {
		t.Fatal(err)
	}
	c5, r5 := dial()
	if _, err := roundTrip(c5, r5, 2*time.Second); err != nil {
		t.Fatalf("after restore: %v", err)
	}
}
