package api

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// SnapshotCreateParams is the body of PUT /snapshot/create.
type SnapshotCreateParams struct {
	SnapshotType *string `json:"snapshot_type,omitempty"`
	SnapshotPath *string `json:"snapshot_path,omitempty"`
	MemFilePath  *string `json:"mem_file_path,omitempty"`
	// Version asked Firecracker 1.0-1.5 for a snapshot an older
	// Firecracker could load; deprecated in 1.5.0 and gone since 1.6.0
	// (the Go SDK v1.0.0 still has it). Refused with that reason.
	Version *string `json:"version,omitempty"`
}

// Snapshot types (snapshot_type).
const (
	SnapshotFull = "Full"
	SnapshotDiff = "Diff"
)

// MemoryBackend is SnapshotLoadParams.MemBackend: where the guest memory
// of a snapshot comes from.
type MemoryBackend struct {
	BackendType *string `json:"backend_type,omitempty"`
	BackendPath *string `json:"backend_path,omitempty"`
}

// Memory backend types (backend_type).
const (
	MemBackendFile = "File"
	MemBackendUffd = "Uffd"
)

// NetworkOverride gives a restored interface another tap.
type NetworkOverride struct {
	IfaceID     *string `json:"iface_id,omitempty"`
	HostDevName *string `json:"host_dev_name,omitempty"`
}

// DriveOverride gives a restored drive another backing file, which must
// have the size the guest was told (as proposed for Firecracker:
// drive_overrides, firecracker-microvm/firecracker#5774). Clones of one
// snapshot each need their own writable disk.
type DriveOverride struct {
	DriveID    *string `json:"drive_id,omitempty"`
	PathOnHost *string `json:"path_on_host,omitempty"`
}

// VsockOverride gives the restored vsock device another Unix socket.
type VsockOverride struct {
	UDSPath *string `json:"uds_path,omitempty"`
}

// SnapshotLoadParams is the body of PUT /snapshot/load.
type SnapshotLoadParams struct {
	SnapshotPath *string        `json:"snapshot_path,omitempty"`
	MemBackend   *MemoryBackend `json:"mem_backend,omitempty"`
	// MemFilePath is the deprecated form of a File MemBackend (the Go SDK
	// v1.0.0 sends it); exactly one of the two must be given.
	MemFilePath *string `json:"mem_file_path,omitempty"`
	// EnableDiffSnapshots is the deprecated name of TrackDirtyPages.
	EnableDiffSnapshots *bool             `json:"enable_diff_snapshots,omitempty"`
	TrackDirtyPages     *bool             `json:"track_dirty_pages,omitempty"`
	ResumeVM            *bool             `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	DriveOverrides      []DriveOverride   `json:"drive_overrides,omitempty"`
	VsockOverride       *VsockOverride    `json:"vsock_override,omitempty"`
	ClockRealtime       *bool             `json:"clock_realtime,omitempty"`
	HugePages           *string           `json:"huge_pages,omitempty"`
}

// deprecated reports whether p uses a deprecated field, for Firecracker's
// Deprecation header.
func (p SnapshotLoadParams) deprecated() bool {
	return p.MemFilePath != nil || deref(p.EnableDiffSnapshots, false)
}

// nonEmptyPath checks a required path field.
func nonEmptyPath(field string, p *string) error {
	if p == nil {
		return missing(field)
	}
	if *p == "" {
		return fmt.Errorf("%s is empty", field)
	}
	return nil
}

// checkSnapshotCreate validates a PUT /snapshot/create body.
func checkSnapshotCreate(p SnapshotCreateParams) error {
	if err := nonEmptyPath("snapshot_path", p.SnapshotPath); err != nil {
		return err
	}
	if err := nonEmptyPath("mem_file_path", p.MemFilePath); err != nil {
		return err
	}
	if *p.SnapshotPath == *p.MemFilePath {
		return fmt.Errorf("snapshot_path and mem_file_path are the same file (%s)", *p.SnapshotPath)
	}
	switch t := deref(p.SnapshotType, SnapshotFull); t {
	case SnapshotFull, SnapshotDiff:
	default:
		return fmt.Errorf("snapshot_type %q is not one of Full, Diff", t)
	}
	if p.Version != nil {
		return errors.New("version: creating a snapshot for another Firecracker version is not supported (Firecracker deprecated the field in v1.5.0 and removed it in v1.6.0)")
	}
	return nil
}

// checkSnapshotLoad validates a PUT /snapshot/load body and returns it as
// a RestoreRequest (without Base) and whether to resume.
func checkSnapshotLoad(p SnapshotLoadParams) (RestoreRequest, bool, error) {
	var req RestoreRequest
	if err := nonEmptyPath("snapshot_path", p.SnapshotPath); err != nil {
		return req, false, err
	}
	req.SnapshotPath = *p.SnapshotPath
	switch {
	case p.MemBackend != nil && p.MemFilePath != nil:
		return req, false, errors.New(`"mem_backend" and "mem_file_path" exclude each other: give only "mem_backend" (mem_file_path is deprecated)`)
	case p.MemBackend == nil && p.MemFilePath == nil:
		return req, false, errors.New(`missing required field: one of "mem_backend" or "mem_file_path"`)
	case p.MemFilePath != nil:
		if err := nonEmptyPath("mem_file_path", p.MemFilePath); err != nil {
			return req, false, err
		}
		req.MemFilePath = *p.MemFilePath
	default:
		b := p.MemBackend
		if b.BackendType == nil {
			return req, false, missing("mem_backend.backend_type")
		}
		switch *b.BackendType {
		case MemBackendFile:
		case MemBackendUffd:
			return req, false, errors.New(`mem_backend.backend_type "Uffd" is not supported (only "File": guest memory is mapped from the file)`)
		default:
			return req, false, fmt.Errorf("mem_backend.backend_type %q is not one of File, Uffd", *b.BackendType)
		}
		if err := nonEmptyPath("mem_backend.backend_path", b.BackendPath); err != nil {
			return req, false, err
		}
		req.MemFilePath = *b.BackendPath
	}
	// Firecracker ORs the deprecated name into the new one.
	req.TrackDirtyPages = deref(p.TrackDirtyPages, false) || deref(p.EnableDiffSnapshots, false)
	if deref(p.ClockRealtime, false) {
		return req, false, errors.New("clock_realtime is not supported (the guest clock resumes from the snapshot's time)")
	}
	if h := deref(p.HugePages, "Snapshot"); h != "Snapshot" && h != "None" {
		if contains(hugePages, h) {
			return req, false, fmt.Errorf(`huge_pages %q is not supported (only "Snapshot" or "None")`, h)
		}
		return req, false, fmt.Errorf("huge_pages %q is not one of Snapshot, None, Transparent, 2M", h)
	}
	// The body size bounds the number of overrides.
	seen := make(map[string]bool, len(p.NetworkOverrides))
	for i, o := range p.NetworkOverrides {
		field := fmt.Sprintf("network_overrides[%d]", i)
		id, err := checkID(field+".iface_id", o.IfaceID, "")
		if err != nil {
			return req, false, err
		}
		if seen[id] {
			return req, false, fmt.Errorf("%s: iface_id %q is overridden twice", field, id)
		}
		seen[id] = true
		if o.HostDevName == nil {
			return req, false, missing(field + ".host_dev_name")
		}
		if err := checkTapName(field+".host_dev_name", *o.HostDevName); err != nil {
			return req, false, err
		}
		req.NetOverrides = append(req.NetOverrides, NetOverride{IfaceID: id, Tap: *o.HostDevName})
	}
	seenDrive := make(map[string]bool, len(p.DriveOverrides))
	for i, o := range p.DriveOverrides {
		field := fmt.Sprintf("drive_overrides[%d]", i)
		id, err := checkID(field+".drive_id", o.DriveID, "")
		if err != nil {
			return req, false, err
		}
		if seenDrive[id] {
			return req, false, fmt.Errorf("%s: drive_id %q is overridden twice", field, id)
		}
		seenDrive[id] = true
		if err := nonEmptyPath(field+".path_on_host", o.PathOnHost); err != nil {
			return req, false, err
		}
		req.DriveOverrides = append(req.DriveOverrides, DriveOverrideRequest{DriveID: id, Path: *o.PathOnHost})
	}
	if v := p.VsockOverride; v != nil {
		if err := nonEmptyPath("vsock_override.uds_path", v.UDSPath); err != nil {
			return req, false, err
		}
		req.VsockUDSPath = *v.UDSPath
	}
	return req, deref(p.ResumeVM, false), nil
}

// CreateSnapshot is PUT /snapshot/create: write the paused machine's state
// and memory, all of it (Full) or the pages written since the last
// snapshot (Diff, for a machine started or restored with
// track_dirty_pages).
func (c *Controller) CreateSnapshot(p SnapshotCreateParams) error {
	if err := checkSnapshotCreate(p); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.runningLocked(); err != nil {
		return err
	}
	if !c.paused {
		return errors.New(`the microVM must be paused to create a snapshot (PATCH /vm {"state": "Paused"} first)`)
	}
	s, ok := c.machine.(Snapshotter)
	if !ok {
		return errors.New("creating snapshots is not supported by this machine")
	}
	write, latency := s.Snapshot, &c.latency.FullCreateSnapshot
	kind := deref(p.SnapshotType, SnapshotFull)
	if kind == SnapshotDiff {
		if !c.cfg.TrackDirtyPages {
			return errors.New(`snapshot_type "Diff" needs dirty page tracking: start the microVM with "track_dirty_pages": true in PUT /machine-config, or load its snapshot with it`)
		}
		d, ok := c.machine.(DiffSnapshotter)
		if !ok {
			return errors.New(`snapshot_type "Diff" is not supported by this machine`)
		}
		write, latency = d.SnapshotDiff, &c.latency.DiffCreateSnapshot
	}
	start := time.Now()
	if err := write(*p.SnapshotPath, *p.MemFilePath); err != nil {
		return fmt.Errorf("cannot create the snapshot: %w", err)
	}
	*latency = uint64(time.Since(start).Microseconds())
	c.log.Info("snapshot created", "snapshot_type", kind, "snapshot_path", *p.SnapshotPath, "mem_file_path", *p.MemFilePath, "us", *latency)
	return nil
}

// LoadSnapshot is PUT /snapshot/load: build the machine from a snapshot
// instead of InstanceStart. It is Paused afterwards, or Running with
// resume_vm. On failure the instance stays "Not started" and another load
// may follow.
func (c *Controller) LoadSnapshot(p SnapshotLoadParams) error {
	req, resume, err := checkSnapshotLoad(p)
	if err != nil {
		return err
	}
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.halting {
		return errors.New("the VMM is shutting down")
	}
	if c.configured != "" {
		return fmt.Errorf("load snapshot is only allowed before any other configuration except the logger and metrics (%s is already configured)", c.configured)
	}
	if err := checkReadableFile("snapshot_path", req.SnapshotPath, false); err != nil {
		return err
	}
	memField := "mem_backend.backend_path"
	if p.MemFilePath != nil {
		memField = "mem_file_path"
	}
	if err := checkReadableFile(memField, req.MemFilePath, false); err != nil {
		return err
	}
	for i, o := range req.DriveOverrides {
		if err := checkReadableFile(fmt.Sprintf("drive_overrides[%d].path_on_host", i), o.Path, false); err != nil {
			return err
		}
	}
	req.Base = c.cfg
	req.Base.Kernel, req.Base.Initrd, req.Base.Cmdline = "", "", ""
	req.Base.CPUs, req.Base.MemSize = 0, 0
	req.Base.Drives, req.Base.Nets, req.Base.Vsock, req.Base.Entropy = nil, nil, nil, nil

	start := time.Now()
	m, cfg, err := c.opts.Restore(req, c.log)
	if err != nil {
		return fmt.Errorf("cannot load the snapshot: %w", err)
	}
	if resume {
		if err := m.Resume(); err != nil {
			if cerr := m.Close(); cerr != nil {
				c.log.Warn("closing the restored machine", "err", cerr)
			}
			return fmt.Errorf("the snapshot loaded but the microVM could not be resumed, and was released: %w", err)
		}
	}
	c.cfg = cfg
	c.adoptDevices(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	c.machine, c.cancel, c.phase, c.paused = m, cancel, running, !resume
	c.latency.LoadSnapshot = uint64(time.Since(start).Microseconds())
	c.log.Info("microVM restored", "id", c.opts.ID, "snapshot_path", req.SnapshotPath, "vcpus", cfg.CPUs,
		"mem_mib", cfg.MemSize>>20, "state", c.stateLocked(), "us", c.latency.LoadSnapshot)
	go c.run(ctx, m)
	return nil
}
