package membership

import (
	"hash/fnv"
	"slices"
	"strconv"
)

// assign returns the desired owner of every partition 0..partitions-1 for the given live
// members: balanced rendezvous (highest-random-weight) hashing.
//
// Every (partition, member) pair gets a pseudo-random weight from a hash of both names. The
// pairs are visited from the heaviest down; a partition goes to the first member of its
// visited pairs that still has room. Room is the fair share: every member may take
// ⌊P/M⌋ partitions, and the first P mod M members to reach that many may take one more.
// The result depends only on the member set (not on its order, nor on who computes it), every
// member gets ⌊P/M⌋ or ⌈P/M⌉ partitions, and a change of membership moves few partitions:
// most pairs keep their relative order, so most partitions keep their owner.
//
// A partition can only be left without room if some member ends below its quota, which the
// visit order excludes (that member's pair with the partition came up while it had room), so
// every partition gets an owner when members is not empty. The result maps partition → member;
// it is nil when members is empty.
func assign(members []string, partitions int) []string {
	if len(members) == 0 || partitions <= 0 {
		return nil
	}
	type pair struct {
		w uint64
		p int
		m int
	}
	ms := slices.Clone(members)
	slices.Sort(ms)
	ms = slices.Compact(ms)
	pairs := make([]pair, 0, partitions*len(ms))
	for p := 0; p < partitions; p++ {
		for i, m := range ms {
			pairs = append(pairs, pair{w: weight(m, p), p: p, m: i})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		switch {
		case a.w != b.w:
			if a.w > b.w {
				return -1
			}
			return 1
		case a.m != b.m:
			return a.m - b.m
		default:
			return a.p - b.p
		}
	})
	floor := partitions / len(ms)
	extra := partitions % len(ms)
	count := make([]int, len(ms))
	atCeil := 0
	owner := make([]string, partitions)
	left := partitions
	for _, x := range pairs {
		if left == 0 {
			break
		}
		if owner[x.p] != "" {
			continue
		}
		c := count[x.m]
		switch {
		case c < floor:
		case c == floor && atCeil < extra:
			atCeil++
		default:
			continue
		}
		count[x.m]++
		owner[x.p] = ms[x.m]
		left--
	}
	return owner
}

// weight is the rendezvous weight of member m for partition p: FNV-1a of both, finished
// with the splitmix64 mixer so that neighbouring partitions get unrelated weights.
func weight(m string, p int) uint64 {
	h := fnv.New64a()
	h.Write([]byte(m))
	h.Write([]byte{0})
	h.Write(strconv.AppendInt(nil, int64(p), 10))
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
