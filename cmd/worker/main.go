// Command worker is dpsync's worker and operator tool.
//
//	worker [run] [flags]        consume device events and keep DPS in sync (default)
//	worker demo                 zero-config tour: embedded JetStream + emulator + example events
//	worker publish FILE|-       publish JSONL events
//	worker dlq …                inspect, replay and purge dead letters
//	worker emulator [flags]     run the DPS emulator
//	worker register [flags]     register a device through the DPS runtime API
//
// Every flag --some-name of run, demo, publish, dlq and register can also be set with the
// environment variable DPSYNC_SOME_NAME; the emulator's flags are flags only. Secrets (DPS
// connection string, NATS password) come only from the environment or files.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() { os.Exit(mainWithSignals()) }

// mainWithSignals runs the command line until it is done or SIGINT / SIGTERM ends it.
func mainWithSignals() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
}

// env is what a subcommand gets from the process.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

// run runs the command line args until it is done or ctx ends, and returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	e := env{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv}
	cmd := "run"
	switch {
	case len(args) > 0 && isHelp(args[0]):
		// Before the default command takes the flags: "worker -h" is the overview.
		cmd, args = "help", args[1:]
	case len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-':
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
	case "help":
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

Run "worker <command> -h" for a command's flags. Every flag --name of run, demo, publish,
dlq and register can also be set as DPSYNC_NAME (upper case, dashes as underscores); the
emulator's flags are flags only.
`)
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	switch arg {
	case "help", "-h", "-help", "--help":
		return true
	}
	return false
}

// parseFlags parses args into fs. A help request (-h) prints the usage on stdout and
// returns exit code 0; a bad flag prints the error and the usage on stderr and returns 2.
// ok is true when the command should go on.
func parseFlags(fs *flag.FlagSet, args []string, e env) (code int, ok bool) {
	var help bytes.Buffer
	usage := fs.Usage
	fs.Usage = func() {
		out := fs.Output()
		fs.SetOutput(&help)
		if usage != nil {
			usage()
		} else {
			fmt.Fprintf(&help, "usage of %s:\n", fs.Name())
			fs.PrintDefaults()
		}
		fs.SetOutput(out)
	}
	err := fs.Parse(args)
	fs.Usage = usage
	switch {
	case err == nil:
		return 0, true
	case errors.Is(err, flag.ErrHelp):
		e.stdout.Write(help.Bytes())
		return 0, false
	default:
		e.stderr.Write(help.Bytes())
		return 2, false
	}
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}
