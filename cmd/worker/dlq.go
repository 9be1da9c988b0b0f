package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dlq/dlqcli"
)

// dlqFlags binds the flags of "worker dlq" before its command: the NATS connection flags
// (shared with run and publish) and the dead-letter stream.
func dlqFlags(fs *flag.FlagSet, conn *natsFlags) (stream *string) {
	conn.urls = urlList{defaultNATSURL}
	conn.register(fs, "NATS server `URLs`, comma-separated")
	return fs.String("dlq-stream", "DPS_DLQ", "dead-letter stream")
}

// cmdDLQ runs the operators' dead-letter commands against any NATS the worker can reach:
// worker dlq [connection flags] list|show|stats|replay|purge [flags] — the connection
// flags may also follow the command.
func cmdDLQ(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("worker dlq", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var conn natsFlags
	stream := dlqFlags(fs, &conn)
	connFlags := func(sub *flag.FlagSet) {
		// Registered after the flags before the command were parsed: the defaults shown
		// are the values in force (never a URL's password: urlList redacts it).
		conn.register(sub, "NATS server `URLs`, comma-separated")
	}
	fs.Usage = func() {
		dlqcli.WriteUsage(fs.Output(), nil)
		fmt.Fprintln(fs.Output(), "\nflags before the command (the --nats-* connection flags may also follow it; each one can also be set as DPSYNC_<NAME>):")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, e); !ok {
		return code
	}
	// The environment first: flags after the command, parsed later, override it.
	if err := applyEnv(fs, e.getenv); err != nil {
		fmt.Fprintf(e.stderr, "worker dlq: %v\n", err)
		return 2
	}
	connect := func(ctx context.Context) (jetstream.JetStream, func(), error) {
		if err := conn.resolve(e.getenv); err != nil {
			return nil, nil, err
		}
		nc, err := conn.connect("dpsync dlq")
		if err != nil {
			return nil, nil, err
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		return js, nc.Close, nil
	}
	return dlqcli.Main(ctx, fs.Args(), dlqcli.Env{
		Stdin: e.stdin, Stdout: e.stdout, Stderr: e.stderr,
		Connect: connect, Stream: *stream, ConnFlags: connFlags,
	})
}
