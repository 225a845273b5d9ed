package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path"
	"time"
)

// MaxBodySize is Firecracker's default limit on request bodies
// (--http-api-max-payload-size).
const MaxBodySize = 51200

// Timeouts that keep a slow or stuck client from holding a connection
// goroutine forever. Handlers read the whole body before touching VM
// state, so a slow client never holds the controller's lock.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 60 * time.Second // a Pause waits for every vCPU to park
	idleTimeout       = 2 * time.Minute
)

// Server is the HTTP side of the API.
type Server struct {
	ctl  *Controller
	log  *slog.Logger
	http *http.Server
	sock *socket

	mux      *http.ServeMux // filled by routes
	notFound http.Handler   // the answer to an unknown path
}

// NewServer returns a server for ctl; call Serve to start it.
func NewServer(ctl *Controller) *Server {
	s := &Server{ctl: ctl, log: ctl.Logger(), mux: http.NewServeMux()}
	s.routes()
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(ctl.Logger().Handler(), slog.LevelDebug),
	}
	return s
}

// Listen creates the API socket at path (mode 0600), replacing a stale
// socket but nothing else.
func (s *Server) Listen(path string) error {
	sock, err := listenUnix(path)
	if err != nil {
		return err
	}
	s.sock = sock
	return nil
}

// Serve answers requests until Shutdown; it returns nil after Shutdown.
func (s *Server) Serve() error {
	if s.sock == nil {
		return errors.New("api: Serve before Listen")
	}
	if err := s.http.Serve(s.sock.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("api: %w", err)
	}
	return nil
}

// Shutdown stops accepting connections, lets requests in flight finish
// (until ctx ends), and removes the socket.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.http.Close())
	}
	if s.sock != nil {
		err = errors.Join(err, s.sock.remove())
	}
	return err
}

// unsupportedPaths are Firecracker endpoints this VMM does not implement;
// they answer 400 "not supported" rather than 404, so a client learns why.
var unsupportedPaths = []string{"/balloon", "/cpu-config", "/pmem", "/mmds", "/serial", "/hotplug"}

// ServeHTTP answers a request through the route table (routes.go):
// Firecracker-style, 204 for successful changes, 200 + JSON for reads, and
// {"fault_message": ...} for everything else, including the answers
// ServeMux would otherwise write itself.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p := r.URL.EscapedPath(); p != cleanPath(p) {
		// ServeMux would redirect to the clean path; no Firecracker path
		// has "." or ".." segments or repeated slashes.
		s.notFound.ServeHTTP(w, r)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// cleanPath is p as ServeMux canonicalises it: rooted, without "." and
// ".." segments or repeated slashes, keeping a trailing slash.
func cleanPath(p string) string {
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

// fault writes a Firecracker error body.
func fault(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(Fault{FaultMessage: msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}

// statusWriter remembers the status code for the request metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// LoadConfigFile reads a Firecracker --config-file into ctl.
func LoadConfigFile(ctl *Controller, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	fc, err := decode[FullConfig](data)
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if err := ctl.Load(fc); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}
