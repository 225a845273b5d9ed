package protocol

import (
	"encoding/json"
	"testing"
)

func goodNetwork() ConfigureNetworkRequest {
	return ConfigureNetworkRequest{
		Interfaces: []NetInterface{{MAC: "02:00:0a:58:00:05", MTU: 1450, Addresses: []string{"10.88.0.5/16"}}},
		Routes: []NetRoute{
			{MAC: "02:00:0a:58:00:05", Dest: "10.1.0.0/16", Gateway: "10.88.0.1"},
			{MAC: "02:00:0a:58:00:05", Gateway: "10.88.0.1"},
		},
	}
}

func TestConfigureNetworkValidate(t *testing.T) {
	if err := goodNetwork().Validate(); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	tests := []struct {
		name string
		mod  func(r *ConfigureNetworkRequest)
	}{
		{"bad MAC", func(r *ConfigureNetworkRequest) { r.Interfaces[0].MAC = "zz" }},
		{"64-bit MAC", func(r *ConfigureNetworkRequest) { r.Interfaces[0].MAC = "02:00:00:00:00:00:00:01" }},
		{"MAC twice", func(r *ConfigureNetworkRequest) { r.Interfaces = append(r.Interfaces, r.Interfaces[0]) }},
		{"MTU too small", func(r *ConfigureNetworkRequest) { r.Interfaces[0].MTU = 67 }},
		{"MTU too large", func(r *ConfigureNetworkRequest) { r.Interfaces[0].MTU = MaxMTU + 1 }},
		{"address without length", func(r *ConfigureNetworkRequest) { r.Interfaces[0].Addresses = []string{"10.88.0.5"} }},
		{"too many addresses", func(r *ConfigureNetworkRequest) {
			r.Interfaces[0].Addresses = make([]string, MaxNetAddresses+1)
			for i := range r.Interfaces[0].Addresses {
				r.Interfaces[0].Addresses[i] = "10.0.0.1/8"
			}
		}},
		{"too many interfaces", func(r *ConfigureNetworkRequest) { r.Interfaces = make([]NetInterface, MaxNetInterfaces+1) }},
		{"too many routes", func(r *ConfigureNetworkRequest) { r.Routes = make([]NetRoute, MaxNetRoutes+1) }},
		{"route to unknown NIC", func(r *ConfigureNetworkRequest) { r.Routes[0].MAC = "02:00:00:00:00:09" }},
		{"default without gateway", func(r *ConfigureNetworkRequest) { r.Routes[1].Gateway = "" }},
		{"bad gateway", func(r *ConfigureNetworkRequest) { r.Routes[1].Gateway = "10.88.0" }},
		{"gateway with zone", func(r *ConfigureNetworkRequest) { r.Routes[1].Gateway = "fe80::1%eth0" }},
		{"mixed families", func(r *ConfigureNetworkRequest) { r.Routes[0].Dest = "fd00::/64" }},
		{"bad destination", func(r *ConfigureNetworkRequest) { r.Routes[0].Dest = "10.1.0.0/33" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := goodNetwork()
			tc.mod(&r)
			if err := r.Validate(); !IsCode(err, CodeInvalidArgument) {
				t.Errorf("Validate = %v, want %s", err, CodeInvalidArgument)
			}
		})
	}
}

// FuzzConfigureNetworkValidate decodes arbitrary request bodies: Validate
// never panics, and what it accepts stays within the bounds.
func FuzzConfigureNetworkValidate(f *testing.F) {
	good, _ := json.Marshal(goodNetwork())
	f.Add(good)
	f.Add([]byte(`{"interfaces":[{"mac":"02:00:00:00:00:01"}],"routes":[{"mac":"02:00:00:00:00:01","dest":"::/0","gateway":"fe80::1"}]}`))
	f.Add([]byte(`{"interfaces":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r ConfigureNetworkRequest
		if json.Unmarshal(data, &r) != nil {
			return
		}
		if r.Validate() != nil {
			return
		}
		if len(r.Interfaces) > MaxNetInterfaces || len(r.Routes) > MaxNetRoutes {
			t.Fatalf("accepted %d interfaces, %d routes", len(r.Interfaces), len(r.Routes))
		}
		for _, itf := range r.Interfaces {
			if len(itf.Addresses) > MaxNetAddresses || (itf.MTU != 0 && (itf.MTU < MinMTU || itf.MTU > MaxMTU)) {
				t.Fatalf("accepted interface %+v", itf)
			}
		}
	})
}
