//go:build !dpsync_emulator

package harness

import (
	"context"
	"fmt"
)

// startEmulator is the stand-in used while internal/emulator has not landed. When it has:
// check emulator_inproc.go against its API, delete this file and the build constraint of
// emulator_inproc.go (until then, `go test -tags dpsync_emulator ./integration/...` builds
// the real one).
func startEmulator(context.Context, TB, EmulatorOptions) (*Emulator, error) {
	return nil, fmt.Errorf("%w: internal/emulator is not in this build (see integration/harness/emulator_missing.go)", ErrMissing)
}
