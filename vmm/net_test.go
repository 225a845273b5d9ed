package vmm

import (
	"strings"
	"testing"
)

// TestCheckNets checks that bad interface settings are refused, naming
// the interface, before any tap is opened.
func TestCheckNets(t *testing.T) {
	for _, tt := range []struct {
		nets []NetConfig
		want string
	}{
		{[]NetConfig{{ID: "eth0", Tap: "t0", MAC: "zz"}}, "virtio-net eth0"},
		{[]NetConfig{{ID: "a", Tap: "t0"}, {ID: "a", Tap: "t1"}}, `"a" used twice`},
		{[]NetConfig{{Tap: "t0"}, {Tap: "t1", MAC: "01:00:5e:00:00:01"}}, "virtio-net net1: MAC 01:00:5e:00:00:01 is not a unicast"},
		{[]NetConfig{{ID: "q", Tap: "t0", Queues: -1}}, "virtio-net q: -1 queue pairs is outside 1-16"},
		{[]NetConfig{{ID: "q", Tap: "t0", Queues: MaxNetQueues + 1}}, "virtio-net q: 17 queue pairs is outside 1-16"},
	} {
		if _, err := checkNets(tt.nets); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("checkNets(%+v): %v, want an error containing %q", tt.nets, err, tt.want)
		}
	}
	devs, err := checkNets([]NetConfig{{Tap: "t0"}, {Tap: "t1", MAC: "06:00:AC:10:00:02"}})
	if err != nil {
		t.Fatal(err)
	}
	if devs[0].id != "net0" || devs[0].mac[0]&3 != 2 || devs[1].mac.String() != "06:00:ac:10:00:02" {
		t.Errorf("devices %+v", devs)
	}
	for _, q := range []struct{ in, want int }{{0, 1}, {1, 1}, {4, 4}, {MaxNetQueues, MaxNetQueues}} {
		d, err := checkNets([]NetConfig{{Tap: "t0", Queues: q.in}})
		if err != nil || d[0].queues != q.want {
			t.Errorf("Queues %d: %+v, %v; want %d pairs", q.in, d, err, q.want)
		}
	}
	again, _ := checkNets([]NetConfig{{Tap: "t0"}})
	if again[0].mac.String() != devs[0].mac.String() {
		t.Errorf("default MAC not stable: %v then %v", devs[0].mac, again[0].mac)
	}
}
