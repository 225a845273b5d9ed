package api

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"

	"github.com/govmm/vmm/vmm"
	"golang.org/x/sys/unix"
)

// Firecracker's wording for calls made in the wrong phase.
var (
	errPostBoot = errors.New("The requested operation is not supported after starting the microVM.")
	errPreBoot  = errors.New("The requested operation is not supported before starting the microVM.")
)

// idPattern is Firecracker's rule for resource ids in paths and bodies.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

func missing(field string) error { return fmt.Errorf("missing required field %q", field) }

// checkID validates a body id against the id in the request path (empty
// for the config file, where there is no path).
func checkID(field string, body *string, pathID string) (string, error) {
	if body == nil {
		return "", missing(field)
	}
	id := *body
	if !idPattern.MatchString(id) {
		return "", fmt.Errorf("%s %q is invalid: ids may contain only letters, digits and underscores", field, id)
	}
	if pathID != "" && id != pathID {
		return "", fmt.Errorf("%s %q in the body does not match %q in the path", field, id, pathID)
	}
	return id, nil
}

// Firecracker enum values this VMM recognises but does not implement; they
// get "not supported" rather than "invalid".
var (
	cpuTemplates = []string{"C3", "T2", "T2S", "T2CL", "T2A", "V1N1"}
	hugePages    = []string{"Transparent", "2M"}
)

// machineShape is what PUT and PATCH /machine-config set.
type machineShape struct {
	cpus            int
	mem             uint64
	trackDirtyPages bool
}

// applyMachineConfig checks mc and returns the vCPU count, memory size and
// dirty page tracking it sets on top of cur. With partial (PATCH) every
// field is optional; a PUT without track_dirty_pages turns it off, as in
// Firecracker, where the field defaults to false.
func applyMachineConfig(cur vmm.Config, mc MachineConfig, partial bool) (machineShape, error) {
	cpus, mem := cur.CPUs, cur.MemSize
	track := cur.TrackDirtyPages && partial
	if !partial {
		if mc.VCPUCount == nil {
			return machineShape{}, missing("vcpu_count")
		}
		if mc.MemSizeMiB == nil {
			return machineShape{}, missing("mem_size_mib")
		}
	}
	if n := mc.VCPUCount; n != nil {
		if vmm.CheckCPUs(*n) != nil {
			return machineShape{}, fmt.Errorf("vcpu_count %d is out of range 1-%d", *n, vmm.MaxCPUs)
		}
		cpus = int(*n)
	}
	if n := mc.MemSizeMiB; n != nil {
		if vmm.CheckMemMiB(*n) != nil {
			return machineShape{}, fmt.Errorf("mem_size_mib %d is out of range %d-%d", *n, vmm.MinMemSize>>20, vmm.MaxMemSize>>20)
		}
		mem = uint64(*n) << 20
	}
	if mc.SMT != nil && *mc.SMT {
		return machineShape{}, errors.New("smt: simultaneous multithreading is not supported (every vCPU is its own core)")
	}
	if t := mc.CPUTemplate; t != nil && *t != "None" && *t != "" {
		if contains(cpuTemplates, *t) {
			return machineShape{}, fmt.Errorf("cpu_template %q is not supported (only \"None\")", *t)
		}
		return machineShape{}, fmt.Errorf("cpu_template %q is not one of %s, None", *t, strings.Join(cpuTemplates, ", "))
	}
	if mc.TrackDirtyPages != nil {
		track = *mc.TrackDirtyPages
	}
	if h := mc.HugePages; h != nil && *h != "None" {
		if contains(hugePages, *h) {
			return machineShape{}, fmt.Errorf("huge_pages %q is not supported (only \"None\")", *h)
		}
		return machineShape{}, fmt.Errorf("huge_pages %q is not one of None, Transparent, 2M", *h)
	}
	return machineShape{cpus: cpus, mem: mem, trackDirtyPages: track}, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// checkReadableFile reports why path can't serve as an image: missing,
// unreadable, or not a regular file (or block device, when allowed).
func checkReadableFile(field, path string, blockOK bool) error {
	if path == "" {
		return fmt.Errorf("%s is empty", field)
	}
	// O_NONBLOCK: opening a FIFO would otherwise wait for a writer,
	// holding the request (and, for a snapshot load, the controller).
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	m := st.Mode()
	if m.IsRegular() || (blockOK && m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0) {
		return nil
	}
	return fmt.Errorf("%s: %s is not a regular file", field, path)
}

// checkBootSource validates a boot source, opening the images as
// Firecracker does so a typo fails at PUT time rather than at boot.
func checkBootSource(bs BootSource) error {
	if bs.KernelImagePath == nil {
		return missing("kernel_image_path")
	}
	if err := checkReadableFile("kernel_image_path", *bs.KernelImagePath, false); err != nil {
		return err
	}
	if bs.InitrdPath != nil && *bs.InitrdPath != "" {
		if err := checkReadableFile("initrd_path", *bs.InitrdPath, false); err != nil {
			return err
		}
	}
	return nil
}

// checkRateLimiter accepts an absent limiter or one whose buckets are all
// disabled (size or refill_time 0, Firecracker's "no limit"); real limits
// need device support that does not exist yet.
func checkRateLimiter(field string, rl *RateLimiter) error {
	if rl == nil {
		return nil
	}
	for _, b := range []struct {
		name string
		tb   *TokenBucket
	}{{"bandwidth", rl.Bandwidth}, {"ops", rl.Ops}} {
		if b.tb == nil {
			continue
		}
		name := field + "." + b.name
		if b.tb.Size == nil {
			return missing(name + ".size")
		}
		if b.tb.RefillTime == nil {
			return missing(name + ".refill_time")
		}
		for _, v := range []struct {
			f string
			n *int64
		}{{"size", b.tb.Size}, {"refill_time", b.tb.RefillTime}, {"one_time_burst", b.tb.OneTimeBurst}} {
			if v.n != nil && *v.n < 0 {
				return fmt.Errorf("%s.%s must not be negative", name, v.f)
			}
		}
		if (*b.tb.Size != 0 && *b.tb.RefillTime != 0) || (b.tb.OneTimeBurst != nil && *b.tb.OneTimeBurst != 0) {
			return fmt.Errorf("%s: rate limiting is not supported yet", field)
		}
	}
	return nil
}

// normalizeDrive checks a drive for PUT and fills Firecracker's defaults.
func normalizeDrive(d Drive, pathID string) (Drive, error) {
	id, err := checkID("drive_id", d.DriveID, pathID)
	if err != nil {
		return d, err
	}
	if d.Socket != nil {
		return d, errors.New("socket: vhost-user-blk drives are not supported")
	}
	if d.IsRootDevice == nil {
		return d, missing("is_root_device")
	}
	if d.PathOnHost == nil {
		return d, missing("path_on_host")
	}
	if err := checkReadableFile("path_on_host", *d.PathOnHost, true); err != nil {
		return d, err
	}
	if d.IsReadOnly == nil {
		d.IsReadOnly = ptr(false)
	}
	switch ct := deref(d.CacheType, "Unsafe"); ct {
	case "Unsafe":
		d.CacheType = ptr(ct)
	case "Writeback":
		return d, errors.New("cache_type \"Writeback\" is not supported yet (only \"Unsafe\")")
	default:
		return d, fmt.Errorf("cache_type %q is not one of Unsafe, Writeback", ct)
	}
	if d.IOEngine != nil {
		if _, err := ioEngine(*d.IOEngine); err != nil {
			return d, err
		}
	}
	if err := checkRateLimiter("rate_limiter", d.RateLimiter); err != nil {
		return d, err
	}
	d.DriveID = &id
	return d, nil
}

// normalizeNet checks a network interface for PUT.
func normalizeNet(n NetworkInterface, pathID string) (NetworkInterface, error) {
	id, err := checkID("iface_id", n.IfaceID, pathID)
	if err != nil {
		return n, err
	}
	if n.HostDevName == nil {
		return n, missing("host_dev_name")
	}
	if err := checkTapName("host_dev_name", *n.HostDevName); err != nil {
		return n, err
	}
	if n.GuestMAC != nil {
		mac, err := net.ParseMAC(*n.GuestMAC)
		if err != nil || len(mac) != 6 {
			return n, fmt.Errorf("guest_mac %q is not a MAC address like 06:00:ac:10:00:02", *n.GuestMAC)
		}
		if mac[0]&1 != 0 {
			return n, fmt.Errorf("guest_mac %q is a multicast address", *n.GuestMAC)
		}
		n.GuestMAC = ptr(mac.String())
	}
	if n.MTU != nil {
		if *n.MTU < 68 || *n.MTU > 65535 {
			return n, fmt.Errorf("mtu %d is out of range 68-65535", *n.MTU)
		}
		return n, errors.New("mtu is not supported yet")
	}
	if err := checkRateLimiter("rx_rate_limiter", n.RxRateLimiter); err != nil {
		return n, err
	}
	if err := checkRateLimiter("tx_rate_limiter", n.TxRateLimiter); err != nil {
		return n, err
	}
	n.IfaceID = &id
	return n, nil
}

// checkTapName checks a host interface name (host_dev_name).
func checkTapName(field, name string) error {
	if name == "" || len(name) > vmm.MaxTapName || strings.ContainsAny(name, "/ \x00") {
		return fmt.Errorf("%s %q is not a valid interface name (1-%d characters, no '/' or spaces)", field, name, vmm.MaxTapName)
	}
	return nil
}

// checkVsock checks a vsock device for PUT.
func checkVsock(v Vsock) error {
	if v.GuestCID == nil {
		return missing("guest_cid")
	}
	if vmm.CheckGuestCID(*v.GuestCID) != nil {
		return fmt.Errorf("guest_cid %d is out of range %d-%d (0-2 are reserved)", *v.GuestCID, vmm.MinGuestCID, vmm.MaxGuestCID)
	}
	if v.UDSPath == nil {
		return missing("uds_path")
	}
	if *v.UDSPath == "" {
		return errors.New("uds_path is empty")
	}
	if v.VsockID != nil && *v.VsockID != "" && !idPattern.MatchString(*v.VsockID) {
		return fmt.Errorf("vsock_id %q is invalid: ids may contain only letters, digits and underscores", *v.VsockID)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// ioEngine maps Firecracker's io_engine to vmm's: Sync is a pool of
// threads, Async io_uring (Firecracker's own default is Sync; a drive
// without io_engine gets vmm's default, io_uring where the host allows it).
func ioEngine(e string) (string, error) {
	switch e {
	case "Sync":
		return vmm.IOEngineSync, nil
	case "Async":
		return vmm.IOEngineAsync, nil
	}
	return "", fmt.Errorf("io_engine %q is not one of Sync, Async", e)
}

// apiIOEngine is ioEngine's inverse; nil for vmm's default.
func apiIOEngine(e string) *string {
	switch e {
	case vmm.IOEngineSync:
		return ptr("Sync")
	case vmm.IOEngineAsync:
		return ptr("Async")
	}
	return nil
}
