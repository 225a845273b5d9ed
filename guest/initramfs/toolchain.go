package initramfs

import (
	"context"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/u-root/gobusybox/src/pkg/bb"
	"github.com/u-root/gobusybox/src/pkg/bb/findpkg"
	"github.com/u-root/gobusybox/src/pkg/golang"
)

// The guest is always x86-64 Linux, whatever the host builds on.
const (
	guestGOOS   = "linux"
	guestGOARCH = "amd64"
)

// busyboxBuildTags select gosh's plain line reader: the kernel tty does
// line editing on a serial console, and the full-screen editor would fill
// the console (which tests read) with escape sequences and add megabytes.
const busyboxBuildTags = "goshsmall"

// reproducibleFlags make two builds of the same source byte-identical:
// no paths, no VCS stamp, no symbols, no random build ID.
func reproducibleFlags() []string {
	return []string{"-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid="}
}

// goToolchain runs the go tool for the guest target inside the vmm module.
type goToolchain struct {
	moduleDir string
}

// goTool prefers the toolchain go/build reports, matching what gobusybox
// uses to load packages, and falls back to whatever is on PATH.
func goTool() string {
	if build.Default.GOROOT != "" {
		candidate := filepath.Join(build.Default.GOROOT, "bin", "go")
		if _, err := os.Stat(candidate); err == nil {
			return candidate
		}
	}
	return "go"
}

func guestEnv(extra ...string) []string {
	env := append(os.Environ(), "GOOS="+guestGOOS, "GOARCH="+guestGOARCH, "CGO_ENABLED=0")
	return append(env, extra...)
}

// buildInit compiles guest/init as a static binary at out.
func (t goToolchain) buildInit(ctx context.Context, out string) error {
	return t.buildProgram(ctx, initPackage, out)
}

// buildProgram compiles a main package of the vmm module as a static
// guest binary at out.
func (t goToolchain) buildProgram(ctx context.Context, pkg, out string) error {
	args := append([]string{"build", "-o", out}, reproducibleFlags()...)
	args = append(args, pkg)
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = t.moduleDir
	cmd.Env = guestEnv()
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w\n%s", pkg, err, output)
	}
	return nil
}

// buildBusybox compiles commands into one binary at out. gobusybox rewrites
// each command's main package into a library, copies it and every
// dependency from the module cache into a GOPATH tree at genDir, and adds a
// main that dispatches on argv[0]. We let it only generate that tree and
// compile it ourselves, because its own build forces a rebuild of every
// package (go build -a) and so never benefits from the build cache.
func (t goToolchain) buildBusybox(ctx context.Context, genDir, out string, commands []string, logf func(string, ...any)) error {
	lookup := golang.Default(
		golang.DisableCGO(),
		golang.WithGOOS(guestGOOS),
		golang.WithGOARCH(guestGOARCH),
		golang.WithGO111MODULE("on"),
		golang.WithWorkingDir(t.moduleDir),
		golang.WithBuildTag(busyboxBuildTags),
	)
	generate := &bb.Opts{
		Env:          lookup,
		LookupEnv:    &findpkg.Env{}, // ignore GBB_PATH/UROOT_SOURCE: resolve through go.mod only
		GenSrcDir:    genDir,
		CommandPaths: commands,
		GenerateOnly: true,
	}
	start := time.Now()
	if err := bb.BuildBusybox(printfLogger(logf), generate); err != nil {
		return fmt.Errorf("generating busybox source: %w", err)
	}
	logf("generated busybox source in %s", since(start))

	args := append([]string{"build", "-o", out}, reproducibleFlags()...)
	// Without inlining the binary is noticeably smaller, and these
	// commands are not performance sensitive.
	args = append(args, "-gcflags=all=-l", "-tags="+busyboxBuildTags, ".")
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = filepath.Join(genDir, "src", "bb.u-root.com", "bb")
	// The generated tree is a GOPATH workspace, not a module. GOFLAGS is
	// cleared because module-only flags such as -mod are errors there.
	cmd.Env = guestEnv("GO111MODULE=off", "GOPATH="+genDir, "GOFLAGS=", "GOWORK=off")
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("compiling busybox in %s: %w\n%s", cmd.Dir, err, output)
	}
	return nil
}

// printfLogger adapts a Logf function to gobusybox's logger interface.
type printfLogger func(format string, args ...any)

func (l printfLogger) Printf(format string, args ...any) { l(format, args...) }
