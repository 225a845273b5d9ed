package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// nbFile is a log or metrics destination: a regular file or a named pipe,
// written with non-blocking write(2) calls so a reader that stops reading
// a FIFO costs dropped lines, never a stalled vCPU or API call. (os.File
// would hand a non-blocking FIFO to the runtime poller and wait instead.)
type nbFile struct {
	mu      sync.Mutex
	fd      int
	path    string
	dropped atomic.Uint64
}

// openOutput opens path for appending, creating a regular file (0600) if
// nothing is there. O_RDWR lets a FIFO open without a reader, as
// Firecracker opens its log and metrics pipes.
func openOutput(path string) (*nbFile, error) {
	if path == "" {
		return nil, errors.New("path is empty")
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_APPEND|unix.O_CREAT|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFIFO {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is neither a regular file nor a named pipe", path)
	}
	return &nbFile{fd: fd, path: path}, nil
}

// Write writes p whole or drops it: a full pipe (EAGAIN) drops the line and
// counts it, so a slow consumer never blocks the writer.
func (f *nbFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return 0, errors.New("closed")
	}
	for n := 0; n < len(p); {
		k, err := unix.Write(f.fd, p[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			f.dropped.Add(1)
			return n, fmt.Errorf("write %s: %w", f.path, err)
		}
		n += k
	}
	return len(p), nil
}

// Close closes the file; later writes fail.
func (f *nbFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return nil
	}
	err := unix.Close(f.fd)
	f.fd = -1
	return err
}

// switchHandler is a slog.Handler whose destination can be replaced while
// loggers derived from it (With, WithGroup) are in use, so PUT /logger
// redirects logs of code that already holds a *slog.Logger.
type switchHandler struct {
	cur    *atomic.Pointer[slog.Handler]
	derive func(slog.Handler) slog.Handler // With/WithGroup applied since the root
}

func newSwitchHandler(h slog.Handler) *switchHandler {
	s := &switchHandler{cur: new(atomic.Pointer[slog.Handler]), derive: func(h slog.Handler) slog.Handler { return h }}
	s.set(h)
	return s
}

func (s *switchHandler) set(h slog.Handler) {
	if h == nil {
		h = slog.DiscardHandler
	}
	s.cur.Store(&h)
}

func (s *switchHandler) target() slog.Handler { return s.derive(*s.cur.Load()) }

func (s *switchHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return s.target().Enabled(ctx, l)
}

func (s *switchHandler) Handle(ctx context.Context, r slog.Record) error {
	return s.target().Handle(ctx, r)
}

func (s *switchHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	d := s.derive
	return &switchHandler{cur: s.cur, derive: func(h slog.Handler) slog.Handler { return d(h).WithAttrs(attrs) }}
}

func (s *switchHandler) WithGroup(name string) slog.Handler {
	d := s.derive
	return &switchHandler{cur: s.cur, derive: func(h slog.Handler) slog.Handler { return d(h).WithGroup(name) }}
}

// levelOff is above every level slog uses: nothing is logged.
const levelOff = slog.Level(100)

// parseLevel maps Firecracker's log levels (case-insensitive) to slog's.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "error":
		return slog.LevelError, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "trace":
		return slog.LevelDebug - 4, nil
	case "off":
		return levelOff, nil
	}
	return 0, fmt.Errorf("level %q is not one of Error, Warning, Info, Debug, Trace, Off", s)
}

// SetLogger is PUT /logger: send logs to log_path (or keep the current
// destination) at the given level.
func (c *Controller) SetLogger(l Logger) error {
	level, err := parseLevel(deref(l.Level, "Info"))
	if err != nil {
		return err
	}
	if m := deref(l.Module, ""); m != "" {
		return fmt.Errorf("module %q: filtering logs by module is not supported", m)
	}
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if l.LogPath == nil {
		if c.opts.Log == nil {
			return missing("log_path")
		}
		// No new destination: keep logging where we were, at the new level.
		c.logs.set(&levelHandler{h: c.opts.Log, level: level})
		c.replaceLogFile(nil)
	} else {
		f, err := openOutput(*l.LogPath)
		if err != nil {
			return fmt.Errorf("log_path: %w", err)
		}
		c.files = append(c.files, f)
		showLevel := deref(l.ShowLevel, false)
		c.logs.set(slog.NewTextHandler(f, &slog.HandlerOptions{
			Level:     level,
			AddSource: deref(l.ShowLogOrigin, false),
			ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
				if len(groups) == 0 && a.Key == slog.LevelKey && !showLevel {
					return slog.Attr{}
				}
				return a
			},
		}))
		c.replaceLogFile(f)
	}
	l.Level = ptr(deref(l.Level, "Info"))
	l.ShowLevel = ptr(deref(l.ShowLevel, false))
	l.ShowLogOrigin = ptr(deref(l.ShowLogOrigin, false))
	c.logger = &l
	return nil
}

// replaceLogFile makes f the logger's file and closes the one it
// replaces, so repeated PUT /logger calls hold one descriptor, not one
// each. Call it after c.logs no longer writes to the old file; a
// derived logger still holding it gets write errors, which slog drops.
func (c *Controller) replaceLogFile(f *nbFile) {
	old := c.logFile
	c.logFile = f
	if old == nil || old == f {
		return
	}
	c.files = slices.DeleteFunc(c.files, func(g *nbFile) bool { return g == old })
	_ = old.Close()
}

// levelHandler raises or lowers the level of another handler.
type levelHandler struct {
	h     slog.Handler
	level slog.Level
}

func (l *levelHandler) Enabled(_ context.Context, lv slog.Level) bool { return lv >= l.level }
func (l *levelHandler) Handle(ctx context.Context, r slog.Record) error {
	return l.h.Handle(ctx, r)
}
func (l *levelHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return &levelHandler{h: l.h.WithAttrs(a), level: l.level}
}
func (l *levelHandler) WithGroup(n string) slog.Handler {
	return &levelHandler{h: l.h.WithGroup(n), level: l.level}
}

// metricsSink is the configured metrics destination.
type metricsSink struct {
	cfg Metrics
	f   *nbFile
}

// SetMetrics is PUT /metrics: JSON lines go to metrics_path on
// FlushMetrics, periodically, and when the machine exits.
func (c *Controller) SetMetrics(m Metrics) error {
	if m.MetricsPath == nil {
		return missing("metrics_path")
	}
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.metrics != nil {
		return errors.New("metrics are already configured")
	}
	f, err := openOutput(*m.MetricsPath)
	if err != nil {
		return fmt.Errorf("metrics_path: %w", err)
	}
	c.files = append(c.files, f)
	c.metrics = &metricsSink{cfg: m, f: f}
	go c.periodicMetrics()
	return nil
}

// periodicMetrics flushes metrics every MetricsInterval until Close.
func (c *Controller) periodicMetrics() {
	t := time.NewTicker(c.opts.MetricsInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stopped:
			return
		case <-t.C:
			c.mu.Lock()
			if c.metrics != nil {
				if err := c.flushMetricsLocked(); err != nil {
					c.log.Debug("periodic metrics flush", "err", err)
				}
			}
			c.mu.Unlock()
		}
	}
}

// MetricsLine is one line of the metrics file. Counters are cumulative
// since the process started.
type MetricsLine struct {
	UTCTimestampMs int64             `json:"utc_timestamp_ms"`
	ID             string            `json:"id,omitempty"`
	Properties     map[string]string `json:"properties,omitempty"`
	State          string            `json:"state"`
	APIServer      APIMetrics        `json:"api_server"`
	VCPU           VCPUMetrics       `json:"vcpu"`
	LatenciesUs    LatencyMetrics    `json:"latencies_us"`
	Metrics        OutputMetrics     `json:"metrics"`
}

// LatencyMetrics are the durations of the latest snapshot operations in
// microseconds, 0 until there is one (Firecracker's latencies_us).
type LatencyMetrics struct {
	FullCreateSnapshot uint64 `json:"full_create_snapshot"`
	DiffCreateSnapshot uint64 `json:"diff_create_snapshot"`
	LoadSnapshot       uint64 `json:"load_snapshot"`
}

// APIMetrics counts API requests by "route status", where route is the
// ServeMux pattern that answered: "PUT /drives/{drive_id...} 204" for an
// endpoint, "/machine-config 405" for a method no route of the path has,
// "/balloon 400" for an unimplemented endpoint, "unknown 404" for any
// other path. The client's method and path are never part of a key, so
// the map stays small whatever clients send.
type APIMetrics struct {
	Requests map[string]uint64 `json:"requests"`
}

// VCPUMetrics counts vCPU exits by KVM exit reason.
type VCPUMetrics struct {
	Exits map[string]uint64 `json:"exits"`
}

// OutputMetrics counts metrics lines lost to a full pipe.
type OutputMetrics struct {
	DroppedLines uint64 `json:"dropped_lines"`
}

func (c *Controller) flushMetricsLocked() error {
	line := MetricsLine{
		UTCTimestampMs: time.Now().UnixMilli(),
		State:          c.stateLocked(),
		APIServer:      APIMetrics{Requests: c.requestCounts()},
		VCPU:           VCPUMetrics{Exits: map[string]uint64{}},
		LatenciesUs:    c.latency,
		Metrics:        OutputMetrics{DroppedLines: c.metrics.f.dropped.Load()},
		Properties:     c.metrics.cfg.Properties,
	}
	if deref(c.metrics.cfg.EmitID, false) {
		line.ID = c.opts.ID
	}
	if c.machine != nil {
		line.VCPU.Exits = c.machine.Stats().Exits
	}
	b, err := json.Marshal(line)
	if err != nil {
		return fmt.Errorf("encode metrics: %w", err)
	}
	if _, err := c.metrics.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("flush metrics: %w", err)
	}
	return nil
}
