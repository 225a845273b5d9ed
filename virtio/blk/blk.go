// Package blk is a virtio block device (OASIS virtio 1.2 §5.2) backed by a
// raw image file. Requests are served by a small pool of goroutines doing
// positional reads and writes straight into guest memory, so several
// requests are in flight at once and no device work runs on vCPU threads.
//
// Files: blk.go holds the device's state and configuration space,
// request.go parses and executes requests, event.go runs the queues.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

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
}

// Block is a virtio-blk device. It implements virtio.Device.
type Block struct {
	cfg      Config
	file     *os.File
	sectors  uint64
	features uint64
	config   [cfgLen]byte

	mu  sync.Mutex
	run *runState // non-nil while activated
}

// Open opens and locks the image: exclusively for a writable disk, shared
// for a read-only one, so two VMs never write the same image.
func Open(cfg Config) (*Block, error) {
	if cfg.NumQueues <= 0 {
		cfg.NumQueues = 1
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
	if len(cfg.ID) > IDLen {
		return nil, fmt.Errorf("virtio-blk %s: id is longer than %d bytes", cfg.ID, IDLen)
	}
	flags, lock := os.O_RDWR, unix.LOCK_EX
	if cfg.ReadOnly {
		flags, lock = os.O_RDONLY, unix.LOCK_SH
	}
	f, err := os.OpenFile(cfg.Path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("virtio-blk %s: open image: %w", cfg.ID, err)
	}
	if err := unix.Flock(int(f.Fd()), lock|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("virtio-blk %s: image %s is in use by another VM", cfg.ID, cfg.Path)
		}
		return nil, fmt.Errorf("virtio-blk %s: lock image %s: %w", cfg.ID, cfg.Path, err)
	}
	// Seek works for regular files and block devices alike.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("virtio-blk %s: size of image %s: %w", cfg.ID, cfg.Path, err)
	}
	b := &Block{cfg: cfg, file: f, sectors: uint64(size) / SectorSize}
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
	return b.file.Close()
}

// Sectors returns the disk's capacity in 512-byte sectors.
func (b *Block) Sectors() uint64 { return b.sectors }

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
	for i := range data {
		o := off + uint64(i)
		if o < cfgLen {
			data[i] = b.config[o]
		} else {
			data[i] = 0
		}
	}
}

// WriteConfig implements virtio.Device. Only the writeback field is
// writable, and only with VIRTIO_BLK_F_CONFIG_WCE, which isn't offered.
func (b *Block) WriteConfig(uint64, []byte) {}
