package main

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/emulator"
)

// memSampler records the peak heap (in-process only) and the peak RSS of a process while
// a scenario runs. It samples every 100 ms and, at the end, also reads the kernel's own
// high-water mark (VmHWM), which it resets at the start by writing 5 to clear_refs.
type memSampler struct {
	pid      int // 0 = this process
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	peakHeap uint64
	peakRSS  uint64
}

func startMemSampler(pid int) *memSampler {
	if pid == 0 {
		runtime.GC()
		debug.FreeOSMemory()
	}
	resetHWM(pid)
	m := &memSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			m.sample()
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *memSampler) sample() {
	var heap uint64
	if m.pid == 0 {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap = ms.HeapAlloc
	}
	rss, _ := procStatus(m.pid, "VmRSS")
	m.mu.Lock()
	m.peakHeap = max(m.peakHeap, heap)
	m.peakRSS = max(m.peakRSS, rss)
	m.mu.Unlock()
}

// finish stops sampling and returns peak heap and peak RSS in bytes (heap 0 for another
// process: its runtime is not visible from here).
func (m *memSampler) finish() (heap, rss uint64) {
	m.sample()
	hwm, _ := procStatus(m.pid, "VmHWM")
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.peakHeap, max(m.peakRSS, hwm)
}

func procPath(pid int, file string) string {
	if pid == 0 {
		return "/proc/self/" + file
	}
	return fmt.Sprintf("/proc/%d/%s", pid, file)
}

func resetHWM(pid int) {
	_ = os.WriteFile(procPath(pid, "clear_refs"), []byte("5"), 0)
}

// procStatus reads a "kB" field of /proc/<pid>/status, in bytes.
func procStatus(pid int, field string) (uint64, error) {
	f, err := os.Open(procPath(pid, "status"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s %s: %w", procPath(pid, "status"), field, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("%s: no %s", procPath(pid, "status"), field)
}

// dpsCost is what the emulator counted between two snapshots.
type dpsCost struct {
	Calls     int            `json:"calls"`
	ByOp      map[string]int `json:"callsByOperation"`
	BulkCalls int            `json:"bulkCalls"`
	BulkItems int            `json:"bulkItems"`
	Throttled int            `json:"throttled"`
	ItemErrs  map[string]int `json:"bulkItemErrors,omitempty"`
	Non2xx    map[string]int `json:"non2xx,omitempty"` // "op status" → count
}

func costBetween(a, b emulator.Counters) dpsCost {
	c := dpsCost{ByOp: map[string]int{}, ItemErrs: map[string]int{}, Non2xx: map[string]int{}}
	for op, m := range b.Calls {
		for status, n := range m {
			d := n - a.Calls[op][status]
			if d == 0 {
				continue
			}
			c.Calls += d
			c.ByOp[op] += d
			if !strings.HasPrefix(status, "2") {
				c.Non2xx[op+" "+status] += d
			}
		}
	}
	for code, n := range b.BulkItemErrors {
		if d := n - a.BulkItemErrors[code]; d != 0 {
			c.ItemErrs[code] = d
		}
	}
	c.BulkCalls = b.BulkCalls - a.BulkCalls
	c.BulkItems = b.BulkItems - a.BulkItems
	c.Throttled = b.Throttled - a.Throttled
	return c
}

// percentile returns the p-th percentile (0..100) of ds by nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(rank, len(s)-1))]
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*100) / 100 }

// pending sums NumPending + NumAckPending over the named consumers of a stream; missing
// consumers count as found=false.
func pending(ctx context.Context, js jetstream.JetStream, stream string, names []string) (left uint64, allFound bool, err error) {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, false, err
	}
	allFound = true
	for _, n := range names {
		c, err := st.Consumer(ctx, n)
		if err != nil {
			allFound = false
			continue
		}
		ci, err := c.Info(ctx)
		if err != nil {
			allFound = false
			continue
		}
		left += ci.NumPending + uint64(ci.NumAckPending)
	}
	return left, allFound, nil
}

// waitDrained polls until the consumers have nothing pending or unacknowledged, and
// returns when it saw that (to 20 ms).
func waitDrained(ctx context.Context, js jetstream.JetStream, stream string, names []string, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		left, all, err := pending(ctx, js, stream, names)
		if err == nil && all && left == 0 {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("not drained after %v: %d events left (all consumers exist: %v, err %v)", timeout, left, all, err)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// loadAvg reads /proc/loadavg (1, 5, 15 minutes).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
