package containerd

import (
	"context"
	"os"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// bootFor boots the sandbox's VM with its first task's disks and, when
// the task is a CRI pod's sandbox (other containers will join it), the
// spare drives they will take.
func (s *Service) bootFor(ctx context.Context, id string, spec *specs.Spec, disks *rootfsDisks, netns string) (*machine, error) {
	var spares []disk
	if spec.Annotations[annotationContainerType] == containerTypeSandbox {
		var err error
		if spares, err = makeSpares(s.cfg.Config, s.cfg.Dir, len(disks.disks())); err != nil {
			os.RemoveAll(s.cfg.Dir)
			return nil, status.Errorf(codes.Internal, "sandbox %s's spare drives: %v", s.cfg.SandboxID, err)
		}
	}
	memMiB, cpus := vmSize(spec, s.cfg.Config)
	vm, err := s.boot(ctx, machineSpec{
		dir:         s.cfg.Dir,
		kernel:      s.cfg.Config.Kernel,
		initrd:      s.cfg.Config.Initrd,
		cmdline:     s.cfg.Config.Cmdline,
		memMiB:      memMiB,
		cpus:        cpus,
		disks:       disks.disks(),
		spares:      spares,
		bootTimeout: time.Duration(s.cfg.Config.BootTimeout),
		netns:       netns,
		logf:        s.cfg.Logf,
	})
	if err != nil {
		os.RemoveAll(s.cfg.Dir)
		return nil, status.Errorf(codes.Unavailable, "booting the VM for task %s: %v", id, err)
	}
	return vm, nil
}

// leaveVM undoes a failed join: the container's slots are given back,
// and a VM left without tasks is stopped as Delete would have.
func (s *Service) leaveVM(ctx context.Context, vm *machine, slots []int) {
	if err := vm.detach(ctx, slots); err != nil {
		s.cfg.Logf("%v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The failed Create is still counted in s.creating.
	if s.vm == vm && len(s.containers) == 0 && len(s.creating) == 1 {
		s.stopVM()
	}
}
