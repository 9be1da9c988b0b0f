// Command worker is dpsync's worker and operator tool.
//
//	worker [run] [flags]        consume device events and keep DPS in sync (default)
//	worker demo                 zero-config tour: embedded JetStream + emulator + example events
//	worker publish FILE|-       publish JSONL events
//	worker dlq …                inspect, replay and purge dead letters
//	worker emulator [flags]     run the DPS emulator
//	worker register [flags]     register a device through the DPS runtime API
//
// Every flag --some-name can also be set with the environment variable DPSYNC_SOME_NAME.
// Secrets (DPS connection string, NATS password) come only from the environment or files.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)) }

// env is what a subcommand gets from the process.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := env{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv}
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return cmdRun(ctx, args, e)
	case "demo":
		return cmdDemo(ctx, args, e)
	case "publish":
		return cmdPublish(ctx, args, e)
	case "dlq":
		return cmdDLQ(ctx, args, e)
	case "emulator":
		return cmdEmulator(ctx, args, e)
	case "register":
		return cmdRegister(ctx, args, e)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "worker: unknown command %q\n\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: worker [command] [flags]

commands:
  run        consume device events and keep DPS in sync (default)
  demo       zero-config tour: embedded JetStream + DPS emulator + the example events
  publish    publish JSONL events from a file or stdin
  dlq        list / show / stats / replay / purge dead letters
  emulator   run the DPS emulator (HTTPS by default)
  register   register a device through the DPS runtime API

Run "worker <command> -h" for a command's flags. Every flag --name can also be set as
DPSYNC_NAME (upper case, dashes as underscores).
`)
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}
