package containerd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// RuntimeName is the runtime's name in containerd.
const RuntimeName = "io.containerd.vmm.v2"

// Environment containerd gives every shim (runtime/v2 in 1.6 to 2.x).
const (
	ttrpcAddressEnv = "TTRPC_ADDRESS" // containerd's ttrpc socket, for events
)

// CRI's annotations that put the containers of a pod in one sandbox.
const (
	annotationContainerType = "io.kubernetes.cri.container-type"
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	containerTypeSandbox    = "sandbox"
)

// serveAction is the hidden action of the daemon `start` re-executes;
// containerd never passes it.
const serveAction = "serve"

// listenerFd is where the daemon finds the socket `start` made.
const listenerFd = 3

// flags are the shim v2 command line, as containerd 1.6 to 2.x pass it.
type flags struct {
	namespace, id, address, bundle, socket string
	debug, version                         bool
	action                                 string
	args                                   []string // as given, for the re-exec
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	fs := flag.NewFlagSet("containerd-shim-vmm-v2", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &flags{args: args}
	fs.StringVar(&f.namespace, "namespace", "", "namespace that owns the shim")
	fs.StringVar(&f.id, "id", "", "id of the task")
	fs.StringVar(&f.address, "address", "", "grpc address of containerd")
	fs.StringVar(&f.bundle, "bundle", "", "path to the bundle if not the working directory")
	fs.StringVar(&f.socket, "socket", "", "ignored (the shim picks its socket)")
	fs.String("publish-binary", "", "ignored: events go to $"+ttrpcAddressEnv)
	fs.BoolVar(&f.debug, "debug", false, "log debug messages")
	fs.BoolVar(&f.version, "v", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 1 {
		return nil, fmt.Errorf("unexpected arguments after %q", fs.Arg(0))
	}
	f.action = fs.Arg(0)
	if f.version {
		return f, nil
	}
	if f.namespace == "" || f.id == "" {
		return nil, errors.New("-namespace and -id are required")
	}
	if err := validID(f.namespace); err != nil {
		return nil, fmt.Errorf("-namespace: %w", err)
	}
	if err := validID(f.id); err != nil {
		return nil, fmt.Errorf("-id: %w", err)
	}
	if f.bundle == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, err
		}
		f.bundle = wd
	}
	return f, nil
}

// maxIDLen bounds ids and namespaces (containerd's own limit is 76).
const maxIDLen = 256

// validID accepts containerd's identifiers: they become file names here.
func validID(s string) error {
	if s == "" || len(s) > maxIDLen || s == "." || s == ".." {
		return fmt.Errorf("invalid identifier %q", s)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("invalid identifier %q", s)
		}
	}
	return nil
}

// Version is what `-v` and Connect report.
const Version = "0.1.0"

// Main runs the shim command line and returns the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	f, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "containerd-shim-vmm-v2: %v\n", err)
		return 2
	}
	if f.version {
		fmt.Fprintf(stdout, "containerd-shim-vmm-v2 %s (runtime %s, task API v2)\n", Version, RuntimeName)
		return 0
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "containerd-shim-vmm-v2: %v\n", err)
		return 1
	}
	cfg, err := LoadConfig(exe)
	if err != nil {
		fmt.Fprintf(stderr, "containerd-shim-vmm-v2: %v\n", err)
		return 1
	}
	switch f.action {
	case "start":
		addr, err := start(f, cfg, exe)
		if err != nil {
			fmt.Fprintf(stderr, "containerd-shim-vmm-v2: start: %v\n", err)
			return 1
		}
		// containerd reads the whole output as the address.
		fmt.Fprint(stdout, addr)
		return 0
	case "delete":
		resp, err := deleteAfterDeath(f, cfg)
		if err != nil {
			fmt.Fprintf(stderr, "containerd-shim-vmm-v2: delete: %v\n", err)
			return 1
		}
		data, err := proto.Marshal(resp)
		if err != nil {
			fmt.Fprintf(stderr, "containerd-shim-vmm-v2: delete: %v\n", err)
			return 1
		}
		_, _ = stdout.Write(data)
		return 0
	case serveAction:
		if err := serve(f, cfg); err != nil {
			fmt.Fprintf(stderr, "containerd-shim-vmm-v2: %v\n", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(stderr, "containerd-shim-vmm-v2: unknown action %q (want start or delete)\n", f.action)
		return 2
	}
}

// sandboxOf reads the bundle's OCI spec for the sandbox the task belongs
// to: CRI's sandbox id for a pod's container, else the task itself.
func sandboxOf(bundle, id string) (string, *specs.Spec, error) {
	spec, err := readSpec(bundle)
	if err != nil {
		return "", nil, err
	}
	if spec.Annotations[annotationContainerType] != containerTypeSandbox {
		if sb := spec.Annotations[annotationSandboxID]; sb != "" {
			if err := validID(sb); err != nil {
				return "", nil, fmt.Errorf("annotation %s: %w", annotationSandboxID, err)
			}
			return sb, spec, nil
		}
	}
	return id, spec, nil
}

// maxSpecSize bounds config.json (containerd writes it; a few KiB).
const maxSpecSize = 4 << 20

func readSpec(bundle string) (*specs.Spec, error) {
	f, err := os.Open(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("reading the OCI spec: %w", err)
	}
	defer f.Close()
	var spec specs.Spec
	if err := json.NewDecoder(io.LimitReader(f, maxSpecSize)).Decode(&spec); err != nil {
		return nil, fmt.Errorf("decoding the OCI spec: %w", err)
	}
	return &spec, nil
}

// sandboxKey names a sandbox's files in the run directory: short enough
// for Unix socket paths, and distinct per containerd, namespace and
// sandbox.
func sandboxKey(address, namespace, sandbox string) string {
	h := sha256.Sum256([]byte(address + "\x00" + namespace + "\x00" + sandbox))
	return hex.EncodeToString(h[:16])
}

// paths are a sandbox's files in the run directory.
type paths struct {
	socket string // the shim's ttrpc socket
	dir    string // the VM's sockets, console log and pid file
}

func sandboxPaths(cfg *Config, key string) paths {
	return paths{socket: filepath.Join(cfg.RunDir, key+".sock"), dir: filepath.Join(cfg.RunDir, key)}
}

// start makes the sandbox's shim socket and a daemon serving it, or
// finds the running shim of the task's sandbox, and returns its address.
func start(f *flags, cfg *Config, exe string) (string, error) {
	sandbox, _, err := sandboxOf(f.bundle, f.id)
	if err != nil {
		return "", err
	}
	p := sandboxPaths(cfg, sandboxKey(f.address, f.namespace, sandbox))
	addr := "unix://" + p.socket
	if err := os.MkdirAll(cfg.RunDir, 0o711); err != nil {
		return "", err
	}
	l, err := listenUnix(p.socket)
	if errors.Is(err, unix.EADDRINUSE) {
		// Another container of the pod: its shim serves this one too,
		// if it still answers; a socket nobody serves is stale.
		if c, derr := net.DialTimeout("unix", p.socket, time.Second); derr == nil {
			c.Close()
			return addr, writeAddress(f.bundle, addr)
		}
		if err := os.Remove(p.socket); err != nil {
			return "", fmt.Errorf("removing stale socket: %w", err)
		}
		l, err = listenUnix(p.socket)
	}
	if err != nil {
		return "", err
	}
	defer l.Close()
	lf, err := l.File()
	if err != nil {
		os.Remove(p.socket)
		return "", err
	}
	defer lf.Close()

	args := append(append([]string(nil), stripAction(f.args)...), serveAction)
	cmd := exec.Command(exe, args...)
	cmd.Dir = f.bundle
	cmd.ExtraFiles = []*os.File{lf}
	// The daemon outlives `start` and containerd's session: a new
	// session keeps signals to containerd's group from reaching it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(p.socket)
		return "", fmt.Errorf("starting the shim daemon: %w", err)
	}
	// Nothing waits for the daemon but init once `start` exits.
	_ = cmd.Process.Release()
	return addr, writeAddress(f.bundle, addr)
}

// stripAction drops the trailing action from the original arguments.
func stripAction(args []string) []string {
	if n := len(args); n > 0 && !strings.HasPrefix(args[n-1], "-") {
		return args[:n-1]
	}
	return args
}

func listenUnix(path string) (*net.UnixListener, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	// The daemon removes the socket itself; the listener's close must not.
	l.SetUnlinkOnClose(false)
	return l, nil
}

// writeAddress records the shim's address in the bundle, where containerd
// looks for it when it restarts and reconnects to running shims.
func writeAddress(bundle, addr string) error {
	tmp := filepath.Join(bundle, ".address.tmp")
	if err := os.WriteFile(tmp, []byte(addr), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(bundle, "address"))
}

// serve is the daemon: it serves the Task API on the socket `start`
// passed it until Shutdown, or until containerd closes the last
// connection after every task is deleted.
func serve(f *flags, cfg *Config) error {
	logw := openShimLog(f.bundle)
	defer logw.Close()
	logger := log.New(logw, "vmm-shim: ", log.LstdFlags|log.Lmicroseconds)

	lf := os.NewFile(listenerFd, "listener")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return fmt.Errorf("the listener from start: %w", err)
	}
	sandbox, _, err := sandboxOf(f.bundle, f.id)
	if err != nil {
		l.Close()
		return err
	}
	p := sandboxPaths(cfg, sandboxKey(f.address, f.namespace, sandbox))
	defer os.Remove(p.socket)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pub := newPublisher(os.Getenv(ttrpcAddressEnv), f.namespace, logger)
	defer pub.Close()
	launcher := ExecLauncher{Path: cfg.VMM}
	if f.debug {
		// containerd's -debug: the VMM's diagnostics in its console log too.
		launcher.Args = []string{"--log-level", "debug"}
	}
	svc := NewService(ServiceConfig{
		Config:    cfg,
		Namespace: f.namespace,
		SandboxID: sandbox,
		Dir:       p.dir,
		Publisher: pub,
		Logf:      logger.Printf,
		Launcher:  launcher,
	})
	defer svc.cleanup()

	srv, err := ttrpc.NewServer()
	if err != nil {
		l.Close()
		return err
	}
	defer srv.Close()
	taskAPI.RegisterTaskService(srv, svc)

	// SIGTERM from whoever tears the node down: tidy up as Shutdown would.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ctx, l) }()
	select {
	case <-svc.Done():
		logger.Printf("shutting down")
	case s := <-sigs:
		logger.Printf("%v: shutting down", s)
	case err := <-serveErr:
		if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			return fmt.Errorf("serving: %w", err)
		}
	}
	// Let the answer to Shutdown reach containerd before the socket goes.
	sctx, scancel := context.WithTimeout(context.Background(), time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	return nil
}

// openShimLog opens the "log" fifo containerd made in the bundle and
// reads into its own log; without it (an older or newer containerd, or a
// test), logs are dropped.
func openShimLog(bundle string) io.WriteCloser {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := fifo.OpenFifo(ctx, filepath.Join(bundle, "log"), unix.O_WRONLY, 0)
	if err != nil {
		return nopCloser{io.Discard}
	}
	return w
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// deleteAfterDeath cleans up after a shim containerd lost (killed, or
// crashed): the task's writable disk and, for the sandbox's own task,
// the VM (the VMM dies with its shim, but a pid file left behind names
// it if not) and its sockets.
func deleteAfterDeath(f *flags, cfg *Config) (*taskAPI.DeleteResponse, error) {
	sandbox := f.id
	var spec *specs.Spec
	if sb, sp, err := sandboxOf(f.bundle, f.id); err == nil {
		sandbox, spec = sb, sp
	}
	var errs []error
	if err := removeTaskFiles(cfg, f.namespace, f.id); err != nil {
		errs = append(errs, err)
	}
	if sandbox == f.id {
		p := sandboxPaths(cfg, sandboxKey(f.address, f.namespace, sandbox))
		if err := killRecordedVMM(p.dir); err != nil {
			errs = append(errs, err)
		}
		// After the VMM: the tap is in the pod's namespace, which
		// outlives the shim until CNI tears it down.
		if spec != nil {
			if netns, err := podNetNS(spec); err == nil && netns != "" {
				if err := teardownPodNetwork(netns); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if err := os.RemoveAll(p.dir); err != nil {
			errs = append(errs, err)
		}
		if err := os.Remove(p.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &taskAPI.DeleteResponse{
		ExitedAt:   timestamppb.New(time.Now()),
		ExitStatus: 128 + uint32(unix.SIGKILL),
	}, nil
}
