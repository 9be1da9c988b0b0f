package main

import (
	"context"

	emulatorcli "github.com/dpsync/dpsync/internal/emulator/cli"
)

// cmdEmulator runs the DPS emulator until interrupted (flags: worker emulator -h).
func cmdEmulator(ctx context.Context, args []string, e env) int {
	return emulatorcli.Main(ctx, args, e.stdout, e.stderr)
}
