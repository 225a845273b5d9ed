package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Request is the payload of a FrameRequest.
type Request struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
}

// Response is the payload of a FrameResponse: exactly one of Result and
// Error is set.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error codes carried in Error.Code.
const (
	CodeInvalidArgument    = "invalid_argument"    // the request is malformed or a field is out of range
	CodeNotFound           = "not_found"           // no such container or process
	CodeAlreadyExists      = "already_exists"      // the id or stream is taken
	CodeFailedPrecondition = "failed_precondition" // wrong state (e.g. exec before start, Hello missing)
	CodeUnimplemented      = "unimplemented"       // unknown method
	CodeVersion            = "version_mismatch"    // Hello with an unsupported version
	CodeInternal           = "internal"            // the agent failed (mount, clone, ...)
	CodeUnavailable        = "unavailable"         // the connection is gone
	CodeResourceExhausted  = "resource_exhausted"  // too many requests in flight on the connection; retry later
)

// Error is a failed call. It is both the wire form and a Go error.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return fmt.Sprintf("agent: %s: %s", e.Code, e.Message) }

// Errorf makes an *Error with the given code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// IsCode reports whether err is (or wraps) an *Error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Method names.
const (
	MethodHello            = "Hello"
	MethodPing             = "Ping"
	MethodVersion          = "Version"
	MethodCreateContainer  = "CreateContainer"
	MethodStartProcess     = "StartProcess"
	MethodExecProcess      = "ExecProcess"
	MethodSignal           = "Signal"
	MethodWait             = "Wait"
	MethodCloseStdin       = "CloseStdin"
	MethodResizeTTY        = "ResizeTTY"
	MethodDestroyContainer = "DestroyContainer"
	MethodUpdateContainer  = "UpdateContainer"
	MethodContainerStats   = "ContainerStats"
	MethodRefresh          = "Refresh"
	MethodSyncBlockDevice  = "SyncBlockDevice"
)

// InitExecID names a container's init process (the one StartProcess
// starts) in Signal, Wait, CloseStdin and ResizeTTY.
const InitExecID = "init"

// HelloRequest opens every connection.
type HelloRequest struct {
	Version int    `json:"version"`
	Client  string `json:"client,omitempty"`
}

// HelloResponse answers HelloRequest with the agent's version.
type HelloResponse struct {
	Version int    `json:"version"`
	Agent   string `json:"agent"`
}

// VersionResponse answers Version.
type VersionResponse struct {
	ProtocolVersion int    `json:"protocol_version"`
	Agent           string `json:"agent"`
	Kernel          string `json:"kernel,omitempty"`
}

// Empty is the params or result of calls that carry none.
type Empty struct{}

// Rootfs says where a container's root filesystem comes from.
type Rootfs struct {
	// Source is a block device (e.g. /dev/vda) or, with Type "bind", a
	// directory in the agent's filesystem.
	Source string `json:"source"`
	// Type is a filesystem type to mount Source as ("ext4"), or "bind".
	Type string `json:"type"`
	// ReadOnly makes the container's root read-only.
	ReadOnly bool `json:"readonly,omitempty"`
	// Layers, when set, are read-only block devices (Type filesystems,
	// the topmost first) that overlayfs stacks under Source: Source is
	// then the container's writable disk, holding the overlay's upper/
	// and work/ directories, and the container's writes never reach a
	// layer, which other containers and VMs share. Not with Overlay.
	Layers []string `json:"layers,omitempty"`
	// Overlay leaves Source untouched and still gives the container a
	// writable root: Source is mounted read-only as the lower layer of an
	// overlay filesystem whose upper layer is a tmpfs private to the
	// container. What the container writes lives in guest memory (bounded
	// by the tmpfs's default size, half of it, and by the container's
	// memory limit, which is charged for it) and is gone when the
	// container is. This is how a disk the VMM attached read-only serves
	// as a root. Not with ReadOnly or Layers.
	Overlay bool `json:"overlay,omitempty"`
}

// MaxLayers bounds Rootfs.Layers: a VM has at most 26 disks.
const MaxLayers = 24

// Resources are cgroup limits. Zero means unlimited.
type Resources struct {
	MemoryMaxBytes int64 `json:"memory_max_bytes,omitempty"`
	// CPUQuotaMicros per CPUPeriodMicros (default 100000) of CPU time.
	CPUQuotaMicros  int64 `json:"cpu_quota_us,omitempty"`
	CPUPeriodMicros int64 `json:"cpu_period_us,omitempty"`
}

// CreateContainerRequest prepares a container: its cgroup and settings.
// Nothing runs until StartProcess.
type CreateContainerRequest struct {
	ID        string    `json:"id"`
	Rootfs    Rootfs    `json:"rootfs"`
	Hostname  string    `json:"hostname,omitempty"`
	Resources Resources `json:"resources,omitempty"`
}

// CreateContainerResponse names the cgroup the agent made.
type CreateContainerResponse struct {
	Cgroup string `json:"cgroup"`
}

// Process describes a program to run in a container.
type Process struct {
	Args []string `json:"args"`
	Env  []string `json:"env,omitempty"`
	Cwd  string   `json:"cwd,omitempty"` // default /
	UID  uint32   `json:"uid,omitempty"`
	GID  uint32   `json:"gid,omitempty"`
	// AdditionalGIDs are the supplementary groups (default none).
	AdditionalGIDs []uint32 `json:"additional_gids,omitempty"`

	// Terminal asks for a pseudo-terminal as stdin, stdout and stderr;
	// its output comes on StdoutStream and StderrStream must be 0.
	Terminal bool   `json:"terminal,omitempty"`
	Rows     uint16 `json:"rows,omitempty"`
	Cols     uint16 `json:"cols,omitempty"`

	// Stream ids (chosen by the client, unique on the connection; 0
	// means /dev/null). Output streams must be registered by the client
	// before the call, since output may arrive before the response.
	StdinStream  uint32 `json:"stdin_stream,omitempty"`
	StdoutStream uint32 `json:"stdout_stream,omitempty"`
	StderrStream uint32 `json:"stderr_stream,omitempty"`
}

// StartProcessRequest starts a container's init process in new mount,
// PID, UTS and IPC namespaces.
type StartProcessRequest struct {
	ContainerID string  `json:"container_id"`
	Process     Process `json:"process"`
}

// ExecProcessRequest starts another process in a running container's
// namespaces and cgroup.
type ExecProcessRequest struct {
	ContainerID string  `json:"container_id"`
	ExecID      string  `json:"exec_id"`
	Process     Process `json:"process"`
}

// ProcessResponse answers StartProcess and ExecProcess.
type ProcessResponse struct {
	// PID in the agent's PID namespace.
	PID int `json:"pid"`
}

// ProcessRef names a process: ExecID is InitExecID for the init process.
type ProcessRef struct {
	ContainerID string `json:"container_id"`
	ExecID      string `json:"exec_id"`
}

// SignalRequest sends Signal (a Linux signal number) to a process.
type SignalRequest struct {
	ProcessRef
	Signal int `json:"signal"`
}

// ResizeTTYRequest changes a terminal's window size.
type ResizeTTYRequest struct {
	ProcessRef
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExitStatus answers Wait once the process has exited and its stdout and
// stderr streams have been closed.
type ExitStatus struct {
	// Code is the exit code, or 128+Signal when a signal killed it.
	Code int `json:"code"`
	// Signal is the signal that killed the process, or 0.
	Signal int `json:"signal,omitempty"`
	// OOMKilled is set when the container's cgroup saw an OOM kill and
	// the process died of SIGKILL.
	OOMKilled bool `json:"oom_killed,omitempty"`
}

// DestroyContainerRequest kills every process of the container, waits for
// them, and removes its cgroup and mounts.
type DestroyContainerRequest struct {
	ID string `json:"id"`
}

// UpdateContainerRequest applies new limits to a container's cgroup;
// zero fields leave a limit as it is.
type UpdateContainerRequest struct {
	ID        string    `json:"id"`
	Resources Resources `json:"resources"`
}

// ContainerStatsRequest asks for a container's cgroup numbers.
type ContainerStatsRequest struct {
	ID string `json:"id"`
}

// ContainerStats are a container's cgroup numbers (cgroup v2 names; on
// v1 the agent fills what v1 has) and the processes in it.
type ContainerStats struct {
	// PIDs are the processes in the cgroup, in the agent's PID namespace.
	PIDs []int `json:"pids"`
	// MemoryUsageBytes is memory.current; MemoryLimitBytes memory.max
	// (0: none).
	MemoryUsageBytes uint64 `json:"memory_usage_bytes"`
	MemoryLimitBytes uint64 `json:"memory_limit_bytes,omitempty"`
	// MemoryStat is memory.stat, key by key.
	MemoryStat map[string]uint64 `json:"memory_stat,omitempty"`
	// CPUStat is cpu.stat, key by key (usage_usec, user_usec, ...).
	CPUStat map[string]uint64 `json:"cpu_stat,omitempty"`
	// PidsCurrent is pids.current (v2), else len(PIDs).
	PidsCurrent uint64 `json:"pids_current"`
}

// MaxStatsPIDs bounds ContainerStats.PIDs: the frame must stay small.
const MaxStatsPIDs = 4096

// RefreshRequest gives a guest restored from a snapshot what it must not
// share with the snapshot's other clones: randomness for the kernel's
// pool and the host's wall clock. The host sends it before anything runs
// in a clone.
type RefreshRequest struct {
	// Entropy is host randomness (MinRefreshEntropy to MaxRefreshEntropy
	// bytes) that the agent adds to the kernel's pool and credits
	// (RNDADDENTROPY), then reseeds /dev/urandom's generator from
	// (RNDRESEEDCRNG), so the guest's random output diverges from every
	// other clone's at once, not at the generator's next scheduled
	// reseed.
	Entropy []byte `json:"entropy"`
	// RealtimeNanos is the host's CLOCK_REALTIME in nanoseconds since the
	// Unix epoch; the agent sets the guest's CLOCK_REALTIME to it. The
	// guest's clock otherwise resumes from the snapshot's time.
	RealtimeNanos int64 `json:"realtime_ns"`
}

// Bounds of RefreshRequest.Entropy: a ChaCha20 key's worth at least (what
// the kernel's CRNG needs to be seeded), and no more than the kernel's
// input pool holds (4096 bits).
const (
	MinRefreshEntropy = 32
	MaxRefreshEntropy = 512
)

// SyncBlockDeviceRequest makes the agent forget what it cached of a block
// device whose image the host has just swapped (PATCH /drives): it waits
// (at most MaxSyncBlockDeviceMillis) until the kernel reports SizeBytes,
// the new image's size, then drops the device's buffer cache (BLKFLSBUF),
// so a mount reads the new image and not what the old one left cached.
type SyncBlockDeviceRequest struct {
	// Path is a block device under /dev (e.g. /dev/vda).
	Path      string `json:"path"`
	SizeBytes uint64 `json:"size_bytes"`
}

// MaxSyncBlockDeviceMillis bounds SyncBlockDevice's wait for the new size:
// the guest handles the configuration change interrupt in a workqueue,
// which runs within milliseconds even in an emulated guest.
const MaxSyncBlockDeviceMillis = 10000
