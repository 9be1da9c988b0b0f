package emulator

import (
	"sync"
	"time"
)

// window is a sliding-window limiter: at most limit events in any span of length per. It
// keeps the times of the last limit accepted events in a ring, so checking is O(1). A
// sliding window is stricter than the fixed windows real services often use: a client that
// passes here passes there.
type window struct {
	limit int
	per   time.Duration
	times []time.Time // ring of accepted event times
	next  int         // index of the oldest entry once the ring is full
}

func newWindow(limit int, per time.Duration) *window {
	return &window{limit: limit, per: per, times: make([]time.Time, 0, limit)}
}

// allow records an event at now if the window has room and reports whether it did; if not,
// it returns how long until it will have room.
func (w *window) allow(now time.Time) (bool, time.Duration) {
	if len(w.times) < w.limit {
		w.times = append(w.times, now)
		return true, 0
	}
	oldest := w.times[w.next]
	if free := oldest.Add(w.per); now.Before(free) {
		return false, free.Sub(now)
	}
	w.times[w.next] = now
	w.next = (w.next + 1) % w.limit
	return true, 0
}

// newest returns the time of the latest accepted event.
func (w *window) newest() time.Time {
	if len(w.times) == 0 {
		return time.Time{}
	}
	if len(w.times) < w.limit {
		return w.times[len(w.times)-1]
	}
	return w.times[(w.next+w.limit-1)%w.limit]
}

// limiter holds the quotas of one emulator.
type limiter struct {
	mu      sync.Mutex
	q       Quotas
	service *window
	regs    *window
	polls   map[string]*window
}

func newLimiter(q Quotas) *limiter {
	l := &limiter{q: q, polls: map[string]*window{}}
	if q.ServiceOpsPerMinute > 0 {
		l.service = newWindow(q.ServiceOpsPerMinute, time.Minute)
	}
	if q.RegistrationsPerMinute > 0 {
		l.regs = newWindow(q.RegistrationsPerMinute, time.Minute)
	}
	return l
}

// retrySeconds rounds d up to whole seconds, at least 1.
func retrySeconds(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

func (l *limiter) allowService(now time.Time) *apiError {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.service == nil {
		return nil
	}
	if ok, wait := l.service.allow(now); !ok {
		return &apiError{code: CodeThrottled, msg: "Too many requests: the service operations quota is exhausted.", retryAfter: retrySeconds(wait)}
	}
	return nil
}

func (l *limiter) allowRegistration(now time.Time) *apiError {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.regs == nil {
		return nil
	}
	if ok, wait := l.regs.allow(now); !ok {
		return &apiError{code: CodeRegistrationsThrottled, msg: "Too many requests: the device registrations quota is exhausted.", retryAfter: retrySeconds(wait)}
	}
	return nil
}

func (l *limiter) allowPoll(now time.Time, device string) *apiError {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.q.PollsPer10s == 0 {
		return nil
	}
	w := l.polls[device]
	if w == nil {
		if len(l.polls) >= 10000 {
			// Forget devices idle for a whole window: they have their full budget again.
			for k, v := range l.polls {
				if now.Sub(v.newest()) >= v.per {
					delete(l.polls, k)
				}
			}
		}
		w = newWindow(l.q.PollsPer10s, 10*time.Second)
		l.polls[device] = w
	}
	if ok, wait := w.allow(now); !ok {
		return &apiError{code: CodePollsThrottled, msg: "Too many requests: the polling quota of this device is exhausted.", retryAfter: retrySeconds(wait)}
	}
	return nil
}
