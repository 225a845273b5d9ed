package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/govmm/vmm/guest/agent/protocol"
)

// TestMethodTable drives the method table directly, without root or
// containers: the Hello rule, param decoding (absent, malformed, with
// fields from a newer client, ignored for methods that take none), and
// the first refusal of every method. Every method in the table needs a
// case here.
func TestMethodTable(t *testing.T) {
	a := newAgent("/proc/self/exe", t.TempDir(), nil, t.Logf)
	t.Cleanup(a.shutdown)
	s := &session{a: a}
	ctx := context.Background()
	ref := `{"container_id":"nope","exec_id":"init"}`
	bindRoot := fmt.Sprintf(`{"id":"c1","rootfs":{"source":%q,"type":"bind"}}`, t.TempDir())
	cases := []struct {
		name, method, params string
		code                 string // "" for success
	}{
		{"ping before hello", protocol.MethodPing, ``, protocol.CodeFailedPrecondition},
		{"create before hello", protocol.MethodCreateContainer, bindRoot, protocol.CodeFailedPrecondition},
		{"hello, absent params", protocol.MethodHello, ``, protocol.CodeVersion},
		{"hello, malformed params", protocol.MethodHello, `[1]`, protocol.CodeInvalidArgument},
		{"hello, wrong version", protocol.MethodHello, `{"version":99}`, protocol.CodeVersion},
		{"hello, newer client's field", protocol.MethodHello, fmt.Sprintf(`{"version":%d,"client":"t","future":true}`, protocol.Version), ""},
		{"unknown method", "Frobnicate", `{}`, protocol.CodeUnimplemented},
		{"ping", protocol.MethodPing, ``, ""},
		{"ping ignores params", protocol.MethodPing, `[1,2]`, ""},
		{"version ignores params", protocol.MethodVersion, `"x"`, ""},
		{"create, malformed params", protocol.MethodCreateContainer, `{"id":7}`, protocol.CodeInvalidArgument},
		{"create, bad id", protocol.MethodCreateContainer, `{"id":"../x"}`, protocol.CodeInvalidArgument},
		{"create without cgroups", protocol.MethodCreateContainer, bindRoot, protocol.CodeFailedPrecondition},
		{"start, malformed params", protocol.MethodStartProcess, `{"process":1}`, protocol.CodeInvalidArgument},
		{"start in no container", protocol.MethodStartProcess, `{"container_id":"nope","process":{"args":["true"]}}`, protocol.CodeNotFound},
		{"exec as init", protocol.MethodExecProcess, `{"container_id":"nope","exec_id":"init","process":{"args":["true"]}}`, protocol.CodeInvalidArgument},
		{"exec in no container", protocol.MethodExecProcess, `{"container_id":"nope","exec_id":"e1","process":{"args":["true"]}}`, protocol.CodeNotFound},
		{"signal out of range", protocol.MethodSignal, `{"container_id":"nope","exec_id":"init","signal":65}`, protocol.CodeInvalidArgument},
		{"signal no process", protocol.MethodSignal, `{"container_id":"nope","exec_id":"init","signal":9}`, protocol.CodeNotFound},
		{"wait, malformed params", protocol.MethodWait, `[]`, protocol.CodeInvalidArgument},
		{"wait for no process", protocol.MethodWait, ref, protocol.CodeNotFound},
		{"close stdin of no process", protocol.MethodCloseStdin, ref, protocol.CodeNotFound},
		{"resize no process", protocol.MethodResizeTTY, `{"container_id":"nope","exec_id":"init","rows":24,"cols":80}`, protocol.CodeNotFound},
		{"destroy no container", protocol.MethodDestroyContainer, `{"id":"nope"}`, protocol.CodeNotFound},
		{"update, bad limit", protocol.MethodUpdateContainer, `{"id":"nope","resources":{"memory_max_bytes":5}}`, protocol.CodeInvalidArgument},
		{"update no container", protocol.MethodUpdateContainer, `{"id":"nope","resources":{"memory_max_bytes":1048576}}`, protocol.CodeNotFound},
		{"stats of no container", protocol.MethodContainerStats, `{"id":"nope"}`, protocol.CodeNotFound},
		// The table's agent has the real kernel calls: no Refresh here may
		// pass validation (it would set the host's clock).
		{"refresh, too little entropy", protocol.MethodRefresh, `{"entropy":"AAAA","realtime_ns":1700000000000000000}`, protocol.CodeInvalidArgument},
		{"sync, path outside /dev", protocol.MethodSyncBlockDevice, `{"path":"/etc/passwd","size_bytes":1}`, protocol.CodeInvalidArgument},
		// Nor may a ConfigureNetwork (it would reconfigure the host's network).
		{"network, bad MAC", protocol.MethodConfigureNetwork, `{"interfaces":[{"mac":"nope"}]}`, protocol.CodeInvalidArgument},
	}
	tested := map[string]bool{}
	for _, tc := range cases {
		tested[tc.method] = true
		var params json.RawMessage
		if tc.params != "" {
			params = json.RawMessage(tc.params)
		}
		res, err := s.handle(ctx, nil, tc.method, params)
		if tc.code == "" {
			if err != nil || res == nil {
				t.Errorf("%s: %s %s: %v, %v; want a result", tc.name, tc.method, tc.params, res, err)
			}
			continue
		}
		if !protocol.IsCode(err, tc.code) {
			t.Errorf("%s: %s %s: %v, %v; want code %s", tc.name, tc.method, tc.params, res, err, tc.code)
		}
	}
	for name := range a.methods {
		if !tested[name] {
			t.Errorf("method %s has no case", name)
		}
	}
}
