package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/app"
	"github.com/dpsync/dpsync/internal/dlq/dlqcli"
)

// cmdDLQ runs the operators' dead-letter commands against any NATS the worker can reach:
// worker dlq [--nats-url U] [--nats-creds F] list|show|stats|replay|purge …
func cmdDLQ(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("worker dlq", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	url := fs.String("nats-url", "nats://127.0.0.1:4222", "NATS server URLs, comma-separated")
	creds := fs.String("nats-creds", "", "NATS credentials file")
	nkey := fs.String("nats-nkey", "", "NATS NKey seed file")
	user := fs.String("nats-user", "", "NATS user (password from DPSYNC_NATS_PASSWORD or --nats-password-file)")
	passFile := fs.String("nats-password-file", "", "file holding the NATS password")
	ca := fs.String("nats-ca", "", "CA file to verify the NATS server")
	stream := fs.String("dlq-stream", "DPS_DLQ", "dead-letter stream")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: worker dlq [connection flags] list|show|stats|replay|purge [flags]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := applyEnv(fs, e.getenv); err != nil {
		fmt.Fprintf(e.stderr, "worker dlq: %v\n", err)
		return 2
	}
	pass, err := secretFrom(e.getenv, envPrefix+"NATS_PASSWORD", *passFile)
	if err != nil {
		fmt.Fprintf(e.stderr, "worker dlq: nats password: %v\n", err)
		return 2
	}
	connect := func(ctx context.Context) (jetstream.JetStream, func(), error) {
		opts := []nats.Option{nats.Name("dpsync dlq"), nats.Timeout(5 * time.Second), nats.MaxReconnects(0)}
		if *creds != "" {
			opts = append(opts, nats.UserCredentials(*creds))
		}
		if *nkey != "" {
			o, err := nats.NkeyOptionFromSeed(*nkey)
			if err != nil {
				return nil, nil, fmt.Errorf("nats nkey file: %w", err)
			}
			opts = append(opts, o)
		}
		if *user != "" {
			opts = append(opts, nats.UserInfo(*user, pass))
		}
		if *ca != "" {
			opts = append(opts, nats.RootCAs(*ca))
		}
		nc, err := nats.Connect(*url, opts...)
		if err != nil {
			return nil, nil, fmt.Errorf("connect to NATS at %s: %s", app.RedactURLs(*url), redactNATSURL(err))
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
		Connect: connect, Stream: *stream,
	})
}
