package emulator

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// idGen makes etags, tracking ids and operation ids. Uniqueness within a run comes from a
// counter, across runs from a random nonce drawn at start.
type idGen struct {
	ctr   atomic.Uint64
	nonce uint32
	clock func() time.Time
}

func newIDGen(clock func() time.Time) *idGen {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &idGen{nonce: binary.BigEndian.Uint32(b[:]), clock: clock}
}

// etag returns a fresh etag in the service's format: base64 of a double-quoted Cosmos-style
// tag such as "0400e4f1-0000-0800-0000-646801f70000".
func (g *idGen) etag() string {
	n := g.ctr.Add(1)
	tag := fmt.Sprintf(`"%08x-%04x-0800-0000-%08x%04x"`, uint32(n), uint16(n>>32)^uint16(g.nonce>>16), uint32(g.clock().Unix()), uint16(g.nonce))
	return base64.StdEncoding.EncodeToString([]byte(tag))
}

// trackingID returns a fresh tracking id for an error body.
func (g *idGen) trackingID() string {
	n := g.ctr.Add(1)
	return fmt.Sprintf("%08x-%04x-4000-8000-%012x", g.nonce, uint16(n>>48), n&0xffffffffffff)
}

// operationID returns a fresh operation id shaped like the live service's
// ("5.316aac5bdc130deb.b1e02da8-…").
func (g *idGen) operationID() string {
	n := g.ctr.Add(1)
	var b [8]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("5.%016x.%08x-%04x-4%03x-a%03x-%012x", binary.BigEndian.Uint64(b[:]), g.nonce, uint16(n>>32), uint16(n>>20)&0xfff, uint16(n>>8)&0xfff, n)
}

// etagMatches reports whether an If-Match value (or a bulk item's etag) matches current:
// the raw etag, the same in double quotes, or "*".
func etagMatches(ifMatch, current string) bool {
	ifMatch = strings.TrimSpace(ifMatch)
	if ifMatch == "*" {
		return true
	}
	if ifMatch == current {
		return true
	}
	return len(ifMatch) >= 2 && ifMatch[0] == '"' && ifMatch[len(ifMatch)-1] == '"' && ifMatch[1:len(ifMatch)-1] == current
}

// validID reports whether id follows the DPS id rules: 1–128 characters, alphanumerics plus
// "- . _ :", the last one alphanumeric or "-". Upper case and underscores are accepted, as
// the live service does.
func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && c != '-' && c != '.' && c != '_' && c != ':' {
			return false
		}
		if i == len(id)-1 && !alnum && c != '-' {
			return false
		}
	}
	return true
}

// keyOf is the identity of an id: ids are case-insensitive.
func keyOf(id string) string { return strings.ToLower(id) }
