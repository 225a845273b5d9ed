package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/govmm/vmm/boot"
	"github.com/govmm/vmm/devices/i8042"
	"github.com/govmm/vmm/devices/rtc"
	"github.com/govmm/vmm/devices/serial"
	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/snapshot"
)

// Version is the VMM's version: the API reports it (GET /version) and
// snapshots record it.
const Version = "0.1.0"

// machineStateVersion is the version of machineState this code writes and
// restores, within the file format's own version (snapshot.FormatVersion).
const machineStateVersion = 1

// ErrNotPaused is returned by Snapshot on a machine that is not paused.
var ErrNotPaused = errors.New("the microVM must be paused before a snapshot is taken")

// machineState is a snapshot's state file: everything but guest RAM,
// which is in the memory file, RAM's regions back to back
// (memory.Guest.Dump).
type machineState struct {
	Version int
	Config  savedConfig
	// PVM: the guest was booted for a kvm-pvm host (its command line, its
	// CPUID), and needs one to run on.
	PVM bool
	// HostBootID is the host's boot (/proc/sys/kernel/random/boot_id)
	// when PVM: kvm-pvm gives guests the host's TSC, with no offset, so
	// the saved TSC and TSC deadline mean something only until the host
	// reboots.
	HostBootID string `json:",omitempty"`
	VM         kvm.VMState
	VCPUs      []kvm.VCPUState
	Legacy     legacyState
	PCI        *pciSnapshot `json:",omitempty"`
}

// savedConfig is the part of Config a restore needs and GET /vm/config
// reports; the host side of each device (image path, tap, socket) is the
// one in use when the snapshot was taken.
type savedConfig struct {
	Kernel, Initrd, Cmdline, SystemMap string
	MemSize                            uint64
	CPUs                               int
	Drives                             []DriveConfig
	Nets                               []NetConfig
	Vsock                              *VsockConfig
	Entropy                            *EntropyConfig
	DebugExit                          bool
}

// legacyState is the platform devices on I/O ports. The ACPI PM device
// has no state (package acpipm).
type legacyState struct {
	UART  serial.State
	RTC   rtc.State
	I8042 i8042.State
}

// ErrNoDirtyTracking is returned by SnapshotDiff on a machine started (or
// restored) without TrackDirtyPages.
var ErrNoDirtyTracking = errors.New("a diff snapshot needs dirty page tracking, which this microVM was started without (track_dirty_pages)")

// Snapshot saves the paused machine: guest RAM to memPath, everything else
// to statePath (package snapshot's format), as Firecracker's PUT
// /snapshot/create with snapshot_type Full. Devices stop while it runs (no
// DMA into RAM being saved) and start again after; vsock connections are
// reset first, as with Firecracker. The state file is written last and
// atomically: when it exists, the snapshot is complete. The machine stays
// paused. With TrackDirtyPages, the record of written pages restarts: the
// next SnapshotDiff holds what changes from here.
func (m *Machine) Snapshot(statePath, memPath string) error {
	return m.snapshot(statePath, memPath, false)
}

// SnapshotDiff is Snapshot with snapshot_type Diff: the memory file holds
// only the pages written since the machine's last snapshot (or its start
// or restore), the rest being holes, at a full memory file's size. It is
// restored after merging it onto the memory file of the snapshot before it
// (snapshot.Rebase, Firecracker's rebase-snap), which then restores with
// this state file; restoring the diff alone would give the guest zeros for
// every page it didn't write. The machine must track dirty pages
// (Config.TrackDirtyPages, RestoreConfig.TrackDirtyPages), or
// ErrNoDirtyTracking.
func (m *Machine) SnapshotDiff(statePath, memPath string) error {
	return m.snapshot(statePath, memPath, true)
}

func (m *Machine) snapshot(statePath, memPath string, diff bool) (err error) {
	if diff && !m.cfg.TrackDirtyPages {
		return ErrNoDirtyTracking
	}
	if !m.Paused() {
		return ErrNotPaused
	}
	if statePath == "" || memPath == "" {
		return errors.New("snapshot: both a state file and a memory file are needed")
	}
	// Clean, not Abs: Abs may ask the kernel for the working directory,
	// which the seccomp filter does not allow.
	if filepath.Clean(statePath) == filepath.Clean(memPath) {
		return fmt.Errorf("snapshot: the state file and the memory file are both %s", statePath)
	}
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	start := time.Now()
	resume, err := m.pausePCI()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		if rerr := resume(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("snapshot: restarting devices: %w", rerr))
		}
	}()
	st, err := m.saveState()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	// Every snapshot restarts the record, so the next diff is relative to
	// this one. A snapshot that fails gives it back: the next diff would
	// otherwise miss pages no snapshot holds.
	dirty, err := m.takeDirty()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if dirty != nil {
		if err := m.markUsedRings(dirty, st.PCI); err != nil {
			m.mem.MarkDirty(dirty)
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	defer func() {
		if err != nil && dirty != nil {
			m.mem.MarkDirty(dirty)
		}
	}()
	// An earlier snapshot's state file at statePath goes first: if this
	// one fails after its memory file replaced the earlier one, no state
	// file is left to pair with memory that is not its own.
	if err := os.Remove(statePath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshot: replacing %s: %w", statePath, err)
	}
	dump := m.mem.Dump
	if diff {
		dump = func(f *os.File) error { return m.mem.DumpDirty(f, dirty) }
	}
	if err := m.dumpMemory(memPath, dump); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	meta, err := m.snapshotMeta(st)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := snapshot.Write(statePath, meta, st); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	kind := "Full"
	if diff {
		kind = "Diff"
	}
	m.log.Info("snapshot taken", "type", kind, "state", statePath, "memory", memPath, "took", time.Since(start).Round(time.Microsecond))
	return nil
}

// takeDirty returns, and clears, the pages written since the last call:
// KVM's dirty log of each slot (the guest's writes) joined with guest
// memory's record (the devices'), one bitmap per region (slot i is region
// i, as mapMemory sets them). Nil when the machine doesn't track. The
// vCPUs are parked and the devices paused, so nothing is written meanwhile.
func (m *Machine) takeDirty() ([][]uint64, error) {
	if !m.cfg.TrackDirtyPages {
		return nil, nil
	}
	dirty := m.mem.TakeDirty()
	if dirty == nil {
		return nil, errors.New("guest memory does not track dirty pages")
	}
	page := os.Getpagesize()
	for i, r := range m.mem.Regions() {
		bm, err := m.vm.DirtyLog(uint32(i), len(r.Host)/page)
		if err != nil {
			// What the devices wrote is still to be saved.
			m.mem.MarkDirty(dirty)
			return nil, err
		}
		if err := orBitmap(dirty[i], bm); err != nil {
			m.mem.MarkDirty(dirty)
			return nil, fmt.Errorf("KVM's dirty log of slot %d: %w", i, err)
		}
	}
	return dirty, nil
}

// usedRingSize is the size of a split virtqueue's used ring (the device
// area) of n entries: flags, idx, n used elements of 8 bytes, avail_event
// (virtio 1.2 §2.7.8).
func usedRingSize(n uint16) uint64 { return 2 + 2 + 8*uint64(n) + 2 }

// markUsedRings adds every enabled virtqueue's used ring to dirty. The
// transport writes it through a slice it mapped when the driver enabled
// the queue, which neither KVM nor guest memory's record sees, so a diff
// holds it every time (a few pages per queue).
func (m *Machine) markUsedRings(dirty [][]uint64, st *pciSnapshot) error {
	if st == nil {
		return nil
	}
	for _, f := range st.Functions {
		for i, q := range f.Transport.Queues {
			if !q.Enabled || q.Size == 0 {
				continue
			}
			err := m.mem.SetDirtyRange(dirty, q.DeviceAddr, usedRingSize(q.Size))
			if errors.Is(err, memory.ErrOutOfRange) {
				continue // never mapped, so never written: the queue failed to start
			}
			if err != nil {
				return fmt.Errorf("%s %s queue %d: used ring: %w", f.Kind, f.ID, i, err)
			}
		}
	}
	return nil
}

// orBitmap adds src's bits to dst; both cover the same pages.
func orBitmap(dst, src []uint64) error {
	if len(dst) != len(src) {
		return fmt.Errorf("%d words, want %d", len(src), len(dst))
	}
	for w := range dst {
		dst[w] |= src[w]
	}
	return nil
}

// saveState collects the state of KVM's VM and vCPUs and of every device.
// The vCPUs are parked (settled between instructions), the devices paused.
func (m *Machine) saveState() (*machineState, error) {
	st := &machineState{Version: machineStateVersion, PVM: m.pvm, HostBootID: hostBootID(m.pvm), Config: savedConfig{
		Kernel: m.cfg.Kernel, Initrd: m.cfg.Initrd, Cmdline: m.cfg.Cmdline, SystemMap: m.cfg.SystemMap,
		MemSize: m.cfg.MemSize, CPUs: m.cfg.CPUs,
		Drives: slices.Clone(m.cfg.Drives), Nets: slices.Clone(m.cfg.Nets), Vsock: m.cfg.Vsock, Entropy: m.cfg.Entropy,
		DebugExit: m.cfg.DebugExit,
	}}
	var err error
	if st.VM, err = m.vm.SaveState(); err != nil {
		return nil, err
	}
	msrs, err := m.sys.MSRsToSave()
	if err != nil {
		return nil, err
	}
	for _, v := range m.vcpus {
		vs, err := v.kvm.SaveState(msrs)
		if err != nil {
			return nil, err
		}
		st.VCPUs = append(st.VCPUs, vs)
	}
	st.Legacy = legacyState{UART: m.uart.State(), RTC: m.rtc.State(), I8042: m.kbd.State()}
	if st.PCI, err = m.savePCI(); err != nil {
		return nil, err
	}
	// A drive swapped after boot (PATCH /drives) is restored from the
	// image in service, and reported so.
	if st.PCI != nil {
		for i, d := range st.Config.Drives {
			for _, f := range st.PCI.Functions {
				if f.Blk != nil && f.Blk.ID == driveID(i, d) {
					st.Config.Drives[i].Path = f.Blk.Path
				}
			}
		}
	}
	return st, nil
}

// driveID is the id openDrives gives the i-th drive.
func driveID(i int, d DriveConfig) string {
	if d.ID != "" {
		return d.ID
	}
	return fmt.Sprintf("drive%d", i)
}

// dumpMemory writes guest RAM to path with dump (a full or a diff memory
// file) through a temporary file renamed into place, so a failed snapshot
// leaves any earlier file at path whole.
func (m *Machine) dumpMemory(path string, dump func(*os.File) error) error {
	if err := snapshot.WriteFileAtomic(path, dump); err != nil {
		return fmt.Errorf("memory file %s: %w", path, err)
	}
	return nil
}

// hostCPU describes this host for snapshot compatibility: the vendor and
// the CPUID features KVM can give a guest.
func hostCPU(sys *kvm.System) (snapshot.Host, error) {
	supported, err := sys.SupportedCPUID()
	if err != nil {
		return snapshot.Host{}, err
	}
	return snapshot.NewHost(Version, cpuidEntries(supported)), nil
}

// cpuidEntries converts KVM's CPUID entries for package snapshot.
func cpuidEntries(c kvm.CPUID) []snapshot.CPUIDEntry {
	out := make([]snapshot.CPUIDEntry, 0, len(c))
	for _, e := range c {
		out = append(out, snapshot.CPUIDEntry{Function: e.Function, Index: e.Index, EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX})
	}
	return out
}

// snapshotMeta describes st for the file's header: the guest's CPU as its
// boot processor was given it.
func (m *Machine) snapshotMeta(st *machineState) (snapshot.Meta, error) {
	if len(st.VCPUs) == 0 {
		return snapshot.Meta{}, errors.New("no vCPU state")
	}
	guest := cpuidEntries(st.VCPUs[0].CPUID)
	return snapshot.Meta{
		VMMVersion:  Version,
		CPUVendor:   snapshot.VendorFromCPUID(guest),
		CPUFeatures: snapshot.FeaturesFromCPUID(guest),
		MemSize:     m.cfg.MemSize,
	}, nil
}

// RestoreConfig says which snapshot to restore and what a restore changes:
// Firecracker's PUT /snapshot/load.
type RestoreConfig struct {
	StatePath string // snapshot_path
	MemPath   string // mem_backend.backend_path (File)
	// NetTaps gives interfaces, by id, another host tap
	// (network_overrides).
	NetTaps map[string]string
	// VsockUDS, when set, is the vsock device's new Unix socket
	// (vsock_override).
	VsockUDS string
	// DrivePaths gives drives, by id, another backing file
	// (drive_overrides), which must have the size the guest was told.
	DrivePaths map[string]string
	// TrackDirtyPages records the pages written from the restore on, for
	// SnapshotDiff (track_dirty_pages), as Config.TrackDirtyPages.
	TrackDirtyPages bool
	// Host has the settings a snapshot can't carry, used as in Config:
	// ConsoleOut, ConsoleIn, SampleRIP, HostQuirks, OnFirstRun, and
	// SystemMap when the snapshot names none. The rest of it is ignored.
	Host Config
}

// Restore builds a machine from a snapshot: the VM, vCPUs and devices in
// their saved state, guest RAM mapped from the memory file copy-on-write
// (MAP_PRIVATE: pages load when the guest touches them, the file never
// changes, and clones of one snapshot share its unchanged pages through the
// page cache). Nothing runs until Run, and the vCPUs stay parked until
// Resume, which may come before Run. A snapshot that is not one, is damaged, comes from another
// format version or another CPU, or doesn't match its memory file, is
// refused before anything is created.
func Restore(rc RestoreConfig, log *slog.Logger) (m *Machine, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	// The file's own checks first: a damaged or foreign file is refused
	// for what it is, on any host.
	if _, err := snapshot.ReadMeta(rc.StatePath); err != nil {
		return nil, err
	}
	memFile, err := os.Open(rc.MemPath)
	if err != nil {
		return nil, fmt.Errorf("memory file: %w", err)
	}
	defer memFile.Close()

	built := newMachine(Config{}, log)
	m = built
	defer func() {
		if err != nil {
			built.Close()
		}
	}()
	if m.sys, err = kvm.Open(); err != nil {
		return nil, err
	}
	host, err := hostCPU(m.sys)
	if err != nil {
		return nil, err
	}
	var st machineState
	if _, err = snapshot.Read(rc.StatePath, host, &st); err != nil {
		return nil, err
	}
	if m.cfg, err = st.config(rc); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", rc.StatePath, err)
	}
	cfg := m.cfg
	if cfg.HostQuirks != nil {
		m.pvm = *cfg.HostQuirks
	}
	if m.pvm != st.PVM {
		return nil, fmt.Errorf("snapshot %s: %w: taken on a %s host, this one is %s", rc.StatePath, snapshot.ErrIncompatible, hostKind(st.PVM), hostKind(m.pvm))
	}
	if boot := hostBootID(m.pvm); boot != st.HostBootID {
		return nil, fmt.Errorf("snapshot %s: %w: taken before this kvm-pvm host last booted (guests here run on the host's TSC, which restarted)", rc.StatePath, snapshot.ErrIncompatible)
	}
	m.pause.startPaused = true
	if err = m.createVM(); err != nil {
		return nil, err
	}
	mem, err := memory.NewFromFile(boot.MemoryLayout(cfg.MemSize), memFile, memory.Options{TrackDirty: cfg.TrackDirtyPages})
	if err != nil {
		return nil, fmt.Errorf("memory file %s: %w", rc.MemPath, err)
	}
	if err = m.mapMemory(mem); err != nil {
		return nil, err
	}
	if err = m.createVCPUs(); err != nil {
		return nil, err
	}
	// Firecracker's order: each vCPU (kvm.VCPU.RestoreState keeps KVM's
	// order within one), then the VM's timer, clock and interrupt
	// controllers, so the interrupts KVM_SET_IRQCHIP re-injects and the
	// PIT's first ticks reach restored LAPICs, not ones still in reset.
	for i, v := range m.vcpus {
		if err = v.kvm.RestoreState(st.VCPUs[i]); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	// The guest's clock carries on from where it was saved, as
	// Firecracker's default (clock_realtime false): a guest that slept in
	// a snapshot for an hour sees no hour pass, and whoever wakes it sets
	// its wall clock (the agent does for vmm run). On kvm-pvm hosts the
	// guest's TSC is the host's, so a TSC-clocked guest sees the time it
	// slept anyway.
	st.VM.Clock.Flags &^= kvm.ClockRealtime
	if err = m.vm.RestoreState(st.VM); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err = m.setupDevices(); err != nil {
		return nil, err
	}
	if err = m.restoreLegacy(st.Legacy); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err = m.restorePCI(st.PCI); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	m.syms = loadSymbols(cfg.SystemMap, cfg.Kernel, log)
	m.startConsole()
	log.Info("snapshot restored", "state", rc.StatePath, "memory", rc.MemPath, "took", time.Since(start).Round(time.Microsecond))
	return m, nil
}

// hostBootID identifies the host's current boot on kvm-pvm hosts, "" on
// others (and where the kernel doesn't say).
func hostBootID(pvm bool) string {
	if !pvm {
		return ""
	}
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func hostKind(pvm bool) string {
	if pvm {
		return "kvm-pvm"
	}
	return "VT-x/AMD-V"
}

// config is the Config of the machine st describes, with rc's overrides.
func (st *machineState) config(rc RestoreConfig) (Config, error) {
	if st.Version != machineStateVersion {
		return Config{}, fmt.Errorf("machine state version %d, this build restores %d", st.Version, machineStateVersion)
	}
	s := st.Config
	if len(st.VCPUs) != s.CPUs {
		return Config{}, fmt.Errorf("%d vCPU states for %d vCPUs", len(st.VCPUs), s.CPUs)
	}
	cfg := Config{
		Kernel: s.Kernel, Initrd: s.Initrd, Cmdline: s.Cmdline, SystemMap: s.SystemMap,
		MemSize: s.MemSize, CPUs: s.CPUs,
		Drives: slices.Clone(s.Drives), Nets: slices.Clone(s.Nets), Entropy: s.Entropy, DebugExit: s.DebugExit,
		ConsoleOut: rc.Host.ConsoleOut, ConsoleIn: rc.Host.ConsoleIn, HostQuirks: rc.Host.HostQuirks,
		OnFirstRun: rc.Host.OnFirstRun, SampleRIP: rc.Host.SampleRIP,
		TrackDirtyPages: rc.TrackDirtyPages,
	}
	if cfg.SystemMap == "" {
		cfg.SystemMap = rc.Host.SystemMap
	}
	for id, tap := range rc.NetTaps {
		i := slices.IndexFunc(cfg.Nets, func(n NetConfig) bool { return n.ID == id })
		if i < 0 {
			return Config{}, fmt.Errorf("network override for interface %q, which the snapshot does not have", id)
		}
		cfg.Nets[i].Tap = tap
	}
	for id, path := range rc.DrivePaths {
		i := slices.IndexFunc(cfg.Drives, func(d DriveConfig) bool { return d.ID == id })
		if i < 0 {
			// Unnamed drives get their id from their position.
			for j, d := range cfg.Drives {
				if d.ID == "" && driveID(j, d) == id {
					i = j
				}
			}
		}
		if i < 0 {
			return Config{}, fmt.Errorf("drive override for drive %q, which the snapshot does not have", id)
		}
		cfg.Drives[i].Path = path
	}
	if s.Vsock != nil {
		v := *s.Vsock
		if rc.VsockUDS != "" {
			v.UDSPath = rc.VsockUDS
		}
		cfg.Vsock = &v
	} else if rc.VsockUDS != "" {
		return Config{}, errors.New("vsock override, but the snapshot has no vsock device")
	}
	if err := cfg.validateRestored(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// validateRestored checks what Validate checks but the kernel, which a
// restore doesn't read.
func (c *Config) validateRestored() error {
	k := *c
	if k.Kernel == "" {
		k.Kernel = "(restored)"
	}
	return k.Validate()
}

// restoreLegacy puts the platform devices back as saved.
func (m *Machine) restoreLegacy(s legacyState) error {
	return errors.Join(m.uart.Restore(s.UART), m.rtc.Restore(s.RTC), m.kbd.Restore(s.I8042))
}

// Config returns the machine's configuration: for a restored machine, the
// snapshot's with the restore's overrides.
func (m *Machine) Config() Config { return m.cfg }
