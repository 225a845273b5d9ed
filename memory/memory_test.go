package memory

import (
	"errors"
	"sync"
	"testing"
)

func TestOrUint64(t *testing.T) {
	host := make([]byte, 4096)
	g, err := FromRegions(Region{GuestAddr: 0x10000, Host: host})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.PutUint64(0x10008, 0x1001); err != nil {
		t.Fatal(err)
	}
	// Concurrent updaters of different bits all land.
	var wg sync.WaitGroup
	for bit := 1; bit < 12; bit++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.OrUint64(0x10008, 1<<bit); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if v, _ := g.Uint64(0x10008); v != 0x1fff {
		t.Fatalf("value %#x, want 0x1fff", v)
	}
	if err := g.OrUint64(0x10004, 1); err == nil {
		t.Error("unaligned update accepted")
	}
	if err := g.OrUint64(0x10000+4096, 1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("update outside RAM: %v", err)
	}
}
