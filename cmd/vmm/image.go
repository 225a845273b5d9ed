package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/govmm/vmm/image"
)

const imageUsage = `usage:
  vmm image build --from-dir DIR -o FILE [--size N] [--label L]
  vmm image build --from-oci-tar TAR -o FILE [--size N] [--label L] [--max-unpacked N]

Builds an ext4 root filesystem image for a container: from a directory, or
from an OCI image (a layout directory or its tar) or a "docker save"
tarball, applying the layers in order. --size takes 64M, 1G, ... (default:
the content plus headroom, at least 64 MiB). --max-unpacked caps what the
layers may unpack, holes included (default 16G).
`

// imageMain implements `vmm image ...`; args exclude "image". It returns
// the exit status: 0 on success, 1 when the build fails, 2 for bad usage.
func imageMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, imageUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return 0
	}
	if args[0] != "build" {
		fmt.Fprintf(stderr, "vmm image: unknown command %q (want build)\n", args[0])
		return exitUsage
	}
	fs := flag.NewFlagSet("vmm image build", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fromDir := fs.String("from-dir", "", "directory to copy into the image")
	fromOCI := fs.String("from-oci-tar", "", "OCI image layout (tar or directory) or docker save tarball")
	out := fs.String("o", "", "image file to write")
	size := fs.String("size", "", "image size (e.g. 256M, 1G; default automatic)")
	label := fs.String("label", "rootfs", "filesystem label")
	maxUnpacked := fs.String("max-unpacked", "", "cap on the bytes the layers unpack (default 16G)")
	quiet := fs.Bool("q", false, "print nothing on success")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, imageUsage)
			return 0
		}
		fmt.Fprintf(stderr, "vmm image build: %v\n", err)
		return exitUsage
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "vmm image build: "+format+"\n", a...)
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		return usage("unexpected argument %q", fs.Arg(0))
	case (*fromDir == "") == (*fromOCI == ""):
		return usage("give exactly one of --from-dir and --from-oci-tar")
	case *out == "":
		return usage("-o FILE is required")
	}
	opts := image.Options{Label: *label}
	if *size != "" {
		n, err := parseSize(*size)
		if err != nil || n == 0 || n > 1<<44 {
			return usage("invalid --size %q", *size)
		}
		opts.Size = int64(n)
	}
	if *maxUnpacked != "" {
		n, err := parseSize(*maxUnpacked)
		if err != nil || n == 0 || n > 1<<50 {
			return usage("invalid --max-unpacked %q", *maxUnpacked)
		}
		opts.MaxUnpacked = int64(n)
	}
	if !*quiet {
		opts.Logf = func(format string, a ...any) { fmt.Fprintf(stderr, "vmm image: "+format+"\n", a...) }
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if *fromDir != "" {
		err = image.BuildFromDir(ctx, *fromDir, *out, opts)
	} else {
		err = image.BuildFromOCI(ctx, *fromOCI, *out, opts)
	}
	if errors.Is(err, image.ErrTooLarge) {
		err = fmt.Errorf("%w (raise --max-unpacked if the image is trusted)", err)
	}
	if err != nil {
		fmt.Fprintf(stderr, "vmm image build: %v\n", err)
		return 1
	}
	if !*quiet {
		fmt.Fprintf(stdout, "%s\n", *out)
	}
	return 0
}
