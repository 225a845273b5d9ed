// Command mkinitramfs builds the default guest's initramfs: it writes the
// uncompressed newc archive to -o and a gzip copy next to it as <out>.gz,
// since some boot paths want one and some the other. Run it from inside the
// vmm module:
//
//	go run ./cmd/mkinitramfs -o build/guest/initramfs.cpio
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/govmm/vmm/guest/initramfs"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkinitramfs: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, log io.Writer) error {
	flags := flag.NewFlagSet("mkinitramfs", flag.ContinueOnError)
	flags.SetOutput(log)
	out := flags.String("o", "build/guest/initramfs.cpio", "`path` of the uncompressed archive; the gzip copy is written to path.gz")
	quiet := flags.Bool("q", false, "print nothing but errors")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flags.Args())
	}

	logf := func(format string, args ...any) {
		if !*quiet {
			fmt.Fprintf(log, "mkinitramfs: "+format+"\n", args...)
		}
	}
	start := time.Now()
	archive, err := initramfs.Build(ctx, initramfs.Options{Logf: logf})
	if err != nil {
		return err
	}
	compressed, err := gzipBytes(archive)
	if err != nil {
		return err
	}
	if err := writeOutputs(*out, archive, compressed); err != nil {
		return err
	}
	logf("wrote %s (%d bytes) and %s.gz (%d bytes) in %s",
		*out, len(archive), *out, len(compressed), time.Since(start).Round(time.Millisecond))
	return nil
}

// gzipBytes compresses without a file name or timestamp in the header, so
// the .gz is as reproducible as the archive. The best level would save
// under 1% here at twice the time.
func gzipBytes(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	if _, err := zw.Write(data); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	return buf.Bytes(), nil
}

// writeOutputs writes both files, each through a temporary name and a
// rename, so a reader (or a build cache) never sees a half-written archive.
func writeOutputs(out string, archive, compressed []byte) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("creating output directory: %w", err)
	}
	return errors.Join(
		writeFileAtomic(out, archive),
		writeFileAtomic(out+".gz", compressed),
	)
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
