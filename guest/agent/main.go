// Command vmm-agent is the guest agent: it runs inside a vmm microVM, as
// /bin/vmm-agent started by the guest's init, and runs containers on the
// host's behalf. The host (a shim) connects over virtio-vsock port 1024
// and speaks the protocol in package protocol; each container gets a
// rootfs (a block device such as /dev/vda, or a directory), fresh mount,
// PID, UTS and IPC namespaces and a cgroup with memory and CPU limits.
//
// For tests on a host it listens on a Unix or TCP socket instead:
//
//	vmm-agent --listen unix:/tmp/agent.sock --cgroup-parent test-agent
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// DefaultPort is the vsock port the agent listens on.
const DefaultPort = 1024

func main() {
	if len(os.Args) > 1 && os.Args[1] == initHelperArg {
		os.Exit(runInitHelper())
	}
	os.Exit(agentMain(os.Args[1:], os.Stderr))
}

func agentMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("vmm-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", fmt.Sprintf("vsock:%d", DefaultPort), "where to listen: vsock:PORT, unix:PATH or tcp:HOST:PORT")
	cgroupRoot := fs.String("cgroup-root", "/sys/fs/cgroup", "cgroup v2 mount, or the directory of v1 hierarchies")
	cgroupParent := fs.String("cgroup-parent", "vmm-agent", "cgroup (relative to the root) that holds the containers' cgroups")
	runDir := fs.String("run-dir", "/run/vmm-agent", "scratch directory for rootfs mount points")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vmm-agent: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	logger := log.New(stderr, "vmm-agent: ", 0)

	l, err := listenOn(*listen)
	if err != nil {
		logger.Print(err)
		return 1
	}
	cgroups, err := newCgroupManager(*cgroupRoot, *cgroupParent)
	if err != nil {
		// Containers cannot be made, but Ping and Version still tell
		// the host why.
		logger.Printf("cgroups: %v", err)
	}
	a := newAgent("/proc/self/exe", *runDir, cgroups, logger.Printf)
	logger.Printf("listening on %s (protocol %d; %s)", *listen, protocol.Version, a.describe())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, unix.SIGTERM, unix.SIGINT)
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.serve(l) }()
	select {
	case sig := <-stop:
		logger.Printf("%v: destroying containers", sig)
		l.Close()
		a.shutdown()
		return 0
	case err := <-serveErr:
		logger.Printf("accept: %v", err)
		a.shutdown()
		return 1
	}
}

// listenOn parses a --listen address.
func listenOn(addr string) (net.Listener, error) {
	kind, rest, ok := strings.Cut(addr, ":")
	if !ok {
		return nil, fmt.Errorf("listen address %q: want vsock:PORT, unix:PATH or tcp:HOST:PORT", addr)
	}
	switch kind {
	case "vsock":
		port, err := strconv.ParseUint(rest, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("vsock port %q: %w", rest, err)
		}
		l, err := vsock.Listen(uint32(port), nil)
		if err != nil {
			return nil, fmt.Errorf("listening on vsock port %d: %w", port, err)
		}
		return l, nil
	case "unix":
		if err := os.Remove(rest); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
		return net.Listen("unix", rest)
	case "tcp":
		return net.Listen("tcp", rest)
	}
	return nil, fmt.Errorf("listen address %q: unknown kind %q", addr, kind)
}
