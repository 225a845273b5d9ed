// Package api serves a Firecracker-compatible REST API (HTTP/1.1 over a
// Unix socket) for one VM: the same paths, bodies, status codes and
// pre-/post-boot rules as Firecracker's swagger definition, so that the
// Firecracker Go SDK and Kata's Firecracker driver can drive this VMM.
//
// A Controller holds the VM's configuration (one vmm.Config) and its
// lifecycle; the Server turns HTTP requests into Controller calls, and the
// command line and a Firecracker --config-file (LoadConfigFile) fill the
// same Controller, so there is one path to a running VM.
//
// Endpoints (PRE: before InstanceStart only, POST: after only):
//
//	GET   /                          instance info: app_name, id, state, vmm_version
//	GET   /version                   {"firecracker_version": ...}
//	GET   /machine-config            vCPUs and memory
//	PUT   /machine-config       PRE  vcpu_count, mem_size_mib required
//	PATCH /machine-config       PRE  any subset
//	PUT   /boot-source          PRE  kernel_image_path, initrd_path, boot_args
//	PUT   /drives/{id}          PRE  virtio-blk drive
//	PATCH /drives/{id}          POST path_on_host: swap the backing file (DriveUpdater)
//	PUT   /network-interfaces/{id} PRE
//	PATCH /network-interfaces/{id} POST (rate limiters: only "no limit")
//	PUT   /vsock                PRE  guest_cid, uds_path (vsock_id accepted, deprecated)
//	PUT   /entropy              PRE  virtio-rng (rate_limiter: only "no limit")
//	PUT   /logger               PRE  log_path, level, show_level, show_log_origin
//	PUT   /metrics              PRE  metrics_path, emit_id, properties
//	PUT   /actions                   InstanceStart (PRE), SendCtrlAltDel, FlushMetrics (POST)
//	PATCH /vm                   POST {"state": "Paused" | "Resumed"}
//	GET   /vm/config                 the config-file schema
//	PUT   /snapshot/create      POST while Paused: state and memory files (Snapshotter)
//	PUT   /snapshot/load        PRE  before anything but logger and metrics (Options.Restore)
//
// The routes are net/http.ServeMux patterns, one line each in routes.go.
// Success is 204 with no body for PUT and PATCH, 200 with JSON for GET.
// Errors carry {"fault_message": "..."}: 400 for bad requests and calls in
// the wrong phase, 404 for unknown paths, 405 for a wrong method (with an
// Allow header). Firecracker answers 400 to the last two.
//
// Other deviations: values this VMM does not implement (SMT, CPU
// templates, dirty page tracking, huge pages, rate limits, Writeback
// caching, MTU, vhost-user drives, log module filters, diff snapshots,
// userfaultfd memory backends, and the balloon, MMDS, serial, pmem,
// cpu-config and memory hot-plug endpoints)
// are refused with a 400 that says so instead of being ignored; metrics
// lines have their own schema with cumulative counters; a snapshot load
// that fails leaves the instance "Not started" for another try, where
// Firecracker gives up on the process; and the state
// after the guest has ended, in the moment before the process exits, is
// "Exited".
package api
