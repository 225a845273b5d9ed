package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/govmm/vmm/vmm"
)

// diskFlag is the repeatable --disk path=FILE[,ro][,id=NAME][,root][,direct][,io_engine=sync|async]
// option; each use appends one virtio-blk drive.
type diskFlag struct{ drives *[]vmm.DriveConfig }

func (d diskFlag) String() string {
	if d.drives == nil {
		return ""
	}
	var s []string
	for _, dr := range *d.drives {
		s = append(s, dr.Path)
	}
	return strings.Join(s, " ")
}

// Set parses one --disk value. The image must exist and be readable now,
// so a typo fails before the VM is built.
func (d diskFlag) Set(v string) error {
	dr, err := parseDisk(v)
	if err != nil {
		return err
	}
	if st, err := os.Stat(dr.Path); err != nil {
		return fmt.Errorf("disk image: %w", err)
	} else if st.IsDir() {
		return fmt.Errorf("disk image %s is a directory", dr.Path)
	}
	for _, o := range *d.drives {
		if dr.ID != "" && o.ID == dr.ID {
			return fmt.Errorf("disk id %q used twice", dr.ID)
		}
	}
	*d.drives = append(*d.drives, dr)
	return nil
}

// parseDisk parses path=FILE[,ro][,id=NAME][,root][,direct][,io_engine=sync|async]; a bare FILE
// is accepted as the path. The id defaults to the image's position (vda is
// "drive0"). direct (also direct=on or direct=off, as Cloud Hypervisor's
// --disk) opens the image with O_DIRECT, bypassing the host page cache.
// io_engine picks how requests reach the image (Firecracker's io_engine):
// async is io_uring, sync a pool of threads; without it, io_uring where the
// host allows it.
func parseDisk(v string) (vmm.DriveConfig, error) {
	var dr vmm.DriveConfig
	for i, part := range strings.Split(v, ",") {
		k, val, hasVal := strings.Cut(part, "=")
		switch {
		case k == "path" && hasVal:
			dr.Path = val
		case k == "id" && hasVal:
			dr.ID = val
		case k == "ro" && !hasVal:
			dr.ReadOnly = true
		case k == "root" && !hasVal:
			dr.Root = true
		case k == "direct" && (!hasVal || val == "on"):
			dr.Direct = true
		case k == "direct" && val == "off":
			dr.Direct = false
		case k == "direct":
			return dr, fmt.Errorf("disk %q: direct=%s: want direct, direct=on or direct=off", v, val)
		case k == "io_engine" && (val == vmm.IOEngineSync || val == vmm.IOEngineAsync):
			dr.IOEngine = val
		case k == "io_engine":
			return dr, fmt.Errorf("disk %q: io_engine=%s: want io_engine=%s or io_engine=%s", v, val, vmm.IOEngineSync, vmm.IOEngineAsync)
		case i == 0 && !hasVal && part != "":
			dr.Path = part
		default:
			return dr, fmt.Errorf("disk %q: unknown option %q (want path=FILE[,ro][,id=NAME][,root][,direct][,io_engine=sync|async])", v, part)
		}
	}
	if dr.Path == "" {
		return dr, fmt.Errorf("disk %q: no path=FILE", v)
	}
	if len(dr.ID) > 20 {
		return dr, fmt.Errorf("disk %q: id longer than 20 bytes (the virtio-blk serial limit)", v)
	}
	return dr, nil
}
