package membership

import (
	"fmt"
	"slices"
	"testing"
)

func members(n int, prefix string) []string {
	ms := make([]string, n)
	for i := range ms {
		ms[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return ms
}

func TestAssignIsFairAndComplete(t *testing.T) {
	for _, parts := range []int{1, 3, 16, 64} {
		for m := 1; m <= 20; m++ {
			for _, prefix := range []string{"w", "host-1234", "pod"} {
				ms := members(m, prefix)
				got := assign(ms, parts)
				if len(got) != parts {
					t.Fatalf("%d/%d: got %d owners, want %d", parts, m, len(got), parts)
				}
				count := map[string]int{}
				for p, o := range got {
					if !slices.Contains(ms, o) {
						t.Fatalf("%d/%d: partition %d got owner %q, not a member", parts, m, p, o)
					}
					count[o]++
				}
				lo, hi := parts/m, (parts+m-1)/m
				for _, x := range ms {
					if c := count[x]; c < lo || c > hi {
						t.Errorf("%d partitions over %d members (%s): got %d for %s, want %d..%d", parts, m, prefix, c, x, lo, hi)
					}
				}
			}
		}
	}
}

func TestAssignIsDeterministic(t *testing.T) {
	ms := members(5, "w")
	want := assign(ms, 16)
	rev := slices.Clone(ms)
	slices.Reverse(rev)
	if got := assign(append(rev, "w-2"), 16); !slices.Equal(got, want) {
		t.Errorf("got %v for reordered members with a duplicate, want %v", got, want)
	}
	if got := assign(nil, 16); got != nil {
		t.Errorf("got %v for no members, want nil", got)
	}
}

// A join or a leave moves few partitions: about the newcomer's share, plus little churn
// among the others caused by the fair-share bound.
func TestAssignMovesFew(t *testing.T) {
	const parts = 16
	worst := 0
	total := 0
	runs := 0
	for m := 1; m <= 8; m++ {
		for _, prefix := range []string{"a", "b", "c", "d", "e"} {
			ms := members(m, prefix)
			before := assign(ms, parts)
			after := assign(append(slices.Clone(ms), prefix+"-new"), parts)
			moved := 0
			for p := range before {
				if before[p] != after[p] {
					moved++
				}
			}
			share := parts / (m + 1)
			extra := moved - share
			if extra > worst {
				worst = extra
			}
			total += extra
			runs++
			if limit := (parts+m)/(m+1) + 4; moved > limit {
				t.Errorf("%d → %d members (%s): got %d partitions moved, want ≤ %d", m, m+1, prefix, moved, limit)
			}
		}
	}
	mean := float64(total) / float64(runs)
	t.Logf("moves beyond the newcomer's share: worst %d, mean %.2f", worst, mean)
	if mean > 2.5 {
		t.Errorf("got mean %.2f extra moves per join, want ≤ 2.5", mean)
	}
}
