package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/govmm/vmm/snapshot"
)

const snapshotUsage = `usage:
  vmm snapshot rebase --base MEM --diff DIFF

Merges the memory file of a Diff snapshot (PUT /snapshot/create with
"snapshot_type": "Diff") onto the memory file of the snapshot before it,
in place, as Firecracker's rebase-snap: the pages the diff holds replace
the base's. MEM then restores with the diff snapshot's state file. Apply a
chain of diffs oldest first. MEM must not be in use by a restored microVM:
rebase a copy (cp --sparse=always keeps it small).
`

// snapshotMain implements `vmm snapshot ...`; args exclude "snapshot". It
// returns the exit status: 0 on success, 1 when the merge fails, 2 for
// bad usage.
func snapshotMain(args []string, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, snapshotUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return 0
	}
	if args[0] != "rebase" {
		fmt.Fprintf(stderr, "vmm snapshot: unknown command %q (want rebase)\n", args[0])
		return exitUsage
	}
	fs := flag.NewFlagSet("vmm snapshot rebase", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	base := fs.String("base", "", "memory file of the earlier snapshot, changed in place")
	diff := fs.String("diff", "", "memory file of the Diff snapshot")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, snapshotUsage)
			return 0
		}
		fmt.Fprintf(stderr, "vmm snapshot rebase: %v\n", err)
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "vmm snapshot rebase: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	case *base == "" || *diff == "":
		fmt.Fprintln(stderr, "vmm snapshot rebase: --base MEM and --diff DIFF are both required")
		return exitUsage
	}
	if err := snapshot.Rebase(*base, *diff); err != nil {
		fmt.Fprintf(stderr, "vmm snapshot %v\n", err)
		return 1
	}
	return 0
}
