package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/dpsync/dpsync/internal/app"
	"github.com/dpsync/dpsync/internal/telemetry"
)

func cmdRun(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("worker run", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var o app.Options
	finish := workerFlags(fs, &o)
	otlpEndpoint := fs.String("otlp-endpoint", "", "export spans over OTLP/HTTP to this collector, e.g. http://otel-collector:4318 (spans go to <url>/v1/traces; a URL with a path is used as is). Default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; none set: no spans")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: worker run [flags]   (also: worker [flags])")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, e); !ok {
		return code
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
	exp, err := telemetry.NewOTLPProcessor(ctx, telemetry.OTLPConfig{Endpoint: *otlpEndpoint, Getenv: e.getenv})
	if err != nil {
		fmt.Fprintf(e.stderr, "worker run: %v\n", err)
		return 2
	}
	if exp != nil {
		o.SpanProcessors = append(o.SpanProcessors, exp.Processor)
		o.Logger.Info("exporting spans over OTLP/HTTP", "component", "telemetry", "endpoint", exp.Endpoint)
	}
	if err := app.Run(ctx, o); err != nil {
		o.Logger.Error("worker stopped", "err", redactSecrets(err.Error(), workerSecrets(&o)...))
		return 1
	}
	return 0
}

// workerSecrets are the secrets of a worker's options: the passwords and tokens in the NATS
// URLs, the NATS password, the DPS connection string and its key.
func workerSecrets(o *app.Options) []string {
	s := append(urlSecrets(o.NATSURLs), o.NATSPassword)
	if cs := o.DPSConnectionString; cs != "" {
		s = append(s, cs)
		for _, part := range strings.Split(cs, ";") {
			if k, v, ok := strings.Cut(part, "="); ok && strings.EqualFold(strings.TrimSpace(k), "SharedAccessKey") {
				s = append(s, strings.TrimSpace(v))
			}
		}
	}
	return s
}
