// Package client is a small Go client for the VMM's Firecracker-compatible
// API socket, for the project's tools and tests.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/govmm/vmm/api"
)

// Client talks to one API socket.
type Client struct {
	hc *http.Client
}

// New returns a client for the socket at path.
func New(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    1,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{hc: &http.Client{Transport: tr}}
}

// Error is a non-success answer from the API.
type Error struct {
	Method, Path string
	Status       int
	Message      string // the fault_message
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), e.Message)
}

// Do sends body (JSON-encoded unless nil) and decodes a 200 answer into
// out (if non-nil). A PUT or PATCH must answer 204 and a GET 200, as
// Firecracker's clients require; anything else is an *Error.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: encode body: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading response: %w", method, path, err)
	}
	want := http.StatusNoContent
	if method == http.MethodGet {
		want = http.StatusOK
	}
	if resp.StatusCode != want {
		var f api.Fault
		msg := string(data)
		if json.Unmarshal(data, &f) == nil && f.FaultMessage != "" {
			msg = f.FaultMessage
		}
		return &Error{Method: method, Path: path, Status: resp.StatusCode, Message: msg}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decoding response: %w", method, path, err)
		}
	}
	return nil
}

// IsStatus reports whether err is an API answer with the given status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// InstanceInfo is GET /.
func (c *Client) InstanceInfo(ctx context.Context) (api.InstanceInfo, error) {
	var v api.InstanceInfo
	return v, c.Do(ctx, http.MethodGet, "/", nil, &v)
}

// Version is GET /version.
func (c *Client) Version(ctx context.Context) (api.Version, error) {
	var v api.Version
	return v, c.Do(ctx, http.MethodGet, "/version", nil, &v)
}

// MachineConfig is GET /machine-config.
func (c *Client) MachineConfig(ctx context.Context) (api.MachineConfig, error) {
	var v api.MachineConfig
	return v, c.Do(ctx, http.MethodGet, "/machine-config", nil, &v)
}

// PutMachineConfig is PUT /machine-config with the given shape.
func (c *Client) PutMachineConfig(ctx context.Context, vcpus, memMiB int64) error {
	return c.Do(ctx, http.MethodPut, "/machine-config", api.MachineConfig{VCPUCount: &vcpus, MemSizeMiB: &memMiB}, nil)
}

// PutBootSource is PUT /boot-source; empty initrd and bootArgs are left out.
func (c *Client) PutBootSource(ctx context.Context, kernel, initrd, bootArgs string) error {
	bs := api.BootSource{KernelImagePath: &kernel}
	if initrd != "" {
		bs.InitrdPath = &initrd
	}
	if bootArgs != "" {
		bs.BootArgs = &bootArgs
	}
	return c.Do(ctx, http.MethodPut, "/boot-source", bs, nil)
}

// PutDrive is PUT /drives/{drive_id}.
func (c *Client) PutDrive(ctx context.Context, d api.Drive) error {
	if d.DriveID == nil {
		return errors.New("PutDrive: no drive_id")
	}
	return c.Do(ctx, http.MethodPut, "/drives/"+*d.DriveID, d, nil)
}

// PutNetworkInterface is PUT /network-interfaces/{iface_id}.
func (c *Client) PutNetworkInterface(ctx context.Context, n api.NetworkInterface) error {
	if n.IfaceID == nil {
		return errors.New("PutNetworkInterface: no iface_id")
	}
	return c.Do(ctx, http.MethodPut, "/network-interfaces/"+*n.IfaceID, n, nil)
}

// PutVsock is PUT /vsock.
func (c *Client) PutVsock(ctx context.Context, cid int64, udsPath string) error {
	return c.Do(ctx, http.MethodPut, "/vsock", api.Vsock{GuestCID: &cid, UDSPath: &udsPath}, nil)
}

// PutMetrics is PUT /metrics.
func (c *Client) PutMetrics(ctx context.Context, path string) error {
	return c.Do(ctx, http.MethodPut, "/metrics", api.Metrics{MetricsPath: &path}, nil)
}

// Action is PUT /actions.
func (c *Client) Action(ctx context.Context, actionType string) error {
	return c.Do(ctx, http.MethodPut, "/actions", api.Action{ActionType: &actionType}, nil)
}

// Start is the InstanceStart action.
func (c *Client) Start(ctx context.Context) error { return c.Action(ctx, api.ActionInstanceStart) }

// Pause is PATCH /vm {"state":"Paused"}.
func (c *Client) Pause(ctx context.Context) error { return c.setState(ctx, api.VMPaused) }

// Resume is PATCH /vm {"state":"Resumed"}.
func (c *Client) Resume(ctx context.Context) error { return c.setState(ctx, api.VMResumed) }

func (c *Client) setState(ctx context.Context, s string) error {
	return c.Do(ctx, http.MethodPatch, "/vm", api.VM{State: &s}, nil)
}

// PatchDrivePath is PATCH /drives/{id} with a new path_on_host: the
// drive's image is swapped under the running guest.
func (c *Client) PatchDrivePath(ctx context.Context, id, path string) error {
	return c.Do(ctx, http.MethodPatch, "/drives/"+id, api.PartialDrive{DriveID: &id, PathOnHost: &path}, nil)
}

// CreateSnapshot is PUT /snapshot/create of a Full snapshot of the paused
// microVM.
func (c *Client) CreateSnapshot(ctx context.Context, statePath, memPath string) error {
	full := api.SnapshotFull
	return c.Do(ctx, http.MethodPut, "/snapshot/create", api.SnapshotCreateParams{SnapshotType: &full, SnapshotPath: &statePath, MemFilePath: &memPath}, nil)
}

// LoadSnapshot is PUT /snapshot/load from a File memory backend, the
// vsock device on vsockUDS ("" keeps the snapshot's), resumed if resume.
func (c *Client) LoadSnapshot(ctx context.Context, statePath, memPath, vsockUDS string, resume bool) error {
	file := api.MemBackendFile
	p := api.SnapshotLoadParams{
		SnapshotPath: &statePath,
		MemBackend:   &api.MemoryBackend{BackendType: &file, BackendPath: &memPath},
		ResumeVM:     &resume,
	}
	if vsockUDS != "" {
		p.VsockOverride = &api.VsockOverride{UDSPath: &vsockUDS}
	}
	return c.Do(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// VMConfig is GET /vm/config.
func (c *Client) VMConfig(ctx context.Context) (api.FullConfig, error) {
	var v api.FullConfig
	return v, c.Do(ctx, http.MethodGet, "/vm/config", nil, &v)
}

// WaitReady polls GET / until the API answers or ctx ends.
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		if _, err := c.InstanceInfo(ctx); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("API not ready: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
