package api

// The request and response bodies of Firecracker's API (swagger file
// src/firecracker/swagger/firecracker.yaml), under the same JSON names.
// Optional fields are pointers so "absent" and "zero" stay distinct, and so
// required fields can be reported by name when missing.

// InstanceInfo is the body of GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// Instance states reported in InstanceInfo.State.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
	// StateExited is ours: the guest has ended and the process is about to
	// exit. Firecracker has no such state because it exits at once.
	StateExited = "Exited"
)

// Version is the body of GET /version.
type Version struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// MachineConfig is the body of PUT and PATCH /machine-config (all fields
// optional for PATCH) and of GET /machine-config.
type MachineConfig struct {
	VCPUCount       *int64  `json:"vcpu_count,omitempty"`
	MemSizeMiB      *int64  `json:"mem_size_mib,omitempty"`
	SMT             *bool   `json:"smt,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	HugePages       *string `json:"huge_pages,omitempty"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath *string `json:"kernel_image_path,omitempty"`
	InitrdPath      *string `json:"initrd_path,omitempty"`
	BootArgs        *string `json:"boot_args,omitempty"`
}

// TokenBucket is one of a RateLimiter's buckets.
type TokenBucket struct {
	Size         *int64 `json:"size,omitempty"`
	RefillTime   *int64 `json:"refill_time,omitempty"`
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
}

// RateLimiter limits a device's bandwidth and operations.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id} (and, with only DriveID,
// PathOnHost and RateLimiter allowed, of PATCH).
type Drive struct {
	DriveID      *string      `json:"drive_id,omitempty"`
	PathOnHost   *string      `json:"path_on_host,omitempty"`
	IsRootDevice *bool        `json:"is_root_device,omitempty"`
	IsReadOnly   *bool        `json:"is_read_only,omitempty"`
	PartUUID     *string      `json:"partuuid,omitempty"`
	CacheType    *string      `json:"cache_type,omitempty"`
	IOEngine     *string      `json:"io_engine,omitempty"`
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
	Socket       *string      `json:"socket,omitempty"`
	// Direct carries vmm.DriveConfig.Direct (O_DIRECT) for a drive
	// configured on the command line; Firecracker's API has no direct-I/O
	// setting (cache_type is about honouring flushes), so a drive PUT
	// through the API uses the host page cache.
	Direct bool `json:"-"`
}

// PartialDrive is the body of PATCH /drives/{drive_id}.
type PartialDrive struct {
	DriveID     *string      `json:"drive_id,omitempty"`
	PathOnHost  *string      `json:"path_on_host,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID       *string      `json:"iface_id,omitempty"`
	HostDevName   *string      `json:"host_dev_name,omitempty"`
	GuestMAC      *string      `json:"guest_mac,omitempty"`
	MTU           *int64       `json:"mtu,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
	// Queues carries vmm.NetConfig.Queues for an interface configured on
	// the command line; Firecracker's API has no queue count, so an
	// interface PUT through the API has one queue pair.
	Queues int `json:"-"`
}

// PartialNetworkInterface is the body of PATCH /network-interfaces/{iface_id}.
type PartialNetworkInterface struct {
	IfaceID       *string      `json:"iface_id,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Vsock is the body of PUT /vsock.
type Vsock struct {
	GuestCID *int64  `json:"guest_cid,omitempty"`
	UDSPath  *string `json:"uds_path,omitempty"`
	// VsockID is deprecated in Firecracker and ignored there; clients such
	// as the Go SDK and Kata still send it.
	VsockID *string `json:"vsock_id,omitempty"`
}

// Logger is the body of PUT /logger.
type Logger struct {
	LogPath       *string `json:"log_path,omitempty"`
	Level         *string `json:"level,omitempty"`
	ShowLevel     *bool   `json:"show_level,omitempty"`
	ShowLogOrigin *bool   `json:"show_log_origin,omitempty"`
	Module        *string `json:"module,omitempty"`
}

// Metrics is the body of PUT /metrics.
type Metrics struct {
	MetricsPath *string           `json:"metrics_path,omitempty"`
	EmitID      *bool             `json:"emit_id,omitempty"`
	Properties  map[string]string `json:"properties,omitempty"`
}

// Action is the body of PUT /actions.
type Action struct {
	ActionType *string `json:"action_type,omitempty"`
}

// Actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// VM is the body of PATCH /vm.
type VM struct {
	State *string `json:"state,omitempty"`
}

// VM states accepted by PATCH /vm.
const (
	VMPaused  = "Paused"
	VMResumed = "Resumed"
)

// Fault is the body of every error response.
type Fault struct {
	FaultMessage string `json:"fault_message"`
}

// FullConfig is Firecracker's --config-file schema and the body of GET
// /vm/config. The sections Firecracker has and this VMM does not implement
// are accepted only when absent or null, so a config that relies on them
// fails loudly instead of booting a different machine.
type FullConfig struct {
	BootSource        *BootSource        `json:"boot-source,omitempty"`
	MachineConfig     *MachineConfig     `json:"machine-config,omitempty"`
	Drives            []Drive            `json:"drives"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces"`
	Vsock             *Vsock             `json:"vsock,omitempty"`
	Entropy           *Entropy           `json:"entropy,omitempty"`
	Logger            *Logger            `json:"logger,omitempty"`
	Metrics           *Metrics           `json:"metrics,omitempty"`

	Unsupported
}

// Unsupported holds the config-file sections Firecracker accepts that this
// VMM does not implement.
type Unsupported struct {
	Balloon       any `json:"balloon,omitempty"`
	CPUConfig     any `json:"cpu-config,omitempty"`
	MMDSConfig    any `json:"mmds-config,omitempty"`
	Pmem          any `json:"pmem,omitempty"`
	Serial        any `json:"serial,omitempty"`
	MemoryHotplug any `json:"memory-hotplug,omitempty"`
}
