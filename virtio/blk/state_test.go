package blk

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio/virtiotest"
)

// complete notifies the queue and waits for r's used entry.
func complete(t *testing.T, h *harness, p *virtiotest.PCI, r req) {
	t.Helper()
	p.Notify(0)
	e, ok := h.d.WaitUsed(10 * time.Second)
	if !ok || e.ID != uint32(r.head) {
		t.Fatalf("used entry %+v (present %v), want head %d", e, ok, r.head)
	}
	if s := h.statusOf(r); s != 0 {
		t.Fatalf("request head %d: status %d", r.head, s)
	}
}

// TestStateRoundTrip: requests through the transport, then the disk and
// transport are saved (through JSON), torn down and rebuilt from the
// state; requests go on in the same ring, and see what was written.
func TestStateRoundTrip(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e Engine) {
		h := newHarness(t, Config{ID: "disk0", Path: newImage(t), Engine: e})
		p := virtiotest.NewPCI(t, h.b, h.d.Mem)
		p.Setup(h.features, h.d.Ring())
		data := bytes.Repeat([]byte{0xa5}, SectorSize)
		complete(t, h, p, h.submit(typeOut, 3, data, 0))
		r := h.submit(typeIn, 5, nil, SectorSize)
		complete(t, h, p, r)
		if got := h.d.Read(r.data, SectorSize); got[0] != 5 || got[SectorSize-1] != 5 {
			t.Fatalf("sector 5 reads %x...", got[:4])
		}

		if err := p.Transport.Pause(); err != nil {
			t.Fatal(err)
		}
		ts, err := p.Transport.State()
		if err != nil {
			t.Fatal(err)
		}
		ts = virtiotest.JSONCopy(t, ts)
		st := virtiotest.JSONCopy(t, h.b.State())
		want := State{Version: StateVersion, ID: "disk0", Path: h.b.Path(), Engine: e, NumQueues: 1, QueueSize: testQueue, Workers: DefaultWorkers, Sectors: testSectors}
		if st != want {
			t.Fatalf("state %+v, want %+v", st, want)
		}
		if q := ts.Queues[0]; q.NextAvail != 2 || q.NextUsed != 2 {
			t.Fatalf("queue state %+v", q)
		}
		p.Transport.Close()
		h.b.Close() // releases the image's lock for the new device

		b2, err := Restore(st)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b2.Close() })
		p2 := virtiotest.NewPCI(t, b2, h.d.Mem)
		if err := p2.Transport.Restore(ts); err != nil {
			t.Fatal(err)
		}
		if c := p2.DeviceConfig(cfgCapacity, 8); c != testSectors {
			t.Errorf("capacity %d after restore", c)
		}
		r = h.submit(typeIn, 3, nil, SectorSize)
		complete(t, h, p2, r)
		if got := h.d.Read(r.data, SectorSize); !bytes.Equal(got, data) {
			t.Fatalf("sector 3 after restore reads %x..., want what was written before", got[:4])
		}
		complete(t, h, p2, h.submit(typeOut, 4, data, 0))
		if got := h.usedIdx(); got != 4 {
			t.Errorf("used idx %d, want 4", got)
		}
		if e, ok := h.d.PopUsed(); ok {
			t.Errorf("extra used entry %+v", e)
		}
	})
}

// TestRestoreRefused: a state from another version, or an image whose
// size is not what the guest was told, is refused.
func TestRestoreRefused(t *testing.T) {
	path := newImage(t)
	b, err := Open(Config{ID: "d", Path: path, Engine: EngineSync})
	if err != nil {
		t.Fatal(err)
	}
	st := b.State()
	b.Close()
	bad := st
	bad.Version++
	if _, err := Restore(bad); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("other version: %v", err)
	}
	for _, edit := range []func(*State){
		func(s *State) { s.Workers = 1e9 },
		func(s *State) { s.NumQueues = MaxQueues + 1 },
	} {
		bad := st
		edit(&bad)
		if b, err := Restore(bad); err == nil || !strings.Contains(err.Error(), "at most") {
			if b != nil {
				b.Close()
			}
			t.Errorf("state %+v: %v, want a refusal", bad, err)
		}
	}
	if err := os.Truncate(path, (testSectors+8)*SectorSize); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(st); err == nil || !strings.Contains(err.Error(), "sectors") {
		t.Errorf("grown image: %v", err)
	}
	// The refused restore released the image.
	st.Sectors = testSectors + 8
	b, err = Restore(st)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
}
