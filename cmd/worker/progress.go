package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress draws a one-line progress bar on a terminal, and a line every few seconds
// elsewhere (logs, CI).
type progress struct {
	w     io.Writer
	label string
	total int
	tty   bool
	last  time.Time
	n     int
}

func newProgress(w io.Writer, label string, total int) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, label: label, total: total, tty: tty}
}

func (p *progress) set(n int) {
	p.n = n
	now := time.Now()
	every := 2 * time.Second
	if p.tty {
		every = 100 * time.Millisecond
	}
	if now.Sub(p.last) < every {
		return
	}
	p.last = now
	p.draw()
}

func (p *progress) draw() {
	if !p.tty {
		if p.total > 0 {
			fmt.Fprintf(p.w, "%s: %d/%d\n", p.label, p.n, p.total)
		} else {
			fmt.Fprintf(p.w, "%s: %d\n", p.label, p.n)
		}
		return
	}
	if p.total <= 0 {
		fmt.Fprintf(p.w, "\r%s %d", p.label, p.n)
		return
	}
	const width = 30
	filled := min(width, p.n*width/max(p.total, 1))
	fmt.Fprintf(p.w, "\r%s [%s%s] %d/%d", p.label, strings.Repeat("=", filled), strings.Repeat(" ", width-filled), p.n, p.total)
}

func (p *progress) done() {
	if p.tty {
		p.draw()
		fmt.Fprintln(p.w)
	}
}
