// Package dlqcli is the operators' command line for the dead-letter stream, run as
// "worker dlq <command>": list, show, stats, replay and purge. It works against any NATS
// server the Connect function of its Env reaches.
//
// Exit codes: 0 success, 1 failure (unreachable server, unknown sequence, a replay that
// failed or was interrupted, a declined purge), 2 usage errors (unknown command, bad flag,
// bad filter).
package dlqcli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dlq"
)

// Env is what the commands need from the process.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Connect returns a JetStream context and a function that closes it. Required.
	Connect func(ctx context.Context) (jetstream.JetStream, func(), error)
	// Now is the clock of the AGE column, the stats' age buckets and relative
	// --since/--until (default time.Now).
	Now func() time.Time
	// Stream is the default of --stream (default "DPS_DLQ").
	Stream string
	// Terminal reports whether w is a terminal, where replay draws its progress bar in
	// place (default: w is an *os.File on a character device).
	Terminal func(w io.Writer) bool
	// ConnFlags, if set, registers the flags Connect reads (the NATS connection flags) on
	// every command's flag set, so they may follow the command ("worker dlq list --nats-url
	// U"). It must not reset values already set: the caller may have parsed the same flags
	// before the command. The usage lists them under "connection flags".
	ConnFlags func(fs *flag.FlagSet)
}

func (e *Env) defaults() {
	if e.Stdin == nil {
		e.Stdin = strings.NewReader("")
	}
	if e.Stdout == nil {
		e.Stdout = io.Discard
	}
	if e.Stderr == nil {
		e.Stderr = io.Discard
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	if e.Stream == "" {
		e.Stream = dlq.DefaultStream
	}
	if e.Terminal == nil {
		e.Terminal = isTerminal
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

const usageText = `usage: worker dlq [connection flags] <command> [flags]

commands:
  list          list dead letters (SEQ AGE KEY OP CLASS CODE REASON)
  show SEQ      one letter with its history and the event (secrets masked)
  stats         counts by class, code and age
  replay        republish letters to their origin subjects, per key in order, each
                once a worker settled the one before (--wait, default 2m)
  purge         delete letters (asks first unless --yes)

filters (list, stats, replay, purge):
  --key GLOB    key "enrollment/dev-*" or id "dev-*" (path.Match syntax)
  --code N      DPS error code, e.g. 409201
  --class C     transient | permanent | invalid | held
  --since T     last failure at or after T: a duration ago (2h, 30m) or RFC 3339
  --until T     last failure before T
  --limit N     at most N letters, oldest first

Run "worker dlq <command> -h" for a command's flags.
`

// WriteUsage writes the dlq commands' usage to w, with the connection flags connFlags
// registers (nil: none).
func WriteUsage(w io.Writer, connFlags func(fs *flag.FlagSet)) {
	fmt.Fprint(w, usageText)
	if connFlags == nil {
		return
	}
	fs := flag.NewFlagSet("dlq", flag.ContinueOnError)
	fs.SetOutput(w)
	connFlags(fs)
	fmt.Fprintln(w, "\nconnection flags (before or after the command):")
	fs.PrintDefaults()
}

// usageError is a bad command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// Main runs the dlq command in args (args[0] is the command) and returns the exit code.
func Main(ctx context.Context, args []string, env Env) int {
	env.defaults()
	if len(args) == 0 {
		WriteUsage(env.Stderr, env.ConnFlags)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var run func(*cli, context.Context, []string) error
	switch cmd {
	case "list":
		run = (*cli).list
	case "show":
		run = (*cli).show
	case "stats":
		run = (*cli).stats
	case "replay":
		run = (*cli).replay
	case "purge":
		run = (*cli).purge
	case "help", "-h", "-help", "--help":
		WriteUsage(env.Stdout, env.ConnFlags)
		return 0
	default:
		fmt.Fprintf(env.Stderr, "dlq: unknown command %q\n\n", cmd)
		WriteUsage(env.Stderr, env.ConnFlags)
		return 2
	}
	c := &cli{env: env, cmd: cmd}
	err := run(c, ctx, rest)
	if c.closeConn != nil {
		c.closeConn()
	}
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(env.Stderr, "dlq %s: %v\n", cmd, err)
		return 2
	default:
		fmt.Fprintf(env.Stderr, "dlq %s: %v\n", cmd, err)
		return 1
	}
}

type cli struct {
	env       Env
	cmd       string
	stream    string
	closeConn func()
}

// flagSet returns the command's flag set with --stream.
func (c *cli) flagSet(synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("dlq "+c.cmd, flag.ContinueOnError)
	fs.SetOutput(c.env.Stderr)
	fs.StringVar(&c.stream, "stream", c.env.Stream, "dead-letter stream")
	if c.env.ConnFlags != nil {
		c.env.ConnFlags(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(c.env.Stderr, "usage: worker dlq %s %s\n\nflags:\n", c.cmd, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args, allowing flags after positional arguments, and returns the
// positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usagef("%v", err) // the flag package printed the usage already
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// filterFlags are the filter flags shared by list, stats, replay and purge.
type filterFlags struct {
	key, code, class, since, until string
	limit                          int
}

func (f *filterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.key, "key", "", "key glob: \"enrollment/dev-*\" or \"dev-*\"")
	fs.StringVar(&f.code, "code", "", "DPS error code, e.g. 409201")
	fs.StringVar(&f.class, "class", "", "transient | permanent | invalid | held")
	fs.StringVar(&f.since, "since", "", "last failure at or after: a duration ago (2h) or an RFC 3339 time")
	fs.StringVar(&f.until, "until", "", "last failure before: a duration ago (2h) or an RFC 3339 time")
	fs.IntVar(&f.limit, "limit", 0, "at most this many letters, oldest first (0: all)")
}

func (f *filterFlags) filter(now time.Time) (dlq.Filter, error) {
	out := dlq.Filter{KeyGlob: f.key, Class: dlq.Class(f.class), Limit: f.limit}
	if f.code != "" {
		n, err := strconv.Atoi(f.code)
		if err != nil || n <= 0 {
			return out, usagef("--code: %q is not a DPS error code (a positive number such as 409201)", f.code)
		}
		out.Code = n
	}
	if f.class != "" && !out.Class.Valid() {
		return out, usagef("--class: %q is not one of transient, permanent, invalid, held", f.class)
	}
	var err error
	if out.Since, err = parseTime("--since", f.since, now); err != nil {
		return out, err
	}
	if out.Until, err = parseTime("--until", f.until, now); err != nil {
		return out, err
	}
	if f.limit < 0 {
		return out, usagef("--limit: %d is negative", f.limit)
	}
	if err := out.Validate(); err != nil {
		return out, usagef("%v", err)
	}
	return out, nil
}

// parseTime reads a time flag: a duration ago, or an RFC 3339 time.
func parseTime(name, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := parseDuration(v); err == nil {
		if d < 0 {
			return time.Time{}, usagef("%s: %q is negative", name, v)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	return time.Time{}, usagef("%s: %q is neither a duration nor an RFC 3339 time", name, v)
}

// parseDuration is time.ParseDuration plus whole days ("3d").
func parseDuration(v string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(v, "d"); ok {
		if days, err := strconv.Atoi(n); err == nil {
			return time.Duration(days) * 24 * time.Hour, nil
		}
	}
	return time.ParseDuration(v)
}

// open connects and opens the store.
func (c *cli) open(ctx context.Context) (*dlq.Store, error) {
	if c.env.Connect == nil {
		return nil, errors.New("connect: no NATS connection configured")
	}
	js, closeFn, err := c.env.Connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	c.closeConn = closeFn
	st, err := dlq.OpenStore(ctx, js, dlq.StoreOptions{Stream: c.stream, Now: c.env.Now})
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (c *cli) list(ctx context.Context, args []string) error {
	var ff filterFlags
	fs := c.flagSet("[filters] [--json]")
	ff.register(fs)
	asJSON := fs.Bool("json", false, "print a JSON array")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	f, err := ff.filter(c.env.Now())
	if err != nil {
		return err
	}
	st, err := c.open(ctx)
	if err != nil {
		return err
	}
	ls, err := st.List(ctx, f)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(c.env.Stdout, lettersJSON(ls, false))
	}
	if len(ls) == 0 {
		fmt.Fprintln(c.env.Stdout, "no dead letters")
		return nil
	}
	return c.table(ls)
}

// table writes letters as the list table.
func (c *cli) table(ls []dlq.Letter) error {
	now := c.env.Now()
	tw := tabwriter.NewWriter(c.env.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tAGE\tKEY\tOP\tCLASS\tCODE\tREASON")
	for _, l := range ls {
		code := "-"
		if l.Code != 0 {
			code = strconv.Itoa(l.Code)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Seq, formatAge(l.Age(now)), dash(l.Key), dash(l.Operation),
			dash(string(l.Class)), code, dash(truncate(l.Reason, 72)))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// formatAge writes d coarsely: 45s, 12m, 3h05m, 2d04h.
func formatAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%02dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}

func (c *cli) show(ctx context.Context, args []string) error {
	fs := c.flagSet("SEQ [--show-secrets] [--json]")
	secrets := fs.Bool("show-secrets", false, "show symmetric keys and TPM keys in the event")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want one sequence number, got %d arguments", len(pos))
	}
	seq, err := strconv.ParseUint(pos[0], 10, 64)
	if err != nil || seq == 0 {
		return usagef("%q is not a sequence number", pos[0])
	}
	st, err := c.open(ctx)
	if err != nil {
		return err
	}
	l, err := st.Get(ctx, seq)
	if err != nil {
		return err
	}
	if *asJSON {
		j := letterJSONOf(l, true)
		j.Event = eventJSON(l.Data, !*secrets)
		return writeJSON(c.env.Stdout, j)
	}
	return c.writeShow(l, !*secrets)
}

func (c *cli) writeShow(l dlq.Letter, mask bool) error {
	w := c.env.Stdout
	now := c.env.Now()
	fmt.Fprintf(w, "Dead letter %d\n", l.Seq)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k string, v any) {
		s := fmt.Sprint(v)
		if s == "" || s == "0" {
			return
		}
		fmt.Fprintf(tw, "  %s:\t%s\n", k, s)
	}
	tm := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339) + " (" + formatAge(now.Sub(t)) + " ago)"
	}
	row("Key", l.Key)
	row("Kind", l.Kind)
	row("Operation", l.Operation)
	row("Class", l.Class)
	row("Reason", l.Reason)
	row("Code", l.Code)
	row("Status", l.Status)
	row("Attempts", l.Attempts)
	row("First failure", tm(l.FirstFailure))
	row("Last failure", tm(l.LastFailure))
	row("Redrives", l.Redrives)
	row("Event id", l.EventID)
	if l.OriginStream != "" || l.OriginSeq != 0 {
		row("Origin", fmt.Sprintf("%s #%d on %s", l.OriginStream, l.OriginSeq, l.OriginSubject))
	}
	row("Position", l.Position)
	row("Worker", l.Worker)
	row("Trace id", l.TraceID)
	row("Subject", l.Subject)
	row("Stored", tm(l.Time))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(l.History) > 0 {
		fmt.Fprintln(w, "History:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for i, f := range l.History {
			code := "-"
			if f.Code != 0 {
				code = strconv.Itoa(f.Code)
			}
			status := "-"
			if f.Status != 0 {
				status = strconv.Itoa(f.Status)
			}
			fmt.Fprintf(tw, "  %d.\t%s\t%s\t%s\t%s\tattempts %d\t%s\n", i+1, f.When.UTC().Format(time.RFC3339), f.Class, code, status, f.Attempts, f.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "Event (%d bytes):\n", len(l.Data))
	_, err := fmt.Fprintln(w, prettyEvent(l.Data, mask))
	return err
}

func (c *cli) stats(ctx context.Context, args []string) error {
	var ff filterFlags
	fs := c.flagSet("[filters] [--json]")
	ff.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	f, err := ff.filter(c.env.Now())
	if err != nil {
		return err
	}
	st, err := c.open(ctx)
	if err != nil {
		return err
	}
	s, err := st.Stats(ctx, f)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(c.env.Stdout, s)
	}
	w := c.env.Stdout
	if s.Total == 0 {
		fmt.Fprintln(w, "no dead letters")
		return nil
	}
	fmt.Fprintf(w, "%s of %s, oldest %s ago\n", plural(s.Total, "dead letter"), plural(s.Keys, "key"), formatAge(c.env.Now().Sub(s.Oldest)))
	section := func(title string, rows [][2]string) error {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "%s\tCOUNT\n", title)
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
		}
		return tw.Flush()
	}
	var rows [][2]string
	for _, cl := range []dlq.Class{dlq.ClassTransient, dlq.ClassPermanent, dlq.ClassInvalid, dlq.ClassHeld} {
		rows = append(rows, [2]string{string(cl), strconv.Itoa(s.ByClass[cl])})
	}
	if err := section("CLASS", rows); err != nil {
		return err
	}
	codes := make([]int, 0, len(s.ByCode))
	for code := range s.ByCode {
		codes = append(codes, code)
	}
	sortInts(codes)
	rows = rows[:0]
	for _, code := range codes {
		name := strconv.Itoa(code)
		if code == 0 {
			name = "-"
		}
		rows = append(rows, [2]string{name, strconv.Itoa(s.ByCode[code])})
	}
	if err := section("CODE", rows); err != nil {
		return err
	}
	rows = rows[:0]
	for _, b := range dlq.AgeBuckets {
		rows = append(rows, [2]string{b, strconv.Itoa(s.ByAge[b])})
	}
	return section("AGE", rows)
}

// plural writes "1 letter", "2 letters".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func sortInts(a []int) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

func (c *cli) replay(ctx context.Context, args []string) error {
	var ff filterFlags
	fs := c.flagSet("[filters] [--dry-run] [--as MODE] [--no-followers] [--wait D]")
	ff.register(fs)
	dry := fs.Bool("dry-run", false, "only show what would be replayed")
	as := fs.String("as", "", "replay failed letters with this operation: "+strings.Join(dlq.Operations, ", "))
	noFollowers := fs.Bool("no-followers", false, "do not replay the held letters behind the selected ones")
	wait := fs.Duration("wait", dlq.DefaultReplayWait, "how long to wait for a worker to settle each republished letter before the key's replay stops")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	f, err := ff.filter(c.env.Now())
	if err != nil {
		return err
	}
	if *as != "" && !validOp(*as) {
		return usagef("--as: %q is not one of %s", *as, strings.Join(dlq.Operations, ", "))
	}
	if *wait <= 0 {
		return usagef("--wait: %v is not positive", *wait)
	}
	st, err := c.open(ctx)
	if err != nil {
		return err
	}
	w := c.env.Stdout
	if *dry {
		rep, err := st.Replay(ctx, f, dlq.ReplayOptions{DryRun: true, As: *as, NoFollowers: *noFollowers})
		if err != nil {
			return err
		}
		if len(rep.Selected) == 0 {
			fmt.Fprintln(w, "no dead letters")
			return nil
		}
		fmt.Fprintf(w, "would replay %s of %s, in this order:\n", plural(len(rep.Selected), "letter"), plural(rep.Keys, "key"))
		return c.table(rep.Selected)
	}
	bar := newProgress(c.env.Stderr, c.env.Terminal(c.env.Stderr))
	rep, err := st.Replay(ctx, f, dlq.ReplayOptions{As: *as, NoFollowers: *noFollowers, Wait: *wait, Progress: bar.update})
	bar.finish()
	if len(rep.Selected) == 0 && err == nil {
		fmt.Fprintln(w, "no dead letters")
		return nil
	}
	total := len(rep.Selected) + len(rep.Later)
	fmt.Fprintf(w, "replayed %d of %s (%s)", len(rep.Replayed), plural(total, "letter"), plural(rep.Keys, "key"))
	if len(rep.Later) > 0 {
		fmt.Fprintf(w, ", %d of them held while the replay ran", len(rep.Later))
	}
	if len(rep.Gone) > 0 {
		fmt.Fprintf(w, "; %d already gone", len(rep.Gone))
	}
	fmt.Fprintln(w)
	for _, fl := range rep.Failed {
		var late *dlq.NotSettledError
		var again *dlq.DeadLetteredAgainError
		switch {
		case errors.As(fl.Err, &late), errors.As(fl.Err, &again):
			fmt.Fprintf(w, "failed  %v\n", fl.Err) // the error names the letter and its key
		case fl.Letter.Seq == 0:
			fmt.Fprintf(w, "failed  - %s: %v\n", fl.Letter.Key, fl.Err)
		default:
			fmt.Fprintf(w, "failed  %d %s: %v\n", fl.Letter.Seq, fl.Letter.Key, fl.Err)
		}
	}
	for _, l := range rep.Skipped {
		fmt.Fprintf(w, "skipped %d %s: behind a failed letter of its key\n", l.Seq, l.Key)
	}
	for _, l := range rep.Left {
		fmt.Fprintf(w, "left    %d %s: held while the replay ran, after its last round\n", l.Seq, l.Key)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (run it again to continue: replayed letters are not replayed twice)", err)
	}
	if err != nil {
		msg := fmt.Sprintf("%d letters failed, %d skipped; they stay in the stream", len(rep.Failed), len(rep.Skipped))
		if len(rep.Left) > 0 {
			msg += fmt.Sprintf("; %d held letters left: run replay again", len(rep.Left))
		}
		return errors.New(msg)
	}
	return nil
}

func validOp(op string) bool {
	for _, o := range dlq.Operations {
		if o == op {
			return true
		}
	}
	return false
}

func (c *cli) purge(ctx context.Context, args []string) error {
	var ff filterFlags
	fs := c.flagSet("[filters] [--yes]")
	ff.register(fs)
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	f, err := ff.filter(c.env.Now())
	if err != nil {
		return err
	}
	st, err := c.open(ctx)
	if err != nil {
		return err
	}
	ls, err := st.List(ctx, f)
	if err != nil {
		return err
	}
	w := c.env.Stdout
	if len(ls) == 0 {
		fmt.Fprintln(w, "no dead letters")
		return nil
	}
	if !*yes {
		fmt.Fprintf(c.env.Stderr, "Purge %s? [y/N] ", plural(len(ls), "letter"))
		answer, _ := bufio.NewReader(c.env.Stdin).ReadString('\n')
		switch strings.ToLower(strings.TrimSpace(answer)) {
		case "y", "yes":
		default:
			return errors.New("not confirmed; nothing removed")
		}
	}
	removed, err := st.PurgeLetters(ctx, ls)
	if len(removed) > 0 {
		fmt.Fprintf(w, "removed %s:\n", plural(len(removed), "letter"))
		if terr := c.table(removed); terr != nil {
			return terr
		}
	} else {
		fmt.Fprintln(w, "removed 0 letters")
	}
	return err
}

// progress draws replay progress on stderr: a bar redrawn in place on a terminal, with the
// letter a wait for a worker is on when it lasts longer than a second; otherwise a line per
// 10 %, and a line when a wait passes a second and every 15 s after that.
type progress struct {
	w        io.Writer
	terminal bool
	last     int    // last printed tenth (plain)
	printed  [2]int // done and total of the last line printed (plain)
	drawn    int    // length of the last line drawn (terminal)
	waits    map[uint64]int
}

// waitLine is how often a plain progress repeats that a wait goes on.
const waitLine = 15 * time.Second

func newProgress(w io.Writer, terminal bool) *progress {
	return &progress{w: w, terminal: terminal, last: -1, waits: map[uint64]int{}}
}

func (p *progress) update(pr dlq.ReplayProgress) {
	done, total := pr.Done, pr.Total
	if total == 0 {
		return
	}
	if p.terminal {
		const width = 30
		n := min(done*width/total, width)
		line := fmt.Sprintf("replay [%s%s] %d/%d", strings.Repeat("#", n), strings.Repeat(".", width-n), done, total)
		if len(pr.Waiting) > 0 {
			wt := pr.Waiting[0]
			line += fmt.Sprintf("  waiting %s for a worker to settle letter %d of %s", wt.For.Truncate(time.Second), wt.Letter.Seq, wt.Letter.Key)
			if len(pr.Waiting) > 1 {
				line += fmt.Sprintf(" (+%d more)", len(pr.Waiting)-1)
			}
		}
		pad := max(p.drawn-len(line), 0)
		fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", pad))
		p.drawn = len(line)
		return
	}
	waiting := map[uint64]bool{}
	for _, wt := range pr.Waiting {
		waiting[wt.Letter.Seq] = true
		n := int(wt.For / waitLine)
		if last, ok := p.waits[wt.Letter.Seq]; !ok || n > last {
			p.waits[wt.Letter.Seq] = n
			fmt.Fprintf(p.w, "replay: waiting %s for a worker to settle letter %d of %s (events #%d)\n",
				wt.For.Truncate(time.Second), wt.Letter.Seq, wt.Letter.Key, wt.Event)
		}
	}
	for seq := range p.waits {
		if !waiting[seq] {
			delete(p.waits, seq)
		}
	}
	// The total grows when held letters join; the last line is printed once per total.
	tenth := done * 10 / total
	if tenth > p.last || done == total && p.printed != [2]int{done, total} {
		p.last, p.printed = tenth, [2]int{done, total}
		fmt.Fprintf(p.w, "replay: %d/%d letters\n", done, total)
	}
}

func (p *progress) finish() {
	if p.terminal && p.drawn > 0 {
		fmt.Fprintln(p.w)
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
