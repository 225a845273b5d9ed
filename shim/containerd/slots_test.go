package containerd

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/govmm/vmm/vmm"
)

func TestDriveSlots(t *testing.T) {
	const ph = "/placeholder"
	boot := []disk{{path: "/layers/base", readOnly: true}, {path: "/tasks/pause/upper"}}
	spares := []disk{{path: ph, readOnly: true}, {path: ph, readOnly: true}, {path: "/run/spare0"}, {path: "/run/spare1"}}
	type step struct {
		claim     []disk // nil: release
		release   []int
		wantIdx   []int
		wantSwap  []int
		wantFreed []int
		wantErr   bool
	}
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"shares a booted layer, takes a writable spare", []step{
			{claim: []disk{{path: "/layers/base", readOnly: true}, {path: "/tasks/a/upper"}}, wantIdx: []int{0, 4}, wantSwap: []int{4}},
		}},
		{"new layers take read-only spares", []step{
			{claim: []disk{{path: "/layers/x", readOnly: true}, {path: "/layers/base", readOnly: true}, {path: "/tasks/a/upper"}}, wantIdx: []int{2, 0, 4}, wantSwap: []int{2, 4}},
			{claim: []disk{{path: "/layers/x", readOnly: true}, {path: "/tasks/b/upper"}}, wantIdx: []int{2, 5}, wantSwap: []int{5}},
		}},
		{"writable exhausted, nothing taken", []step{
			{claim: []disk{{path: "/tasks/a/upper"}}, wantIdx: []int{4}, wantSwap: []int{4}},
			{claim: []disk{{path: "/tasks/b/upper"}}, wantIdx: []int{5}, wantSwap: []int{5}},
			{claim: []disk{{path: "/layers/y", readOnly: true}, {path: "/tasks/c/upper"}}, wantErr: true},
			// /layers/y's slot was rolled back: both read-only spares are free.
			{claim: []disk{{path: "/layers/p", readOnly: true}, {path: "/layers/q", readOnly: true}}, wantIdx: []int{2, 3}, wantSwap: []int{2, 3}},
		}},
		{"read-only exhausted", []step{
			{claim: []disk{{path: "/layers/1", readOnly: true}, {path: "/layers/2", readOnly: true}, {path: "/layers/3", readOnly: true}}, wantErr: true},
		}},
		{"read-only rootfs takes a read-only slot", []step{
			{claim: []disk{{path: "/tasks/a/upper", readOnly: true}}, wantIdx: []int{2}, wantSwap: []int{2}},
		}},
		{"release frees a slot once its last user goes", []step{
			{claim: []disk{{path: "/layers/x", readOnly: true}, {path: "/tasks/a/upper"}}, wantIdx: []int{2, 4}, wantSwap: []int{2, 4}},
			{claim: []disk{{path: "/layers/x", readOnly: true}, {path: "/tasks/b/upper"}}, wantIdx: []int{2, 5}, wantSwap: []int{5}},
			{release: []int{2, 4}, wantFreed: []int{4}},
			{release: []int{2, 5}, wantFreed: []int{2, 5}},
			{claim: []disk{{path: "/layers/z", readOnly: true}, {path: "/tasks/c/upper"}}, wantIdx: []int{2, 4}, wantSwap: []int{2, 4}},
		}},
		{"booted drives are never freed", []step{
			{release: []int{0, 1}},
			{release: []int{0, 1, 7, -1}},
			{claim: []disk{{path: "/tasks/a/upper"}, {path: "/tasks/b/upper"}}, wantIdx: []int{4, 5}, wantSwap: []int{4, 5}},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newDriveSlots(boot, spares)
			for n, st := range c.steps {
				if st.claim == nil {
					if freed := s.release(st.release); !reflect.DeepEqual(freed, st.wantFreed) {
						t.Fatalf("step %d: release(%v) freed %v, want %v", n, st.release, freed, st.wantFreed)
					}
					for _, i := range st.wantFreed {
						if s.slots[i].path != s.slots[i].placeholder {
							t.Errorf("step %d: freed slot %d holds %s", n, i, s.slots[i].path)
						}
					}
					continue
				}
				before := append([]driveSlot(nil), s.slots...)
				idx, swap, err := s.claim(st.claim)
				if st.wantErr {
					if !errors.Is(err, errNoSlots) {
						t.Fatalf("step %d: claim = %v, want errNoSlots", n, err)
					}
					if !reflect.DeepEqual(s.slots, before) {
						t.Fatalf("step %d: a failed claim changed the slots:\n%+v\nwas\n%+v", n, s.slots, before)
					}
					continue
				}
				if err != nil || !reflect.DeepEqual(idx, st.wantIdx) || !reflect.DeepEqual(swap, st.wantSwap) {
					t.Fatalf("step %d: claim = %v %v %v, want %v %v", n, idx, swap, err, st.wantIdx, st.wantSwap)
				}
				for k, i := range idx {
					if s.slots[i].path != st.claim[k].path || s.slots[i].readOnly != st.claim[k].readOnly {
						t.Errorf("step %d: slot %d = %+v for %+v", n, i, s.slots[i], st.claim[k])
					}
				}
			}
		})
	}
}

func TestMakeSpares(t *testing.T) {
	ints := func(n int) *int { return &n }
	for _, c := range []struct {
		name                 string
		spare, writable      *int
		used                 int
		wantRO, wantWritable int
	}{
		{"defaults", nil, nil, 2, DefaultSpareDrives - DefaultSpareWritableDrives, DefaultSpareWritableDrives},
		{"none", ints(0), nil, 2, 0, 0},
		{"capped by the drive limit", ints(25), ints(3), vmm.MaxDrives - 4, 1, 3},
		{"no room at all", ints(4), ints(1), vmm.MaxDrives, 0, 0},
		{"all writable", ints(3), ints(3), 1, 0, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := &Config{RootDir: filepath.Join(dir, "root"), SpareDrives: c.spare, SpareWritableDrives: c.writable}
			spares, err := makeSpares(cfg, filepath.Join(dir, "run"), c.used)
			if err != nil {
				t.Fatal(err)
			}
			if err := vmm.CheckDrives(c.used + len(spares)); err != nil {
				t.Error(err)
			}
			ro, w, paths := 0, 0, map[string]bool{}
			for _, d := range spares {
				st, err := os.Stat(d.path)
				if err != nil || st.Size() != spareImageSize {
					t.Fatalf("placeholder %s: %v %v", d.path, st, err)
				}
				if d.readOnly {
					ro++
					continue
				}
				w++
				if paths[d.path] {
					t.Errorf("two writable spares share %s", d.path)
				}
				paths[d.path] = true
			}
			if ro != c.wantRO || w != c.wantWritable {
				t.Errorf("%d read-only and %d writable spares, want %d and %d", ro, w, c.wantRO, c.wantWritable)
			}
		})
	}
}
