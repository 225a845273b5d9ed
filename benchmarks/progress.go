package main

import (
	"fmt"
	"io"
	"time"
)

// progress prints one line per run: what runs now, how many are done and
// left, and a rough time estimate from the average so far.
type progress struct {
	w     io.Writer
	total int
	done  int
	start time.Time
}

func newProgress(w io.Writer, total int) *progress {
	return &progress{w: w, total: total, start: time.Now()}
}

// step announces the next run.
func (p *progress) step(format string, args ...any) {
	p.done++
	eta := "?"
	if p.done > 1 {
		per := time.Since(p.start) / time.Duration(p.done-1)
		eta = (per * time.Duration(p.total-p.done+1)).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "bench [%d/%d, %d left, ~%s] %s\n", p.done, p.total, p.total-p.done, eta, fmt.Sprintf(format, args...))
}

// say prints a message between runs.
func (p *progress) say(format string, args ...any) {
	fmt.Fprintf(p.w, "bench: "+format+"\n", args...)
}
