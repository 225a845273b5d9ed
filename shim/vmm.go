package shim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/api/client"
)

// API is the part of the VMM's REST API the shim uses to configure and
// boot the machine. *client.Client implements it.
type API interface {
	WaitReady(ctx context.Context) error
	PutBootSource(ctx context.Context, kernel, initrd, bootArgs string) error
	PutMachineConfig(ctx context.Context, vcpus, memMiB int64) error
	PutDrive(ctx context.Context, d api.Drive) error
	PutNetworkInterface(ctx context.Context, n api.NetworkInterface) error
	PutVsock(ctx context.Context, cid int64, udsPath string) error
	Start(ctx context.Context) error

	// For warm runs (Options.Snapshots).
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	CreateSnapshot(ctx context.Context, statePath, memPath string) error
	LoadSnapshot(ctx context.Context, statePath, memPath, vsockUDS string, resume bool) error
	PatchDrivePath(ctx context.Context, id, path string) error
}

// LaunchSpec says how to start one VMM process.
type LaunchSpec struct {
	APISock string    // where it must serve the API
	Console io.Writer // the guest's console and the VMM's own diagnostics
}

// VMM is a started VMM process.
type VMM interface {
	// Done is closed when the process has exited.
	Done() <-chan struct{}
	// Err describes how the process exited, once Done is closed.
	Err() error
	// Stop asks the process to end (SIGTERM), kills it after grace, and
	// waits for it. It may be called more than once.
	Stop(grace time.Duration)
}

// Launcher starts VMM processes and makes API clients for them; tests
// replace it to run the orchestration without KVM.
type Launcher interface {
	Launch(ctx context.Context, spec LaunchSpec) (VMM, error)
	Client(apiSock string) API
}

// ExecLauncher runs the vmm binary at Path with --api-sock.
type ExecLauncher struct {
	Path string
	Args []string // extra flags before --api-sock (e.g. --log-level)
}

// Client implements Launcher with the api/client package.
func (l ExecLauncher) Client(apiSock string) API { return client.New(apiSock) }

// Launch implements Launcher.
func (l ExecLauncher) Launch(ctx context.Context, spec LaunchSpec) (VMM, error) {
	args := append(append([]string(nil), l.Args...), "--api-sock", spec.APISock)
	cmd := exec.Command(l.Path, args...)
	cmd.Stdout, cmd.Stderr = spec.Console, spec.Console
	// stdin stays /dev/null: the terminal belongs to the container. Its
	// own process group keeps a Ctrl-C on the terminal from reaching the
	// VMM (the shim forwards it to the container instead), and Pdeathsig
	// ends the VMM if the shim dies without cleaning up. (Pdeathsig fires
	// when the forking OS thread ends; Go ends a thread only when a
	// goroutine exits locked to it, which the containerd shim's netns
	// launcher does only when it can't bring its thread back from a pod's
	// network namespace, and then stops the VMM anyway.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A Console that is not a file is fed through a pipe; don't let
	// anything that inherited it hold up Wait once the VMM is gone.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the VMM %s: %w", l.Path, err)
	}
	p := &execVMM{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

type execVMM struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done closes
}

func (p *execVMM) Done() <-chan struct{} { return p.done }

func (p *execVMM) Err() error {
	<-p.done
	if p.err == nil {
		return errors.New("exited with status 0")
	}
	return p.err
}

func (p *execVMM) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	// The whole group: the VMM is its leader and has no children of its
	// own today, but whatever it starts must not outlive it.
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-p.done
}

// logTail returns the last lines of the file at path (at most n lines of
// its last 8 KiB), for error messages about a VMM that died.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const window = 8 << 10
	if st, err := f.Stat(); err == nil && st.Size() > window {
		_, _ = f.Seek(st.Size()-window, io.SeekStart)
	}
	data, _ := io.ReadAll(io.LimitReader(f, window))
	data = bytes.ReplaceAll(data, []byte("\r"), nil)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
