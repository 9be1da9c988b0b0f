package emulator

import (
	"encoding/base64"
	"regexp"
	"testing"
	"time"
)

func TestDeriveKeyKnownAnswer(t *testing.T) {
	// Microsoft docs' example of a group-derived device key.
	got := base64.StdEncoding.EncodeToString(deriveKey("8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==", "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"))
	if want := "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestETagFormat(t *testing.T) {
	g := newIDGen(time.Now)
	re := regexp.MustCompile(`^"[0-9a-f]{8}-[0-9a-f]{4}-0800-0000-[0-9a-f]{12}"$`)
	seen := map[string]bool{}
	for range 1000 {
		e := g.etag()
		raw, err := base64.StdEncoding.DecodeString(e)
		if err != nil || !re.Match(raw) {
			t.Fatalf("got etag %q (%q), want base64 of a quoted Cosmos-style tag", e, raw)
		}
		if seen[e] {
			t.Fatalf("etag %s repeated", e)
		}
		seen[e] = true
	}
}

func TestEtagMatches(t *testing.T) {
	for _, c := range []struct {
		ifMatch, cur string
		want         bool
	}{
		{"abc=", "abc=", true},
		{`"abc="`, "abc=", true},
		{"*", "abc=", true},
		{" * ", "abc=", true},
		{"abd=", "abc=", false},
		{`"abc=`, "abc=", false},
		{`W/"abc="`, "abc=", false},
	} {
		if got := etagMatches(c.ifMatch, c.cur); got != c.want {
			t.Errorf("etagMatches(%q, %q): got %v, want %v", c.ifMatch, c.cur, got, c.want)
		}
	}
}

func TestValidID(t *testing.T) {
	for _, c := range []struct {
		id   string
		want bool
	}{
		{"a", true}, {"Dev_01:x.y-z", true}, {"ends-", true}, {"ends.", false}, {"ends_", false}, {"ends:", false},
		{"", false}, {"has space", false}, {"a/b", false}, {string(make([]byte, 129)), false},
	} {
		if got := validID(c.id); got != c.want {
			t.Errorf("validID(%q): got %v, want %v", c.id, got, c.want)
		}
	}
}

func TestWindow(t *testing.T) {
	w := newWindow(2, time.Minute)
	t0 := time.Unix(1000, 0)
	for i, c := range []struct {
		at   time.Duration
		ok   bool
		wait time.Duration
	}{
		{0, true, 0}, {10 * time.Second, true, 0}, {30 * time.Second, false, 30 * time.Second},
		{60 * time.Second, true, 0}, {65 * time.Second, false, 5 * time.Second}, {70 * time.Second, true, 0},
	} {
		ok, wait := w.allow(t0.Add(c.at))
		if ok != c.ok || wait != c.wait {
			t.Errorf("step %d: got %v %v, want %v %v", i, ok, wait, c.ok, c.wait)
		}
	}
}

func TestSASEncodingVariants(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	// A token signed over a lower-case escape (as .NET's HttpUtility.UrlEncode writes) verifies.
	for _, sr := range []string{"0ne00000001%2Fregistrations%2Fdev", "0ne00000001%2fregistrations%2fdev", "0ne00000001/registrations/dev"} {
		tok := signRaw(sr, "1999999999", key)
		st, e := parseSAS(tok)
		if e != nil {
			t.Fatalf("parse: %v", e.msg)
		}
		if !st.verify(key) {
			t.Errorf("sr %q: signature not accepted", sr)
		}
		if st.verify([]byte("other key other key other key!!!")) {
			t.Errorf("sr %q: accepted with a wrong key", sr)
		}
	}
}

func signRaw(sr, se string, key []byte) string {
	mac := hmacSHA256(key, sr+"\n"+se)
	return "SharedAccessSignature sig=" + urlQueryEscape(base64.StdEncoding.EncodeToString(mac)) + "&se=" + se + "&skn=registration&sr=" + sr
}
