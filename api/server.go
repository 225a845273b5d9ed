package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
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
}

// NewServer returns a server for ctl; call Serve to start it.
func NewServer(ctl *Controller) *Server {
	s := &Server{ctl: ctl, log: ctl.Logger()}
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

// route is one endpoint: the methods it takes and, for /drives/{id} and
// /network-interfaces/{id}, the id from the path.
type route struct {
	name string // the pattern, for metrics
	id   string
}

// unsupportedPaths are Firecracker endpoints this VMM does not implement;
// they answer 400 "not supported" rather than 404, so a client learns why.
var unsupportedPaths = []string{"/balloon", "/cpu-config", "/pmem", "/mmds", "/serial", "/hotplug", "/snapshot"}

// ServeHTTP routes a request, counts it, and answers Firecracker-style:
// 204 for successful changes, 200 + JSON for reads, and
// {"fault_message": ...} with 400 (bad request or wrong state), 404
// (unknown path) or 405 (wrong method).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rw := &statusWriter{ResponseWriter: w}
	name := s.serve(rw, r)
	s.ctl.countRequest(r.Method + " " + name + " " + strconv.Itoa(rw.status))
	s.log.Debug("api request", "method", r.Method, "path", r.URL.Path, "status", rw.status)
}

func (s *Server) serve(w *statusWriter, r *http.Request) string {
	p := r.URL.Path
	rt, methods := match(p)
	if methods == nil {
		for _, u := range unsupportedPaths {
			if p == u || strings.HasPrefix(p, u+"/") {
				fault(w, http.StatusBadRequest, fmt.Sprintf("%s is not supported by this VMM", u))
				return u
			}
		}
		fault(w, http.StatusNotFound, fmt.Sprintf("no such resource: %s", p))
		return "unknown"
	}
	if !contains(methods, r.Method) {
		w.Header().Set("Allow", strings.Join(methods, ", "))
		fault(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", r.Method, rt.name, strings.Join(methods, ", ")))
		return rt.name
	}
	body, err := readBody(w, r)
	if err != nil {
		fault(w, http.StatusBadRequest, err.Error())
		return rt.name
	}
	if r.Method == http.MethodGet {
		if len(body) > 0 {
			fault(w, http.StatusBadRequest, "GET requests take no body")
			return rt.name
		}
		s.get(w, rt)
		return rt.name
	}
	err = s.change(w, r.Method, rt, body)
	if err != nil {
		fault(w, http.StatusBadRequest, err.Error())
		return rt.name
	}
	w.WriteHeader(http.StatusNoContent)
	return rt.name
}

// match finds the route for path and the methods it accepts (nil when
// the path is unknown).
func match(path string) (route, []string) {
	const get, put, patch = http.MethodGet, http.MethodPut, http.MethodPatch
	switch path {
	case "/":
		return route{name: "/"}, []string{get}
	case "/version":
		return route{name: path}, []string{get}
	case "/machine-config":
		return route{name: path}, []string{get, put, patch}
	case "/boot-source", "/vsock", "/entropy", "/actions", "/logger", "/metrics":
		return route{name: path}, []string{put}
	case "/vm":
		return route{name: path}, []string{patch}
	case "/vm/config":
		return route{name: path}, []string{get}
	}
	for _, prefix := range []string{"/drives/", "/network-interfaces/"} {
		if id, ok := strings.CutPrefix(path, prefix); ok {
			return route{name: prefix + "{id}", id: id}, []string{put, patch}
		}
	}
	return route{}, nil
}

// readBody reads at most MaxBodySize bytes of the request body.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > MaxBodySize {
		return nil, fmt.Errorf("request body of %d bytes exceeds the limit of %d bytes", r.ContentLength, MaxBodySize)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, fmt.Errorf("request body exceeds the limit of %d bytes", MaxBodySize)
		}
		return nil, fmt.Errorf("reading request body: %w", err)
	}
	return body, nil
}

func (s *Server) get(w http.ResponseWriter, rt route) {
	var v any
	switch rt.name {
	case "/":
		v = s.ctl.InstanceInfo()
	case "/version":
		v = s.ctl.Version()
	case "/machine-config":
		v = s.ctl.MachineConfig()
	case "/vm/config":
		v = s.ctl.FullConfig()
	}
	b, err := json.Marshal(v)
	if err != nil {
		fault(w, http.StatusInternalServerError, "encoding response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// change handles a PUT or PATCH.
func (s *Server) change(w http.ResponseWriter, method string, rt route, body []byte) error {
	put := method == http.MethodPut
	if rt.id == "" && (rt.name == "/drives/{id}" || rt.name == "/network-interfaces/{id}") {
		return errors.New("the resource id is missing from the path")
	}
	switch rt.name {
	case "/machine-config":
		var v MachineConfig
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		return s.ctl.SetMachineConfig(v, !put)
	case "/boot-source":
		var v BootSource
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		return s.ctl.SetBootSource(v)
	case "/drives/{id}":
		if put {
			var v Drive
			if err := decodeStrict(body, &v); err != nil {
				return err
			}
			return s.ctl.PutDrive(rt.id, v)
		}
		var v PartialDrive
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		return s.ctl.PatchDrive(rt.id, v)
	case "/network-interfaces/{id}":
		if put {
			var v NetworkInterface
			if err := decodeStrict(body, &v); err != nil {
				return err
			}
			return s.ctl.PutNetworkInterface(rt.id, v)
		}
		var v PartialNetworkInterface
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		return s.ctl.PatchNetworkInterface(rt.id, v)
	case "/vsock":
		var v Vsock
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		if err := s.ctl.SetVsock(v); err != nil {
			return err
		}
		if v.VsockID != nil {
			// Firecracker flags use of deprecated fields this way.
			w.Header().Set("Deprecation", "true")
		}
		return nil
	case "/entropy":
		var v Entropy
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		return s.ctl.SetEntropy(v)
	case "/actions":
		var v Action
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		return s.ctl.Act(v)
	case "/vm":
		var v VM
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		return s.ctl.SetVMState(v)
	case "/logger":
		var v Logger
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		return s.ctl.SetLogger(v)
	case "/metrics":
		var v Metrics
		if err := decodeStrict(body, &v); err != nil {
			return err
		}
		return s.ctl.SetMetrics(v)
	}
	return fmt.Errorf("no handler for %s", rt.name)
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
	var fc FullConfig
	if err := decodeStrict(data, &fc); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if err := ctl.Load(fc); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}
