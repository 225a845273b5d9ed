package blk

import (
	"encoding/binary"
	"fmt"
)

// StateVersion is the version of State this code writes and restores.
const StateVersion = 1

// State is a disk as plain data, to save and rebuild it (a snapshot): what
// it was opened with and the capacity the driver was told; the
// configuration space follows from these. It holds nothing of a running
// device: the transport's state (virtio.PCIState) has the queues, and
// requests in flight complete before the transport lets the state be
// taken. Path, Engine, Workers and Direct are the host's side, which the
// guest can't see: a restore may change them (another copy of the image).
type State struct {
	Version   int
	ID        string
	Path      string // the image in service, after any Swap
	ReadOnly  bool
	Direct    bool
	Engine    Engine // the engine in use, never EngineAuto
	NumQueues int
	QueueSize uint16
	Workers   int
	// Sectors is the capacity in the configuration space, in 512-byte
	// sectors.
	Sectors uint64
}

// State returns the disk's state.
func (b *Block) State() State {
	b.cfgMu.Lock()
	sectors := binary.LittleEndian.Uint64(b.config[cfgCapacity:])
	b.cfgMu.Unlock()
	return State{
		Version: StateVersion, ID: b.cfg.ID, Path: b.Path(), ReadOnly: b.cfg.ReadOnly, Direct: b.cfg.Direct,
		Engine: b.cfg.Engine, NumQueues: b.cfg.NumQueues, QueueSize: b.cfg.QueueSize, Workers: b.cfg.Workers,
		Sectors: sectors,
	}
}

// Restore opens the disk st describes, as Open does. The image must have
// the capacity the driver was told: a guest that sees its disk change size
// under it, without a configuration change, may lose data.
func Restore(st State) (*Block, error) {
	if st.Version != StateVersion {
		return nil, fmt.Errorf("virtio-blk %s: restore: state version %d, this build restores %d", st.ID, st.Version, StateVersion)
	}
	b, err := Open(Config{
		ID: st.ID, Path: st.Path, ReadOnly: st.ReadOnly, Direct: st.Direct, Engine: st.Engine,
		NumQueues: st.NumQueues, QueueSize: st.QueueSize, Workers: st.Workers,
	})
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if got := b.Sectors(); got != st.Sectors {
		b.Close()
		return nil, fmt.Errorf("virtio-blk %s: restore: image %s has %d sectors, the guest was told %d", st.ID, st.Path, got, st.Sectors)
	}
	return b, nil
}
