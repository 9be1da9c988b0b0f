// Command fakeworker stands in for `worker run` in the harness's own tests: it accepts the
// flags the harness passes, serves /readyz, and exits on SIGTERM with --term-exit-code.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "run" {
		fmt.Fprintln(os.Stderr, "usage: fakeworker run [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	id := fs.String("worker-id", "", "")
	httpAddr := fs.String("http-addr", "", "")
	termCode := fs.Int("term-exit-code", 0, "")
	for _, name := range []string{"nats-url", "data-dir", "partitions", "replicas", "quota", "lease-ttl", "dps-try-timeout", "linger", "retry-budget", "ack-wait", "shutdown-timeout", "dps-ca", "redrive-schedule"} {
		fs.String(name, "", "")
	}
	fs.Parse(os.Args[2:])
	if os.Getenv("DPSYNC_DPS_CONNECTION_STRING") == "" {
		fmt.Println("no connection string in the environment")
		os.Exit(3)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	http.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	go http.ListenAndServe(*httpAddr, nil)
	fmt.Printf("{\"msg\":\"started\",\"worker\":%q,\"nats\":%q}\n", *id, fs.Lookup("nats-url").Value)
	<-sig
	fmt.Println(`{"msg":"stopping"}`)
	time.Sleep(50 * time.Millisecond)
	os.Exit(*termCode)
}
