// Package blk is a virtio block device (OASIS virtio 1.2 §5.2) backed by a
// raw image file. Requests are served by a small pool of goroutines doing
// positional reads and writes straight into guest memory, so several
// requests are in flight at once and no device work runs on vCPU threads.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/virtio"
)

// Feature bits (§5.2.3).
const (
	FeatureSizeMax     = 1 << 1  // VIRTIO_BLK_F_SIZE_MAX
	FeatureSegMax      = 1 << 2  // VIRTIO_BLK_F_SEG_MAX
	FeatureRO          = 1 << 5  // VIRTIO_BLK_F_RO
	FeatureBlkSize     = 1 << 6  // VIRTIO_BLK_F_BLK_SIZE
	FeatureFlush       = 1 << 9  // VIRTIO_BLK_F_FLUSH
	FeatureMQ          = 1 << 12 // VIRTIO_BLK_F_MQ
	FeatureDiscard     = 1 << 13 // VIRTIO_BLK_F_DISCARD
	FeatureWriteZeroes = 1 << 14 // VIRTIO_BLK_F_WRITE_ZEROES
)

// Device configuration layout (struct virtio_blk_config, §5.2.4).
const (
	cfgCapacity            = 0  // le64, in 512-byte sectors
	cfgSizeMax             = 8  // le32
	cfgSegMax              = 12 // le32
	cfgBlkSize             = 20 // le32
	cfgNumQueues           = 34 // le16
	cfgMaxDiscardSectors   = 36 // le32
	cfgMaxDiscardSeg       = 40 // le32
	cfgDiscardAlignment    = 44 // le32
	cfgMaxWriteZeroSectors = 48 // le32
	cfgMaxWriteZeroSeg     = 52 // le32
	cfgWriteZeroesMayUnmap = 56 // u8
	cfgLen                 = 60
)

// Geometry and limits.
const (
	// SectorSize is the unit of the request header's sector field, always
	// 512 bytes regardless of blk_size (§5.2.6).
	SectorSize = 512
	// IDLen is the size of the GET_ID answer (§5.2.6: 20 bytes).
	IDLen = 20
	// DefaultQueueSize is each queue's maximum size.
	DefaultQueueSize = 256
	// DefaultWorkers is the number of goroutines doing I/O.
	DefaultWorkers = 4
	// MaxQueues and MaxWorkers bound what a Config (from a flag, the API
	// or a saved state) can make a device start: every queue has a
	// goroutine, an MSI-X vector and an io_uring, every worker a
	// goroutine.
	MaxQueues  = 64
	MaxWorkers = 256
	// maxDiscardSectors bounds one discard/write-zeroes segment (fits the
	// le32 field and keeps one fallocate call reasonable).
	maxDiscardSectors = 1 << 22 // 2 GiB
	// discardAlignment: 4 KiB, the host page/file system block size.
	discardAlignment = 4096 / SectorSize
)

// Config describes one disk.
type Config struct {
	ID        string // serial returned by GET_ID (up to 20 bytes)
	Path      string // raw image file or block device
	ReadOnly  bool
	NumQueues int    // 1 when zero; more offers VIRTIO_BLK_F_MQ
	QueueSize uint16 // DefaultQueueSize when zero
	Workers   int    // DefaultWorkers when zero
	// Engine is how reads, writes and flushes reach the image: EngineAsync
	// (io_uring), EngineSync (the worker pool, one system call per
	// request), or EngineAuto when empty: io_uring where the host allows
	// it, else the pool. Other requests always use the pool.
	Engine Engine
	// Direct opens the image with O_DIRECT, so guest I/O bypasses the
	// host page cache (QEMU's cache=none, Cloud Hypervisor's direct=on);
	// Swap keeps it. Requests the file's direct-I/O alignment can't take
	// as they are go through aligned bounce buffers (see direct.go). Open
	// fails on a file system without direct I/O, such as tmpfs.
	Direct bool
	// alignment, if set, replaces dioAlignment: tests force a coarser
	// direct-I/O alignment than the host's with it.
	alignment func(*os.File) (dioAlign, error)
}

// Engine selects the I/O engine (Firecracker's io_engine).
type Engine string

// The engines.
const (
	EngineAuto  Engine = ""
	EngineSync  Engine = "sync"
	EngineAsync Engine = "async"
)

// Block is a virtio-blk device. It implements virtio.Device and
// virtio.ConfigChanger.
type Block struct {
	cfg      Config // cfg.Path is the image at Open; see path
	features uint64

	// io guards the backing image: every request holds it for reading
	// while it runs, Swap holds it for writing while it switches images, so
	// no request is served partly by the old image and partly by the new.
	io      sync.RWMutex
	file    *os.File // nil once closed
	sectors uint64
	dio     *directIO // non-nil for a Direct disk: file's alignment and tail
	// rmw orders direct-I/O read-modify-writes against other writes; see
	// direct.go.
	rmw sync.RWMutex
	// bounced counts direct-I/O requests served through a bounce buffer.
	bounced atomic.Uint64

	// cfgMu guards the configuration space, which changes on Swap, and
	// the transport's change callback.
	cfgMu   sync.Mutex
	config  [cfgLen]byte
	changed func()

	// swapMu serializes Swap and Close; path is the image in service.
	swapMu sync.Mutex
	path   string

	// life runs the queue goroutines and the worker pool between
	// Activate and Reset.
	life virtio.Lifecycle
}

// openImage opens and locks a disk image: exclusively for a writable disk,
// shared for a read-only one, so two VMs never write the same image. If
// path names the file current already has open (a Swap to the image in
// service), current is returned as it is: locking it again through a second
// descriptor would conflict with our own lock. A direct image is opened
// with O_DIRECT.
func openImage(path string, readOnly, direct bool, current *os.File) (*os.File, error) {
	flags, lock := os.O_RDWR, unix.LOCK_EX
	if readOnly {
		flags, lock = os.O_RDONLY, unix.LOCK_SH
	}
	if direct {
		flags |= unix.O_DIRECT
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if direct && errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("open image %s: %w", path, errNoDirect)
		}
		return nil, fmt.Errorf("open image: %w", err)
	}
	if direct {
		// tmpfs takes O_DIRECT opens (Linux 6.6) but still caches
		// everything: that is not what the user asked for.
		var st unix.Statfs_t
		if err := unix.Fstatfs(int(f.Fd()), &st); err == nil && st.Type == unix.TMPFS_MAGIC {
			f.Close()
			return nil, fmt.Errorf("open image %s: %w", path, errNoDirect)
		}
	}
	if current != nil && sameFile(f, current) {
		f.Close()
		return current, nil
	}
	if err := unix.Flock(int(f.Fd()), lock|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("image %s is in use by another VM", path)
		}
		return nil, fmt.Errorf("lock image %s: %w", path, err)
	}
	return f, nil
}

// sameFile reports whether a and b are open on the same file.
func sameFile(a, b *os.File) bool {
	sa, err := a.Stat()
	if err != nil {
		return false
	}
	sb, err := b.Stat()
	if err != nil {
		return false
	}
	return os.SameFile(sa, sb)
}

// imageState is the image's size in whole 512-byte sectors and, for a
// direct disk, its direct-I/O state.
func imageState(f *os.File, path string, readOnly, direct bool, alignment func(*os.File) (dioAlign, error)) (uint64, *directIO, error) {
	// Seek works for regular files and block devices alike.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, nil, fmt.Errorf("size of image %s: %w", path, err)
	}
	var dio *directIO
	if direct {
		if dio, err = newDirectIO(f, size, readOnly, alignment); err != nil {
			return 0, nil, fmt.Errorf("image %s: %w", path, err)
		}
	}
	return uint64(size) / SectorSize, dio, nil
}

// Open opens and locks the image: exclusively for a writable disk, shared
// for a read-only one, so two VMs never write the same image.
func Open(cfg Config) (*Block, error) {
	if cfg.NumQueues <= 0 {
		cfg.NumQueues = 1
	}
	if cfg.NumQueues > MaxQueues {
		return nil, fmt.Errorf("virtio-blk %s: %d queues: at most %d", cfg.ID, cfg.NumQueues, MaxQueues)
	}
	if cfg.Workers > MaxWorkers {
		return nil, fmt.Errorf("virtio-blk %s: %d I/O workers: at most %d", cfg.ID, cfg.Workers, MaxWorkers)
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.QueueSize&(cfg.QueueSize-1) != 0 || cfg.QueueSize < 4 || cfg.QueueSize > virtio.MaxQueueSize {
		return nil, fmt.Errorf("virtio-blk %s: queue size %d is not a power of two in 4..%d", cfg.ID, cfg.QueueSize, virtio.MaxQueueSize)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	switch cfg.Engine {
	case EngineAuto:
		cfg.Engine = EngineSync
		if ringAvailable() == nil {
			cfg.Engine = EngineAsync
		}
	case EngineSync:
	case EngineAsync:
		if err := ringAvailable(); err != nil {
			return nil, fmt.Errorf("virtio-blk %s: io engine async needs io_uring: %w", cfg.ID, err)
		}
	default:
		return nil, fmt.Errorf("virtio-blk %s: io engine %q is not one of %s, %s", cfg.ID, cfg.Engine, EngineSync, EngineAsync)
	}
	if len(cfg.ID) > IDLen {
		return nil, fmt.Errorf("virtio-blk %s: id is longer than %d bytes", cfg.ID, IDLen)
	}
	f, err := openImage(cfg.Path, cfg.ReadOnly, cfg.Direct, nil)
	if err != nil {
		return nil, fmt.Errorf("virtio-blk %s: %w", cfg.ID, err)
	}
	sectors, dio, err := imageState(f, cfg.Path, cfg.ReadOnly, cfg.Direct, cfg.alignment)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("virtio-blk %s: %w", cfg.ID, err)
	}
	b := &Block{cfg: cfg, file: f, sectors: sectors, dio: dio, path: cfg.Path}
	b.features = FeatureSegMax | FeatureBlkSize | FeatureFlush
	if cfg.ReadOnly {
		b.features |= FeatureRO
	} else {
		b.features |= FeatureDiscard | FeatureWriteZeroes
	}
	if cfg.NumQueues > 1 {
		b.features |= FeatureMQ
	}
	le := binary.LittleEndian
	le.PutUint64(b.config[cfgCapacity:], b.sectors)
	// Two descriptors of every request carry the header and the status.
	le.PutUint32(b.config[cfgSegMax:], uint32(cfg.QueueSize)-2)
	le.PutUint32(b.config[cfgBlkSize:], SectorSize)
	le.PutUint16(b.config[cfgNumQueues:], uint16(cfg.NumQueues))
	le.PutUint32(b.config[cfgMaxDiscardSectors:], maxDiscardSectors)
	le.PutUint32(b.config[cfgMaxDiscardSeg:], 1)
	le.PutUint32(b.config[cfgDiscardAlignment:], discardAlignment)
	le.PutUint32(b.config[cfgMaxWriteZeroSectors:], maxDiscardSectors)
	le.PutUint32(b.config[cfgMaxWriteZeroSeg:], 1)
	b.config[cfgWriteZeroesMayUnmap] = 1
	return b, nil
}

// Close stops the device and releases the image (and its lock).
func (b *Block) Close() error {
	b.Reset()
	b.swapMu.Lock()
	defer b.swapMu.Unlock()
	b.io.Lock()
	f, dio := b.file, b.dio
	b.file, b.dio = nil, nil
	b.io.Unlock()
	if f == nil {
		return nil
	}
	dio.close()
	return f.Close()
}

// EngineInUse returns the engine the device's reads and writes use: the
// one asked for, or for EngineAuto the one Open chose.
func (b *Block) EngineInUse() Engine { return b.cfg.Engine }

// Sectors returns the disk's capacity in 512-byte sectors.
func (b *Block) Sectors() uint64 {
	b.io.RLock()
	defer b.io.RUnlock()
	return b.sectors
}

// Path returns the image in service.
func (b *Block) Path() string {
	b.swapMu.Lock()
	defer b.swapMu.Unlock()
	return b.path
}

// Swap replaces the disk's backing image while the guest runs (Firecracker's
// PATCH /drives/{id} with path_on_host). The new image is opened and locked
// under the same rules as at Open (read-only disks stay read-only and take
// a shared lock); if that fails, the old image stays in service. Otherwise
// Swap waits for the requests in flight on the old image, flushes it to
// stable storage (a failure there also keeps it in service, so no write is
// lost), switches every later request to the new image, publishes the new
// capacity (virtio 1.2 §5.2.4) with a configuration change, and closes the
// old image, releasing its lock.
//
// Swapping to the image already in service keeps its descriptor and only
// re-reads its size, for an image grown on the host. Either way the driver
// is told the configuration changed.
func (b *Block) Swap(path string) error {
	b.swapMu.Lock()
	defer b.swapMu.Unlock()
	wrap := func(err error) error { return fmt.Errorf("virtio-blk %s: swap to %s: %w", b.cfg.ID, path, err) }
	old := b.file // stable: only Swap and Close, both under swapMu, change it
	if old == nil {
		return wrap(errors.New("the device is closed"))
	}
	f, err := openImage(path, b.cfg.ReadOnly, b.cfg.Direct, old)
	if err != nil {
		return wrap(err)
	}
	sectors, dio, err := imageState(f, path, b.cfg.ReadOnly, b.cfg.Direct, b.cfg.alignment)
	if err != nil {
		if f != old {
			f.Close()
		}
		return wrap(err)
	}
	b.io.Lock()
	if f != old && !b.cfg.ReadOnly {
		if err := unix.Fsync(int(old.Fd())); err != nil {
			b.io.Unlock()
			dio.close()
			f.Close()
			return wrap(fmt.Errorf("flush the old image %s: %w", b.path, err))
		}
	}
	oldDIO := b.dio
	b.file, b.sectors, b.dio = f, sectors, dio
	b.setCapacity(sectors)
	b.io.Unlock()
	// No request uses the old tail descriptor any more.
	oldDIO.close()
	b.path = path
	if f != old {
		// Its data is on stable storage already, so closing can't lose
		// any; the error is only the descriptor's.
		_ = old.Close()
	}
	return nil
}

// setCapacity publishes a new capacity and tells the transport.
func (b *Block) setCapacity(sectors uint64) {
	b.cfgMu.Lock()
	defer b.cfgMu.Unlock()
	binary.LittleEndian.PutUint64(b.config[cfgCapacity:], sectors)
	if b.changed != nil {
		// Under cfgMu: a ReadConfig that sees the new capacity returns
		// only after the generation has moved (virtio.ConfigChanger).
		b.changed()
	}
}

// BindConfigChange implements virtio.ConfigChanger.
func (b *Block) BindConfigChange(changed func()) {
	b.cfgMu.Lock()
	defer b.cfgMu.Unlock()
	b.changed = changed
}

// Type implements virtio.Device.
func (b *Block) Type() uint16 { return virtio.TypeBlock }

// Features implements virtio.Device.
func (b *Block) Features() uint64 { return b.features }

// QueueSizes implements virtio.Device.
func (b *Block) QueueSizes() []uint16 {
	s := make([]uint16, b.cfg.NumQueues)
	for i := range s {
		s[i] = b.cfg.QueueSize
	}
	return s
}

// ReadConfig implements virtio.Device.
func (b *Block) ReadConfig(off uint64, data []byte) {
	b.cfgMu.Lock()
	defer b.cfgMu.Unlock()
	virtio.ReadConfig(b.config[:], off, data)
}

// WriteConfig implements virtio.Device. Only the writeback field is
// writable, and only with VIRTIO_BLK_F_CONFIG_WCE, which isn't offered.
func (b *Block) WriteConfig(uint64, []byte) {}
