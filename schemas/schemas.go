// Package schemas holds the versioned JSON Schemas of dpsync's wire formats, embedded in the
// binary. The files are the contract; package event compiles and applies them.
package schemas

import (
	"embed"
	"io/fs"
)

// EventV1 is the file name of the event schema, version 1, in FS.
const EventV1 = "event.v1.schema.json"

// EventV1ID is the $id of the event schema, version 1.
const EventV1ID = "https://dpsync.dev/schemas/event.v1.schema.json"

//go:embed *.json
var files embed.FS

// FS returns the schema files (read-only).
func FS() fs.FS { return files }

//go:embed examples/demo.jsonl
var demo []byte

// DemoEvents returns the bundled example events (examples/demo.jsonl) that `worker demo`
// publishes: JSONL, one event per line, two of them deliberately bad.
func DemoEvents() []byte { return append([]byte(nil), demo...) }
