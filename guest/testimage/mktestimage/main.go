// Command mktestimage builds the busybox container image the agent and
// integration tests run: Debian's static busybox with its applet links
// and a minimal /etc, as an ext4 image.
//
//	go run ./guest/testimage/mktestimage -o build/guest/test.ext4
//
// It installs busybox-static with apt-get when no static busybox is found
// and it runs as root.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/govmm/vmm/guest/testimage"
	"github.com/govmm/vmm/image"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("mktestimage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "build/guest/test.ext4", "image file to write")
	busybox := fs.String("busybox", "", "static busybox binary (default: found or installed)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mktestimage: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if err := build(*out, *busybox, stderr); err != nil {
		fmt.Fprintf(stderr, "mktestimage: %v\n", err)
		return 1
	}
	return 0
}

func build(out, busybox string, stderr io.Writer) error {
	if busybox == "" {
		var err error
		if busybox, err = findOrInstallBusybox(stderr); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "vmm-testimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if err := testimage.Populate(dir, busybox); err != nil {
		return err
	}
	if err := os.MkdirAll(dirOf(out), 0o755); err != nil {
		return err
	}
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "mktestimage: "+format+"\n", args...) }
	return image.BuildFromDir(context.Background(), dir, out, image.Options{Label: "testimage", Logf: logf})
}

func dirOf(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			return path[:i+1]
		}
	}
	return "."
}

func findOrInstallBusybox(stderr io.Writer) (string, error) {
	if p, err := testimage.FindBusybox(); err == nil {
		return p, nil
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("no static busybox: apt-get install busybox-static")
	}
	fmt.Fprintln(stderr, "mktestimage: apt-get install -y busybox-static")
	cmd := exec.Command("apt-get", "install", "-y", "busybox-static")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("installing busybox-static: %w", err)
	}
	return testimage.FindBusybox()
}
