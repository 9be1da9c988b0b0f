package event

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite schemas/examples/invalid/*.error.txt from the decoder's output")

const examples = "../../schemas/examples"

func readExamples(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(examples, dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatalf("no examples in %s", dir)
	}
	out := make(map[string][]byte, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(p), ".json")] = b
	}
	return out
}

func TestValidExamples(t *testing.T) {
	for name, b := range readExamples(t, "valid") {
		t.Run(name, func(t *testing.T) {
			e, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if e.TargetID() == "" || e.ID == "" || e.Operation == "" {
				t.Fatalf("decoded event lacks id, target or operation: %+v", e)
			}
			wantKind := KindEnrollment
			if strings.HasPrefix(name, "group-") {
				wantKind = KindGroup
			}
			if e.Kind != wantKind {
				t.Fatalf("Kind = %q, want %q", e.Kind, wantKind)
			}
			if !bytes.Equal(e.Raw, b) {
				t.Fatal("Raw is not the input")
			}
		})
	}
}

// TestInvalidExamples: every invalid example is rejected with exactly the error written next
// to it in NAME.error.txt (go test -update rewrites those files; review the diff).
func TestInvalidExamples(t *testing.T) {
	for name, b := range readExamples(t, "invalid") {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(b)
			if err == nil {
				t.Fatal("Decode accepted an invalid example")
			}
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("error %v (%T) is not an *InvalidError", err, err)
			}
			path := filepath.Join(examples, "invalid", name+".error.txt")
			if *update {
				if err := os.WriteFile(path, []byte(err.Error()+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, rerr := os.ReadFile(path)
			if rerr != nil {
				t.Fatalf("expected error file: %v", rerr)
			}
			if got := err.Error(); got != strings.TrimSuffix(string(want), "\n") {
				t.Fatalf("error:\n got  %s\n want %s", got, want)
			}
		})
	}
	// Every error file has its example.
	errs, _ := filepath.Glob(filepath.Join(examples, "invalid", "*.error.txt"))
	for _, p := range errs {
		if _, err := os.Stat(strings.TrimSuffix(p, ".error.txt") + ".json"); err != nil {
			t.Errorf("%s has no example: %v", p, err)
		}
	}
}

// TestDemoEvents: the demo file holds valid events and exactly two bad ones.
func TestDemoEvents(t *testing.T) {
	f, err := os.Open(filepath.Join(examples, "demo.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, MaxSize+1), MaxSize+1)
	var good, bad int
	ids := map[string]bool{}
	for sc.Scan() {
		e, err := Decode(sc.Bytes())
		if err != nil {
			bad++
			continue
		}
		good++
		if ids[e.ID] {
			t.Errorf("event id %s appears twice (it is the Nats-Msg-Id)", e.ID)
		}
		ids[e.ID] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if bad != 2 || good < 25 {
		t.Fatalf("demo has %d valid and %d invalid events, want ≥ 25 and 2", good, bad)
	}
}

// TestValidExamplesReencode: a decoded event encodes to an equivalent valid event (what a
// replay tool or a producer library built on Event does).
func TestValidExamplesReencode(t *testing.T) {
	for name, b := range readExamples(t, "valid") {
		t.Run(name, func(t *testing.T) {
			e, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			out, err := e.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			again, err := Decode(out)
			if err != nil {
				t.Fatalf("Decode(Encode()): %v\n%s", err, out)
			}
			if again.ID != e.ID || again.Key() != e.Key() || again.Operation != e.Operation || again.ETag() != e.ETag() ||
				len(again.Extensions) != len(e.Extensions) || again.Subject != e.Subject {
				t.Fatalf("re-encoded event differs:\n got  %+v\n want %+v", again, e)
			}
		})
	}
}
