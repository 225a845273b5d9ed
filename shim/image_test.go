package shim

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/api/client"
	"github.com/govmm/vmm/vmm"
)

// apiWorld is fakeWorld behind the real API: each VMM it launches is an
// api.Server and Controller on the run's socket, driven by the real API
// client, so the shim's requests go through JSON on the wire, the
// server's decoding and the controller's checks. Its machine factory
// records the vmm.Config they produced (what the VMM would open its
// devices with) and plays the guest with fakeWorld's agent.
type apiWorld struct {
	*fakeWorld

	mu   sync.Mutex
	cfgs []vmm.Config
}

// apiVMM is a launched fake VMM whose Stop also ends its API server.
type apiVMM struct {
	*fakeVMM
	once     sync.Once
	shutdown func()
}

func (v *apiVMM) Stop(grace time.Duration) {
	v.fakeVMM.Stop(grace)
	v.once.Do(v.shutdown)
}

// apiMachine runs until the controller stops it or the fake VMM dies.
type apiMachine struct{ vm *fakeVMM }

func (m *apiMachine) Run(ctx context.Context) vmm.Exit {
	select {
	case <-ctx.Done():
		return vmm.Exit{Kind: vmm.ExitStopped}
	case <-m.vm.done:
		return vmm.Exit{Kind: vmm.ExitStopped}
	}
}
func (m *apiMachine) Close() error          { return nil }
func (m *apiMachine) Pause() error          { return nil }
func (m *apiMachine) Resume() error         { return nil }
func (m *apiMachine) Stats() vmm.Stats      { return vmm.Stats{} }
func (m *apiMachine) SendCtrlAltDel() error { return nil }

func (a *apiWorld) Launch(ctx context.Context, spec LaunchSpec) (VMM, error) {
	launched, err := a.fakeWorld.Launch(ctx, spec)
	if err != nil {
		return nil, err
	}
	v := launched.(*fakeVMM)
	ctl := api.NewController(api.Options{Factory: func(cfg vmm.Config, _ *slog.Logger) (api.Machine, error) {
		a.mu.Lock()
		a.cfgs = append(a.cfgs, cfg)
		a.mu.Unlock()
		if cfg.Vsock != nil {
			a.fakeWorld.mu.Lock()
			a.fakeWorld.vsock = cfg.Vsock.UDSPath
			a.fakeWorld.mu.Unlock()
		}
		a.fakeWorld.startGuest()
		return &apiMachine{vm: v}, nil
	}})
	srv := api.NewServer(ctl)
	if err := srv.Listen(spec.APISock); err != nil {
		return nil, err
	}
	go srv.Serve()
	return &apiVMM{fakeVMM: v, shutdown: func() {
		ctl.Stop()
		if ctl.Started() {
			<-ctl.Done()
		}
		_ = srv.Shutdown(context.Background())
		_ = ctl.Close()
	}}, nil
}

func (a *apiWorld) Client(apiSock string) API { return client.New(apiSock) }

// TestRunImageAttachment checks, through the real API, how the image
// reaches the VMM and the agent: read-only with an overlay root by
// default, so nothing the guest does can change the file; read-write and
// mounted directly with ImageWritable.
func TestRunImageAttachment(t *testing.T) {
	for _, c := range []struct {
		name     string
		writable bool
	}{
		{"default", false},
		{"ImageWritable", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := &apiWorld{fakeWorld: newFakeWorld(t)}
			o := w.options(t, "echo", "hi")
			o.Launcher = w
			o.ImageWritable = c.writable
			code, err := Run(context.Background(), o)
			if err != nil || code != 0 {
				t.Fatalf("Run = %d, %v", code, err)
			}
			w.checkCleanedUp(t, o)
			w.mu.Lock()
			cfgs := w.cfgs
			w.mu.Unlock()
			w.fakeWorld.mu.Lock()
			created := w.created
			w.fakeWorld.mu.Unlock()
			if len(cfgs) != 1 {
				t.Fatalf("%d machines built, want 1", len(cfgs))
			}
			drives := cfgs[0].Drives
			if len(drives) != 1 || drives[0].Path != o.Image || drives[0].Root || drives[0].ReadOnly != !c.writable {
				t.Errorf("the VMM's drives: %+v; want only %s, not root, read-only %v", drives, o.Image, !c.writable)
			}
			if len(created) != 1 {
				t.Fatalf("containers %+v", created)
			}
			if r := created[0].Rootfs; r.Source != RootfsDevice || r.Type != "ext4" || r.ReadOnly || r.Overlay != !c.writable {
				t.Errorf("container rootfs %+v; want %s ext4 with overlay %v", r, RootfsDevice, !c.writable)
			}
		})
	}
}
