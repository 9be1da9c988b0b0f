package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/dpsync/dpsync/internal/app"
)

func cmdRun(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("worker run", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var o app.Options
	finish := workerFlags(fs, &o)
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "worker run: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if err := finish(e.getenv); err != nil {
		fmt.Fprintf(e.stderr, "worker run: %v\n", err)
		return 2
	}
	o.Logger = newLogger(e.stderr, *logLevel)
	if err := app.Run(ctx, o); err != nil {
		o.Logger.Error("worker stopped", "err", err)
		return 1
	}
	return 0
}
