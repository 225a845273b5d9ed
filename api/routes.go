package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// routes fills s.mux with one line per endpoint (a ServeMux method
// pattern and its handler), then with the catch-alls that keep every other
// answer Firecracker's fault JSON.
func (s *Server) routes() {
	c := s.ctl
	rt := &router{s: s, methods: map[string][]string{}, catchAll: map[string]bool{}}
	rt.handle("GET /{$}", get(c.InstanceInfo))
	rt.handle("GET /version", get(c.Version))
	rt.handle("GET /machine-config", get(c.MachineConfig))
	rt.handle("PUT /machine-config", apply(func(v MachineConfig) error { return c.SetMachineConfig(v, false) }))
	rt.handle("PATCH /machine-config", apply(func(v MachineConfig) error { return c.SetMachineConfig(v, true) }))
	rt.handle("PUT /boot-source", apply(c.SetBootSource))
	// "...": an id with a slash reaches validation (and is refused there)
	// rather than being an unknown path, and "/drives/" gets "id missing".
	rt.handle("PUT /drives/{drive_id...}", applyID("drive_id", c.PutDrive))
	rt.handle("PATCH /drives/{drive_id...}", applyID("drive_id", c.PatchDrive))
	rt.handle("PUT /network-interfaces/{iface_id...}", applyID("iface_id", c.PutNetworkInterface))
	rt.handle("PATCH /network-interfaces/{iface_id...}", applyID("iface_id", c.PatchNetworkInterface))
	rt.handle("PUT /vsock", applyDeprecated(c.SetVsock, func(v Vsock) bool { return v.VsockID != nil }))
	rt.handle("PUT /entropy", apply(c.SetEntropy))
	rt.handle("PUT /actions", apply(c.Act))
	rt.handle("PUT /logger", apply(c.SetLogger))
	rt.handle("PUT /metrics", apply(c.SetMetrics))
	rt.handle("PATCH /vm", apply(c.SetVMState))
	rt.handle("GET /vm/config", get(c.FullConfig))
	rt.handle("PUT /snapshot/create", apply(c.CreateSnapshot))
	rt.handle("PUT /snapshot/load", applyDeprecated(c.LoadSnapshot, SnapshotLoadParams.deprecated))
	rt.finish()
}

// router registers routes on a Server's mux and remembers, per path, the
// methods it has, for the catch-alls.
type router struct {
	s        *Server
	paths    []string            // paths with routes, in registration order
	methods  map[string][]string // path -> its routes' methods, in order
	catchAll map[string]bool     // method-less patterns registered by finish
}

// handle registers h for pattern, "METHOD /path".
func (rt *router) handle(pattern string, h http.HandlerFunc) {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok {
		panic("api: route " + pattern + " has no method")
	}
	if rt.methods[path] == nil {
		rt.paths = append(rt.paths, path)
	}
	rt.methods[path] = append(rt.methods[path], method)
	rt.s.mux.Handle(pattern, rt.s.counted(pattern, h))
}

// finish registers what ServeMux would otherwise answer itself, in plain
// text: a wrong method on a known path (405, with Allow), an unimplemented
// Firecracker endpoint (400), and an unknown path (404).
func (rt *router) finish() {
	for _, path := range rt.paths {
		methods := rt.methods[path]
		wrong := methodNotAllowed(routeName(path), methods)
		// A pattern without a method matches every method the path's
		// routes do not have.
		rt.register(path, path, wrong)
		if slices.Contains(methods, http.MethodGet) && !slices.Contains(methods, http.MethodHead) {
			// ServeMux serves HEAD with a GET route; Firecracker has no HEAD.
			rt.register(http.MethodHead+" "+path, path, wrong)
		}
	}
	for _, u := range unsupportedPaths {
		h := unsupported(u)
		rt.register(u, u, h)
		rt.register(u+"/", u, h)
	}
	rt.s.notFound = rt.s.counted("unknown", notFound)
	for _, path := range rt.paths {
		// ServeMux redirects /drives to /drives/ when a route matches the
		// latter and none the former; /drives is an unknown path.
		if i := strings.LastIndexByte(path, '/'); i > 0 && (strings.HasSuffix(path, "/") || strings.HasSuffix(path, "...}")) {
			if root := path[:i]; rt.methods[root] == nil && !rt.catchAll[root] {
				rt.catchAll[root] = true
				rt.s.mux.Handle(root, rt.s.notFound)
			}
		}
	}
	rt.s.mux.Handle("/", rt.s.notFound)
}

// register adds a catch-all, counted under name.
func (rt *router) register(pattern, name string, h http.HandlerFunc) {
	rt.catchAll[pattern] = true
	rt.s.mux.Handle(pattern, rt.s.counted(name, h))
}

// counted wraps h to count its answers for the metrics by route and
// status, both from a fixed set whatever the client sends.
func (s *Server) counted(route string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		h(sw, r)
		s.ctl.countRequest(route + " " + strconv.Itoa(sw.status))
		s.log.Debug("api request", "method", r.Method, "path", r.URL.Path, "route", route, "status", sw.status)
	})
}

// routeName is a path pattern as the API's documentation writes it.
func routeName(path string) string {
	return strings.NewReplacer("{$}", "", "...}", "}").Replace(path)
}

// get answers a GET with read's result as JSON.
func get[T any](read func() T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(r)
		if err != nil {
			fault(w, http.StatusBadRequest, err.Error())
			return
		}
		if len(body) > 0 {
			fault(w, http.StatusBadRequest, "GET requests take no body")
			return
		}
		b, err := json.Marshal(read())
		if err != nil {
			fault(w, http.StatusInternalServerError, "encoding response: "+err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.Write(b)
	}
}

// apply answers a PUT or PATCH: the body, decoded as a T, goes to set.
func apply[T any](set func(T) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := decodeBody[T](r)
		if err == nil {
			err = set(v)
		}
		changed(w, err)
	}
}

// applyID is apply for a resource named in the path by wildcard.
func applyID[T any](wildcard string, set func(id string, v T) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue(wildcard)
		if id == "" {
			fault(w, http.StatusBadRequest, "the resource id is missing from the path")
			return
		}
		apply(func(v T) error { return set(id, v) })(w, r)
	}
}

// applyDeprecated is apply for a body that may use deprecated fields:
// when deprecated says it does, a success carries Firecracker's
// Deprecation header.
func applyDeprecated[T any](set func(T) error, deprecated func(T) bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := decodeBody[T](r)
		if err == nil {
			err = set(v)
		}
		if err == nil && deprecated(v) {
			w.Header().Set("Deprecation", "true")
		}
		changed(w, err)
	}
}

// changed answers a PUT or PATCH: 204, or 400 with err.
func changed(w http.ResponseWriter, err error) {
	if err != nil {
		fault(w, http.StatusBadRequest, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// methodNotAllowed answers a method that none of a path's routes has.
func methodNotAllowed(name string, methods []string) http.HandlerFunc {
	allow := strings.Join(methods, ", ")
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		fault(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", r.Method, name, allow))
	}
}

// unsupported answers a Firecracker endpoint this VMM does not implement.
func unsupported(path string) http.HandlerFunc {
	msg := fmt.Sprintf("%s is not supported by this VMM", path)
	return func(w http.ResponseWriter, r *http.Request) {
		fault(w, http.StatusBadRequest, msg)
	}
}

// notFound answers a path that is no endpoint.
func notFound(w http.ResponseWriter, r *http.Request) {
	fault(w, http.StatusNotFound, fmt.Sprintf("no such resource: %s", r.URL.Path))
}
