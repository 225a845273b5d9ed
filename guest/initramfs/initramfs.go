// Package initramfs builds the default guest's initial RAM filesystem: the
// guest/init program as /init, a busybox-style binary of u-root commands with
// a shell, and the device nodes and config files that must exist before
// anything is mounted. The archive is newc cpio, byte-for-byte reproducible
// for a given source tree and toolchain, so it can be cached by content.
package initramfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// initPackage is the import path of the program that becomes /init.
const initPackage = "github.com/govmm/vmm/guest/init"

// agentPackage is the guest agent, installed as /bin/vmm-agent, which
// /init starts when present.
const agentPackage = "github.com/govmm/vmm/guest/agent"

// Options control what goes into the archive and where it is built from.
type Options struct {
	// ModuleDir is the root of the vmm module: its go.mod pins the u-root
	// commands and its guest/init package becomes /init. Empty means the
	// module containing the working directory.
	ModuleDir string

	// Commands are the Go import paths of the commands compiled into the
	// busybox binary, each linked as /bin/<last path element>. Nil means
	// DefaultCommands. The list must include the shell (gosh).
	Commands []string

	// WithoutAgent leaves the guest agent (/bin/vmm-agent, about 3.5 MB)
	// out, for guests that never run containers and want the smallest
	// archive.
	WithoutAgent bool

	// Logf receives progress messages. Nil discards them.
	Logf func(format string, args ...any)
}

// Build compiles the guest programs and returns the uncompressed newc cpio
// archive. It needs the go tool and a module cache that holds the modules
// go.mod requires, but no network access.
func Build(ctx context.Context, opts Options) ([]byte, error) {
	opts, err := withDefaults(ctx, opts)
	if err != nil {
		return nil, err
	}
	if !containsCommand(opts.Commands, shellCommand) {
		return nil, fmt.Errorf("command list has no %s: the guest needs a shell for /bin/sh", shellCommand)
	}

	workDir, err := os.MkdirTemp("", "vmm-initramfs-")
	if err != nil {
		return nil, fmt.Errorf("creating build directory: %w", err)
	}
	defer os.RemoveAll(workDir)

	toolchain := goToolchain{moduleDir: opts.ModuleDir}

	initPath := filepath.Join(workDir, "init")
	start := time.Now()
	if err := toolchain.buildInit(ctx, initPath); err != nil {
		return nil, err
	}
	opts.Logf("built /init from %s in %s", initPackage, since(start))

	agentPath := filepath.Join(workDir, "vmm-agent")
	if !opts.WithoutAgent {
		start = time.Now()
		if err := toolchain.buildProgram(ctx, agentPackage, agentPath); err != nil {
			return nil, err
		}
		opts.Logf("built /%s from %s in %s", agentArchivePath, agentPackage, since(start))
	}

	busyboxPath := filepath.Join(workDir, "bb")
	start = time.Now()
	if err := toolchain.buildBusybox(ctx, filepath.Join(workDir, "bbsrc"), busyboxPath, opts.Commands, opts.Logf); err != nil {
		return nil, err
	}
	opts.Logf("built busybox with %d commands in %s", len(opts.Commands), since(start))

	initBinary, err := os.ReadFile(initPath)
	if err != nil {
		return nil, fmt.Errorf("reading built /init: %w", err)
	}
	busyboxBinary, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("reading built busybox: %w", err)
	}

	image := newImage(initBinary, busyboxBinary, opts.Commands)
	if !opts.WithoutAgent {
		agentBinary, err := os.ReadFile(agentPath)
		if err != nil {
			return nil, fmt.Errorf("reading built agent: %w", err)
		}
		image.addAgent(agentBinary)
	}
	archive, err := image.archive()
	if err != nil {
		return nil, err
	}
	opts.Logf("archive: %d entries, %d bytes", len(image.entries), len(archive))
	return archive, nil
}

func since(start time.Time) time.Duration {
	return time.Since(start).Round(time.Millisecond)
}

func withDefaults(ctx context.Context, opts Options) (Options, error) {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.Commands == nil {
		opts.Commands = DefaultCommands()
	}
	if opts.ModuleDir == "" {
		dir, err := findModuleDir(ctx)
		if err != nil {
			return opts, err
		}
		opts.ModuleDir = dir
	}
	return opts, nil
}

// findModuleDir asks the go tool rather than walking up for go.mod so that
// GOFLAGS=-modfile and friends are honoured the same way the build honours them.
func findModuleDir(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("locating the vmm module (go env GOMOD): %w", commandError(err))
	}
	goMod := strings.TrimSpace(string(out))
	if goMod == "" || goMod == os.DevNull {
		return "", errors.New("not inside the vmm module: run from the repository or set Options.ModuleDir")
	}
	return filepath.Dir(goMod), nil
}

func containsCommand(commands []string, name string) bool {
	for _, c := range commands {
		if commandName(c) == name {
			return true
		}
	}
	return false
}

// commandName is the name a command is invoked by: busybox dispatches on
// the base name of argv[0], which gobusybox derives from the import path.
func commandName(importPath string) string {
	return importPath[strings.LastIndex(importPath, "/")+1:]
}

// commandError folds a failed command's stderr into the error, since the
// exit status alone never says what went wrong.
func commandError(err error) error {
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && len(exitErr.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(exitErr.Stderr)))
	}
	return err
}
