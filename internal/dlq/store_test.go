package dlq

import (
	"reflect"
	"testing"
	"time"
)

// fill stores a mixed set of letters and returns their sequences in order.
func fill(t *testing.T, e *env) []uint64 {
	t.Helper()
	return e.publish(t,
		letter("enrollment/dev-1", 1, "create", ClassPermanent, 409201, t0.Add(-30*time.Minute)),      // age 2h30m
		letter("enrollment/dev-1", 2, "update", ClassHeld, 0, t0.Add(-29*time.Minute)),                // 2h29m
		letter("enrollment/dev-2", 3, "create", ClassTransient, 0, t0.Add(90*time.Minute)),            // 30m
		letter("group/line-a", 4, "updateIfMatchETag", ClassPermanent, 412002, t0.Add(-48*time.Hour)), // 2d2h
		letter("enrollment/dev-3", 5, "create", ClassInvalid, 0, t0.Add(-10*24*time.Hour)),            // 10d
	)
}

func TestList(t *testing.T) {
	e := newEnv(t)
	s := fill(t, e)
	tests := []struct {
		name string
		f    Filter
		want []uint64
	}{
		{"all", Filter{}, s},
		{"id glob", Filter{KeyGlob: "dev-*"}, []uint64{s[0], s[1], s[2], s[4]}},
		{"key glob", Filter{KeyGlob: "group/*"}, []uint64{s[3]}},
		{"exact id", Filter{KeyGlob: "dev-2"}, []uint64{s[2]}},
		{"code", Filter{Code: 409201}, []uint64{s[0]}},
		{"class", Filter{Class: ClassPermanent}, []uint64{s[0], s[3]}},
		{"since", Filter{Since: t0}, []uint64{s[2]}},
		{"until", Filter{Until: t0.Add(-time.Hour)}, []uint64{s[3], s[4]}},
		{"window", Filter{Since: t0.Add(-3 * 24 * time.Hour), Until: t0}, []uint64{s[0], s[1], s[3]}},
		{"limit", Filter{Limit: 2}, s[:2]},
		{"class and limit", Filter{Class: ClassPermanent, Limit: 1}, s[:1]},
		{"nothing", Filter{KeyGlob: "nope"}, []uint64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := e.st.List(e.ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if gs := seqsOf(got); !reflect.DeepEqual(gs, tt.want) {
				t.Errorf("got %v, want %v", gs, tt.want)
			}
			for _, l := range got {
				if l.Data != nil || l.Size == 0 {
					t.Errorf("letter %d: got %d data bytes, size %d; want headers only with the size", l.Seq, len(l.Data), l.Size)
				}
			}
		})
	}
	for _, bad := range []Filter{{KeyGlob: "[x"}, {Class: "lost"}, {Code: -1}, {Limit: -1}, {Since: t0, Until: t0}} {
		if _, err := e.st.List(e.ctx, bad); err == nil {
			t.Errorf("List(%+v): got no error, want one", bad)
		}
	}
}

func TestListLarge(t *testing.T) {
	e := newEnv(t)
	ls := make([]Letter, 1200) // more than one scan batch
	for i := range ls {
		ls[i] = letter("enrollment/k", uint64(i+1), "update", ClassHeld, 0, t0)
	}
	if _, err := e.pub.PublishBatch(e.ctx, ls); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := e.st.List(e.ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ls) {
		t.Errorf("got %d letters, want %d", len(got), len(ls))
	}
	for i := 1; i < len(got); i++ {
		if got[i].Seq <= got[i-1].Seq {
			t.Fatalf("letters out of order at %d", i)
		}
	}
	t.Logf("listed %d letters in %v", len(got), time.Since(start))
}

func TestStats(t *testing.T) {
	e := newEnv(t)
	fill(t, e)
	got, err := e.st.Stats(e.ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{
		Total:   5,
		ByClass: map[Class]int{ClassPermanent: 2, ClassHeld: 1, ClassTransient: 1, ClassInvalid: 1},
		ByCode:  map[int]int{0: 3, 409201: 1, 412002: 1},
		ByAge:   map[string]int{"<1h": 1, "1-24h": 2, "1-7d": 1, ">7d": 1},
		Oldest:  t0.Add(-10 * 24 * time.Hour),
		Keys:    4,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestPurge(t *testing.T) {
	e := newEnv(t)
	s := fill(t, e)
	removed, err := e.st.Purge(e.ctx, Filter{KeyGlob: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(removed); !reflect.DeepEqual(got, s[:2]) {
		t.Errorf("removed: got %v, want %v", got, s[:2])
	}
	left, _ := e.st.List(e.ctx, Filter{})
	if got := seqsOf(left); !reflect.DeepEqual(got, s[2:]) {
		t.Errorf("left: got %v, want %v", got, s[2:])
	}
	// Letters someone else removed meanwhile are not reported.
	if err := e.dlq.DeleteMsg(e.ctx, s[2]); err != nil {
		t.Fatal(err)
	}
	removed, err = e.st.PurgeLetters(e.ctx, left)
	if err != nil || !reflect.DeepEqual(seqsOf(removed), s[3:]) {
		t.Errorf("purge with one gone: got %v %v, want %v", seqsOf(removed), err, s[3:])
	}
}
