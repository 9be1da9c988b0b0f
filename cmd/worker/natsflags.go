package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/dpsync/dpsync/internal/app"
)

// defaultNATSURL is where the CLIs (publish, dlq) connect by default: the embedded server
// of a local `worker run`.
const defaultNATSURL = "nats://127.0.0.1:4222"

// natsFlags are the NATS connection flags that run, dlq and publish share, so that the
// operator tools reach any NATS the worker can. The password is never a flag: it comes from
// DPSYNC_NATS_PASSWORD or --nats-password-file.
//
// The flags are bound with flag.Var, which does not reset a value when it is registered, so
// one natsFlags can be registered on several flag sets (worker dlq binds it before and
// after the subcommand) and the last value given wins.
type natsFlags struct {
	urls     urlList
	creds    string // JWT credentials file
	nkey     string // NKey seed file
	user     string
	passFile string
	ca       string // CA to verify the server
	cert     string // client certificate (TLS)
	key      string // client key (TLS)

	password string // resolved by resolve: from the environment or passFile
}

// natsFlagNames lists the flags natsFlags registers, in order.
var natsFlagNames = []string{"nats-url", "nats-creds", "nats-nkey", "nats-user", "nats-password-file", "nats-ca", "nats-cert", "nats-key"}

// register binds the flags to fs. urlUsage describes --nats-url, whose default differs
// between the worker (empty: embedded server) and the CLIs.
func (n *natsFlags) register(fs *flag.FlagSet, urlUsage string) {
	fs.Var(&n.urls, "nats-url", urlUsage)
	fs.Var((*stringValue)(&n.creds), "nats-creds", "NATS credentials (JWT) `file`")
	fs.Var((*stringValue)(&n.nkey), "nats-nkey", "NATS NKey seed `file`")
	fs.Var((*stringValue)(&n.user), "nats-user", "NATS `user` (password from DPSYNC_NATS_PASSWORD or --nats-password-file)")
	fs.Var((*stringValue)(&n.passFile), "nats-password-file", "`file` holding the NATS password (or set DPSYNC_NATS_PASSWORD)")
	fs.Var((*stringValue)(&n.ca), "nats-ca", "CA `file` to verify the NATS server (TLS)")
	fs.Var((*stringValue)(&n.cert), "nats-cert", "client certificate `file` for NATS TLS (with --nats-key)")
	fs.Var((*stringValue)(&n.key), "nats-key", "client key `file` for NATS TLS (with --nats-cert)")
}

// resolve reads the password (environment first, then --nats-password-file) and checks
// that the flags go together.
func (n *natsFlags) resolve(getenv func(string) string) error {
	if (n.cert == "") != (n.key == "") {
		return errors.New("--nats-cert and --nats-key go together")
	}
	for _, u := range n.urls {
		// As the NATS client reads it, but without echoing the parser's error, which
		// quotes the URL's parts (the password among them).
		if !strings.Contains(u, "://") {
			u = "nats://" + u
		}
		if p, err := url.Parse(u); err != nil || p.Host == "" {
			return fmt.Errorf("--nats-url: %s is not a valid URL", redactURL(u))
		}
	}
	var err error
	if n.password, err = secretFrom(getenv, envPrefix+"NATS_PASSWORD", n.passFile); err != nil {
		return fmt.Errorf("nats password: %w", err)
	}
	return nil
}

// apply copies the connection settings into the worker's options.
func (n *natsFlags) apply(o *app.Options) {
	o.NATSURLs = append([]string(nil), n.urls...)
	o.NATSCredsFile = n.creds
	o.NATSNKeyFile = n.nkey
	o.NATSUser = n.user
	o.NATSPassword = n.password
	o.NATSCAFile = n.ca
	o.NATSCertFile = n.cert
	o.NATSKeyFile = n.key
}

// connect connects a CLI (one attempt, no reconnects) with the same settings the worker
// uses (internal/app connectNATS). Its error never holds a password.
func (n *natsFlags) connect(name string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.Timeout(5 * time.Second), nats.MaxReconnects(0)}
	if n.creds != "" {
		opts = append(opts, nats.UserCredentials(n.creds))
	}
	if n.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(n.nkey)
		if err != nil {
			return nil, fmt.Errorf("nats nkey file: %s", n.redact(err.Error()))
		}
		opts = append(opts, o)
	}
	if n.user != "" {
		opts = append(opts, nats.UserInfo(n.user, n.password))
	}
	if n.ca != "" {
		opts = append(opts, nats.RootCAs(n.ca))
	}
	if n.cert != "" {
		opts = append(opts, nats.ClientCert(n.cert, n.key))
	}
	urls := strings.Join(n.urls, ",")
	if urls == "" {
		urls = defaultNATSURL
	}
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %s", n.urls.String(), n.redact(err.Error()))
	}
	return nc, nil
}

// redact removes from s the user info of every URL and every secret these flags know:
// the passwords and tokens in the URLs and the NATS password.
func (n *natsFlags) redact(s string) string {
	return redactSecrets(s, append(urlSecrets(n.urls), n.password)...)
}

// redactSecrets is s without the user info of any URL in it and without any of secrets.
func redactSecrets(s string, secrets ...string) string {
	s = app.RedactURLs(s)
	for _, x := range secrets {
		if x != "" {
			s = strings.ReplaceAll(s, x, "[REDACTED]")
		}
	}
	return s
}

// urlSecrets returns the password or token of every URL in urls (the user info after
// its first ':', or all of it when there is no ':'), as written and as the URL parser
// reads it back (percent-decoded).
func urlSecrets(urls []string) []string {
	var out []string
	for _, u := range urls {
		info, ok := userInfo(u)
		if !ok {
			continue
		}
		secret := info
		if _, pass, ok := strings.Cut(info, ":"); ok {
			secret = pass
		}
		out = append(out, secret)
		if dec, err := url.PathUnescape(secret); err == nil && dec != secret {
			out = append(out, dec)
		}
		// A URL parser stops the authority at the first '/', '?' or '#': what comes
		// before it may show up on its own in a parse error.
		if i := strings.IndexAny(secret, "/?#"); i > 0 {
			out = append(out, secret[:i])
		}
	}
	return out
}

// userInfo returns the part of u between the scheme and the last '@' of the authority.
func userInfo(u string) (string, bool) {
	rest := u
	if _, after, ok := strings.Cut(u, "://"); ok {
		rest = after
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return "", false
	}
	return rest[:at], true
}

// redactURL is u with its user info replaced by [REDACTED].
func redactURL(u string) string {
	info, ok := userInfo(u)
	if !ok {
		return u
	}
	i := strings.Index(u, info+"@")
	return u[:i] + "[REDACTED]" + u[i+len(info):]
}

// urlList is a comma-separated list of URLs whose String (shown in usage texts and errors)
// never includes a URL's user info.
type urlList []string

func (l *urlList) String() string {
	if l == nil {
		return ""
	}
	out := make([]string, len(*l))
	for i, u := range *l {
		out[i] = redactURL(u)
	}
	return strings.Join(out, ",")
}

func (l *urlList) Set(v string) error { return (*stringList)(l).Set(v) }

// stringValue is a string flag that, unlike flag.StringVar, keeps its current value when
// registered.
type stringValue string

func (s *stringValue) String() string { return string(*s) }
func (s *stringValue) Set(v string) error {
	*s = stringValue(v)
	return nil
}
