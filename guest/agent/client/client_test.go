package client

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/guest/agent/protocol"
)

// fakeVsock accepts one connection on a Unix socket, checks the hybrid
// vsock CONNECT line, answers reply, and then (if reply is OK) serves a
// minimal agent.
func fakeVsock(t *testing.T, reply string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		line, err := bufio.NewReader(nc).ReadString('\n')
		if err != nil || line != "CONNECT 1024\n" {
			t.Errorf("CONNECT line %q, %v", line, err)
			nc.Close()
			return
		}
		// The reply and the first bytes of the stream may arrive in one
		// read on the client side; the dialer must not swallow them.
		nc.Write([]byte(reply))
		if !strings.HasPrefix(reply, "OK ") {
			nc.Close()
			return
		}
		conn := protocol.NewConn(nc, func(ctx context.Context, c *protocol.Conn, method string, params json.RawMessage) (any, error) {
			switch method {
			case protocol.MethodHello:
				return protocol.HelloResponse{Version: protocol.Version, Agent: "fake"}, nil
			case protocol.MethodPing:
				return nil, nil
			}
			return nil, protocol.Errorf(protocol.CodeUnimplemented, "%s", method)
		})
		t.Cleanup(func() { conn.Close() })
	}()
	return path
}

func TestDialHybridVsock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := DialHybridVsock(ctx, fakeVsock(t, "OK 1073741824\n"), 1024)
	if err != nil {
		t.Fatal(err)
	}
	c, hello, err := New(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if hello.Agent != "fake" {
		t.Errorf("hello %+v", hello)
	}
	if err := c.Ping(ctx); err != nil {
		t.Error(err)
	}
	if _, err := c.Version(ctx); !protocol.IsCode(err, protocol.CodeUnimplemented) {
		t.Errorf("Version on the fake: %v", err)
	}
}

func TestDialHybridVsockRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := DialHybridVsock(ctx, fakeVsock(t, "FAILURE\n"), 1024); err == nil {
		t.Error("a refused CONNECT succeeded")
	}
	if _, err := DialHybridVsock(ctx, filepath.Join(t.TempDir(), "none"), 1024); err == nil {
		t.Error("dialing a missing socket succeeded")
	}
}
