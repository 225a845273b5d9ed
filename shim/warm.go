package shim

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	agent "github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/shim/snapcache"
	"github.com/govmm/vmm/vmm"
)

// Warm runs. The first run for a guest boots it with a placeholder disk
// where the image goes, waits for the agent, pauses the VM, saves a
// snapshot into the cache, resumes, and swaps the image in (PATCH
// /drives). Every later run restores a clone of that snapshot in a VMM of
// its own (its own API and vsock sockets), gives the clone fresh entropy
// and the wall clock (Refresh), and swaps its image in the same way. A
// snapshot that will not restore is removed and the run boots, building a
// new one: a warm run never fails where a boot would not.

// refreshEntropy is how much host randomness a clone gets: enough to
// reseed the guest kernel's CRNG outright.
const refreshEntropy = 64

// restoreAgentTimeout bounds the wait for a restored clone's agent: it
// was answering when the snapshot was taken, so it answers at once or
// the snapshot is no good.
const restoreAgentTimeout = time.Minute

// sectorSize is virtio-blk's unit: the guest sees an image's size
// rounded down to it.
const sectorSize = 512

// warm reports whether this run uses the snapshot cache. Taps and
// writable images change what the guest was booted with (its NICs, a
// read-only disk), so those runs boot.
func (r *runner) warm() bool {
	o := &r.o
	return o.Snapshots != nil && len(o.Nets) == 0 && !o.ImageWritable
}

// snapshotInputs are what the warm snapshot of this run's guest depends
// on.
func (r *runner) snapshotInputs() snapcache.Inputs {
	o := &r.o
	return snapcache.Inputs{
		Files: []string{o.Kernel, o.Initrd},
		Params: []string{
			"vmm " + vmm.Version,
			"salt " + o.SnapshotSalt,
			"cmdline " + o.Cmdline,
			fmt.Sprintf("mem_mib %d", o.MemMiB),
			fmt.Sprintf("vcpus %d", o.CPUs),
			fmt.Sprintf("vsock cid %d port %d", GuestCID, AgentPort),
			fmt.Sprintf("drive %s ro placeholder %d", rootfsDriveID, snapcache.PlaceholderSize),
		},
	}
}

// SnapshotKey is the cache key of o's guest, as a run computes it.
func SnapshotKey(o Options) (string, error) {
	r := &runner{o: o}
	return snapcache.Key(r.snapshotInputs())
}

func (r *runner) note(format string, args ...any) {
	if r.o.Verbose {
		fmt.Fprintf(r.o.Stderr, "vmm run: "+format+"\n", args...)
	}
}

func (r *runner) warn(format string, args ...any) {
	fmt.Fprintf(r.o.Stderr, "vmm run: "+format+"\n", args...)
}

// warmStart restores the snapshot for this run's guest, or boots and
// saves one.
func (r *runner) warmStart(ctx context.Context) error {
	cache := *r.o.Snapshots
	key, err := snapcache.Key(r.snapshotInputs())
	if err != nil {
		r.warn("no warm snapshot (%v); booting", err)
		return r.coldBoot(ctx)
	}
	if e, ok := cache.Lookup(key); ok {
		// Marked used first, so a Prune by another run leaves it alone.
		if err := cache.Touch(e); err != nil {
			r.note("%v", err)
		}
		err := r.restore(ctx, e)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err // a signal or the boot timeout, not the snapshot
		}
		var ie *imageError
		if errors.As(err, &ie) {
			return err // the image's fault, not the snapshot's: a boot would fail the same way
		}
		r.warn("restoring snapshot %s failed, booting instead: %v", key, err)
		r.dropVM()
		if err := cache.Remove(ctx, e); err != nil {
			r.warn("%v", err)
		}
	}
	return r.bootAndSave(ctx, cache, key)
}

// snapshotMaxAge is how long a warm snapshot stays in the cache unused:
// a new kernel, initramfs, memory size or vmm build keys a new one, and
// each holds a memory file of up to the guest's RAM.
const snapshotMaxAge = 14 * 24 * time.Hour

// imageError is a failure to attach the container image, which no boot
// or rebuilt snapshot would cure.
type imageError struct{ err error }

func (e *imageError) Error() string { return e.err.Error() }
func (e *imageError) Unwrap() error { return e.err }

// bootAndSave boots the guest with the placeholder disk and saves its
// snapshot under key, then swaps the image in. A run that finds another
// building the same snapshot waits for it and restores it instead.
func (r *runner) bootAndSave(ctx context.Context, cache snapcache.Cache, key string) error {
	placeholder, err := cache.Placeholder()
	if err != nil {
		r.warn("%v; booting without a snapshot", err)
		return r.coldBoot(ctx)
	}
	var (
		booted bool
		vctx   context.Context
	)
	start := time.Now()
	e, built, err := cache.Build(ctx, key, func(dir string) error {
		var err error
		if vctx, err = r.launch(ctx); err != nil {
			return err
		}
		if err := r.boot(vctx, placeholder, true); err != nil {
			return err
		}
		booted = true
		r.note("booted in %v", time.Since(start).Round(time.Millisecond))
		return r.saveSnapshot(vctx, dir)
	})
	switch {
	case booted:
		if err != nil {
			if r.agent == nil {
				return err // the VM did not come back from its snapshot
			}
			r.warn("saving the warm snapshot failed (the next run boots again): %v", err)
		} else if built {
			r.note("saved snapshot %s", key)
			removed, err := cache.Prune(snapshotMaxAge)
			if err != nil {
				r.warn("pruning the snapshot cache: %v", err)
			}
			for _, k := range removed {
				r.note("removed snapshot %s, unused for %v", k, snapshotMaxAge)
			}
		}
		return r.attachImage(vctx)
	case err != nil:
		if ctx.Err() != nil {
			return err
		}
		// The cache failed before anything booted (its directory not
		// writable, no space, the lock not taken): a run still runs.
		r.warn("warm snapshot cache: %v; booting without a snapshot", err)
		r.dropVM()
		return r.coldBoot(ctx)
	}
	// Another run built it while this one waited for the lock.
	if err := r.restore(ctx, e); err != nil {
		var ie *imageError
		if ctx.Err() != nil || errors.As(err, &ie) {
			return err
		}
		r.warn("restoring snapshot %s failed, booting instead: %v", key, err)
		r.dropVM()
		return r.coldBoot(ctx)
	}
	return nil
}

// saveSnapshot pauses the booted VM, saves it into dir, resumes it and
// reconnects to the agent (the snapshot resets vsock connections). The
// agent is connected again on return unless resuming or reconnecting
// failed.
func (r *runner) saveSnapshot(ctx context.Context, dir string) error {
	// Closed from this end first, so the guest's agent is idle, with no
	// connection to lose, in every clone.
	_ = r.agent.Close()
	r.agent = nil
	if err := r.api.Pause(ctx); err != nil {
		ac, derr := DialAgent(ctx, r.vsock)
		if derr != nil {
			return fmt.Errorf("pausing the VM for its snapshot: %w; reconnecting: %w", err, derr)
		}
		r.agent = ac
		return fmt.Errorf("pausing the VM for its snapshot: %w", err)
	}
	snapErr := r.api.CreateSnapshot(ctx, filepath.Join(dir, snapcache.StateFile), filepath.Join(dir, snapcache.MemFile))
	if err := r.api.Resume(ctx); err != nil {
		return fmt.Errorf("resuming the VM after its snapshot: %w", err)
	}
	ac, err := DialAgent(ctx, r.vsock)
	if err != nil {
		return fmt.Errorf("after the snapshot: %w", err)
	}
	r.agent = ac
	if snapErr != nil {
		return fmt.Errorf("creating the snapshot: %w", snapErr)
	}
	return nil
}

// restore brings up a clone of e in a new VMM: load and resume, reach the
// agent, refresh the clone's entropy and clock before anything runs in
// it, and swap the image in.
func (r *runner) restore(ctx context.Context, e snapcache.Entry) error {
	start := time.Now()
	vctx, err := r.launch(ctx)
	if err != nil {
		return err
	}
	if err := r.api.WaitReady(vctx); err != nil {
		return fmt.Errorf("waiting for the VMM's API socket: %w", err)
	}
	if err := r.api.LoadSnapshot(vctx, e.State(), e.Mem(), r.vsock, true); err != nil {
		return fmt.Errorf("loading the snapshot: %w", err)
	}
	actx, cancel := context.WithTimeout(vctx, restoreAgentTimeout)
	ac, err := DialAgent(actx, r.vsock)
	cancel()
	if err != nil {
		return fmt.Errorf("after restoring: %w", err)
	}
	r.agent = ac
	if err := r.withAgent(vctx, func(ac *agent.Client) error { return Refresh(vctx, ac) }); err != nil {
		return err
	}
	if err := r.attachImage(vctx); err != nil {
		return &imageError{err}
	}
	r.note("restored from snapshot %s in %v", e.Key, time.Since(start).Round(time.Millisecond))
	return nil
}

// attachImage swaps the image in for the placeholder and has the agent
// drop what it cached of the placeholder once the guest sees the new
// size.
func (r *runner) attachImage(ctx context.Context) error {
	st, err := os.Stat(r.o.Image)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := r.api.PatchDrivePath(ctx, rootfsDriveID, r.o.Image); err != nil {
		return fmt.Errorf("attaching the image: %w", err)
	}
	size := uint64(st.Size()) &^ (sectorSize - 1)
	if err := r.withAgent(ctx, func(ac *agent.Client) error { return ac.SyncBlockDevice(ctx, RootfsDevice, size) }); err != nil {
		return fmt.Errorf("attaching the image: %w", err)
	}
	return nil
}

// withAgent runs call on the agent connection and, if that connection
// died under it, dials once more and runs it again. A snapshot resets the
// guest's vsock connections (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET), and the
// guest may handle that event only after this run has connected, ending
// the new connection too. The calls made through it are idempotent.
func (r *runner) withAgent(ctx context.Context, call func(*agent.Client) error) error {
	err := call(r.agent)
	if err == nil || !closed(r.agent.Done()) || ctx.Err() != nil {
		return err
	}
	r.note("the agent connection dropped (%v); reconnecting", err)
	ac, derr := DialAgent(ctx, r.vsock)
	if derr != nil {
		return errors.Join(err, derr)
	}
	_ = r.agent.Close()
	r.agent = ac
	return call(ac)
}

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Refresh gives a guest restored from a snapshot what no two clones may
// share: fresh entropy from the host's crypto/rand for the kernel's pool,
// and the host's wall clock. Send it before anything else runs in the
// clone.
func Refresh(ctx context.Context, ac *agent.Client) error {
	buf := make([]byte, refreshEntropy)
	if _, err := rand.Read(buf); err != nil {
		return fmt.Errorf("refreshing the clone: %w", err)
	}
	if err := ac.Refresh(ctx, buf, time.Now()); err != nil {
		return fmt.Errorf("refreshing the clone's entropy and clock: %w", err)
	}
	return nil
}
