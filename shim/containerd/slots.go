package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/govmm/vmm/shim/snapcache"
	"github.com/govmm/vmm/vmm"
)

// A pod's VM boots with its first container's disks and can't get new
// drives later, so it also boots with spare drives holding placeholders,
// as Firecracker's and Kata's runtimes do; a later container of the pod
// takes spare slots and swaps its images in with PATCH /drives/{id}. A
// drive keeps the read-only setting it was configured with, so the
// spares are of two kinds: read-only ones for the shared layer images
// (all on one shared placeholder), and a few writable ones for the
// containers' writable disks (each on a sparse placeholder of its own
// in the sandbox's run directory, since vmm locks a writable image
// exclusively).

// errNoSlots is wrapped by a claim that finds no free slot of a kind.
var errNoSlots = errors.New("no free drive slot")

// driveSlot is one drive of the VM.
type driveSlot struct {
	readOnly bool
	// placeholder is the image the slot holds while free; "" for a
	// drive the VM booted with for its first container, which keeps
	// it until the VM stops.
	placeholder string
	path        string // the image it holds
	users       int    // containers using it: read-only images are shared
}

func (s *driveSlot) free() bool { return s.users == 0 && s.placeholder != "" }

// driveSlots hands out a VM's drives, indexed in attach order (which
// gives their guest names). It has no lock: its machine's attachMu
// guards it.
type driveSlots struct {
	slots []driveSlot
}

// newDriveSlots describes a VM booted with used (its first container's
// disks, in use) followed by spares (placeholders, free).
func newDriveSlots(used, spares []disk) *driveSlots {
	s := &driveSlots{slots: make([]driveSlot, 0, len(used)+len(spares))}
	for _, d := range used {
		s.slots = append(s.slots, driveSlot{readOnly: d.readOnly, path: d.path, users: 1})
	}
	for _, d := range spares {
		s.slots = append(s.slots, driveSlot{readOnly: d.readOnly, placeholder: d.path, path: d.path})
	}
	return s
}

// claim takes a slot for each of disks, in order: a read-only image some
// container already uses shares its slot, anything else takes a free
// slot of its kind. It returns the slots' indices and those whose image
// must be swapped in. Nothing is taken if a disk finds no slot.
func (s *driveSlots) claim(disks []disk) (idx, swap []int, err error) {
	saved := slices.Clone(s.slots)
	for _, d := range disks {
		i := -1
		if d.readOnly {
			i = slices.IndexFunc(s.slots, func(sl driveSlot) bool {
				return sl.readOnly && sl.users > 0 && sl.path == d.path
			})
		}
		if i < 0 {
			i = slices.IndexFunc(s.slots, func(sl driveSlot) bool { return sl.free() && sl.readOnly == d.readOnly })
			if i < 0 {
				s.slots = saved
				return nil, nil, fmt.Errorf("%w for a %s disk (%d read-only and %d writable free)", errNoSlots, kind(d.readOnly), s.count(true), s.count(false))
			}
			s.slots[i].path = d.path
			swap = append(swap, i)
		}
		s.slots[i].users++
		idx = append(idx, i)
	}
	return idx, swap, nil
}

// release gives back the slots claim returned and reports those now free,
// whose placeholder must be swapped back in.
func (s *driveSlots) release(idx []int) (freed []int) {
	for _, i := range idx {
		if i < 0 || i >= len(s.slots) || s.slots[i].users == 0 {
			continue
		}
		sl := &s.slots[i]
		sl.users--
		if sl.free() {
			sl.path = sl.placeholder
			freed = append(freed, i)
		}
	}
	return freed
}

// count is the number of free slots of a kind.
func (s *driveSlots) count(readOnly bool) int {
	n := 0
	for _, sl := range s.slots {
		if sl.free() && sl.readOnly == readOnly {
			n++
		}
	}
	return n
}

func kind(readOnly bool) string {
	if readOnly {
		return "read-only"
	}
	return "writable"
}

// driveID is the REST API's id of the i-th drive.
func driveID(i int) string { return fmt.Sprintf("disk%d", i) }

// spareImageSize is a writable placeholder's size; like the shared
// read-only one's, any nonzero size serves (a guest that writes to it
// only scribbles on its own sandbox's file).
const spareImageSize = snapcache.PlaceholderSize

// makeSpares makes the placeholders of a pod's spare drives beside a
// first container with used disks: as many as the config asks for and
// the VM's drive limit leaves room for, writable ones last.
func makeSpares(cfg *Config, dir string, used int) ([]disk, error) {
	n := min(cfg.spareDrives(), vmm.MaxDrives-used)
	if n <= 0 {
		return nil, nil
	}
	w := min(cfg.spareWritableDrives(), n)
	shared, err := snapcache.Cache{Dir: cfg.RootDir}.Placeholder()
	if err != nil {
		return nil, err
	}
	spares := make([]disk, 0, n)
	for range n - w {
		spares = append(spares, disk{path: shared, readOnly: true})
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for i := range w {
		p := filepath.Join(dir, fmt.Sprintf("spare%d.img", i))
		if err := sparseFile(p, spareImageSize); err != nil {
			return nil, fmt.Errorf("making a writable placeholder: %w", err)
		}
		spares = append(spares, disk{path: p})
	}
	if err := vmm.CheckDrives(used + len(spares)); err != nil {
		return nil, err
	}
	return spares, nil
}

// sparseFile makes path a new sparse file of size bytes.
func sparseFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// attach puts a later container's disks in the running VM: it claims
// slots, swaps the images in (PATCH /drives/{id}) and has the agent wait
// for each swapped device's new size and drop what it cached of the old
// image, so the container's mounts read the new one. It returns the
// guest's names for the disks and the slots to detach later.
func (m *machine) attach(ctx context.Context, disks []disk) (devs []string, idx []int, err error) {
	m.attachMu.Lock()
	defer m.attachMu.Unlock()
	if m.slots == nil {
		return nil, nil, fmt.Errorf("%w: the VM booted without spare drives", errNoSlots)
	}
	claimed, swap, err := m.slots.claim(disks)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			// Even when ctx ended: the slots must not stay taken.
			if rerr := m.releaseLocked(context.WithoutCancel(ctx), claimed); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}()
	for _, i := range swap {
		path := m.slots.slots[i].path
		st, err := os.Stat(path)
		if err != nil {
			return nil, nil, err
		}
		if err := m.ctl.PatchDrivePath(ctx, driveID(i), path); err != nil {
			return nil, nil, fmt.Errorf("swapping %s into drive %s: %w", path, driveID(i), err)
		}
		size := uint64(st.Size()) &^ (sectorSize - 1)
		if err := m.agent.SyncBlockDevice(ctx, m.deviceOf(i), size); err != nil {
			return nil, nil, fmt.Errorf("drive %s in the guest: %w", driveID(i), err)
		}
	}
	for _, i := range claimed {
		devs = append(devs, m.deviceOf(i))
	}
	return devs, claimed, nil
}

// sectorSize is virtio-blk's unit: the guest sees an image's size
// rounded down to whole sectors.
const sectorSize = 512

// detach gives back a container's slots once nothing in the guest has
// them mounted, swapping the placeholders back into the freed ones so
// the container's images are no longer held open.
func (m *machine) detach(ctx context.Context, idx []int) error {
	m.attachMu.Lock()
	defer m.attachMu.Unlock()
	return m.releaseLocked(ctx, idx)
}

func (m *machine) releaseLocked(ctx context.Context, idx []int) error {
	if m.slots == nil {
		return nil
	}
	var errs []error
	for _, i := range m.slots.release(idx) {
		// A failed swap leaves the old image in the slot, which the next
		// claim replaces anyway.
		if err := m.ctl.PatchDrivePath(ctx, driveID(i), m.slots.slots[i].placeholder); err != nil {
			errs = append(errs, fmt.Errorf("swapping the placeholder back into drive %s: %w", driveID(i), err))
		}
	}
	return errors.Join(errs...)
}

// deviceNames are the guest's names of the first n drives.
func (m *machine) deviceNames(n int) []string {
	devs := make([]string, n)
	for i := range devs {
		devs[i] = m.deviceOf(i)
	}
	return devs
}
