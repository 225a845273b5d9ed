package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// socketPair is a connected pair of Unix stream sockets: unlike net.Pipe
// they buffer in the kernel, as the vsock and Unix sockets the protocol
// runs on do.
func socketPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

type usage struct {
	goroutines int
	heap       uint64
	stack      uint64
}

func measure() usage {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return usage{runtime.NumGoroutine(), m.HeapAlloc, m.StackInuse}
}

// flood writes up to n request frames of 14 bytes to w until w stops
// taking them, and returns how many it wrote.
func flood(t *testing.T, w net.Conn, n int) int {
	t.Helper()
	const batch = 512
	var buf []byte
	for i := range batch {
		buf = appendFrame(buf, FrameRequest, uint32(i+1), []byte(`{"method":"x"}`))
	}
	sent := 0
	for sent < n {
		// The receiver pushing back (its socket full) ends the flood.
		w.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		k, err := w.Write(buf)
		sent += k / (len(buf) / batch)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return sent
			}
			t.Fatalf("flood: %v", err)
		}
	}
	return sent
}

// TestRequestFloodIsBounded floods one end with requests from a peer that
// never reads a response: the goroutines, heap and stacks the flood costs
// stay bounded on either end (the agent serves with a handler, the host
// client without one), and closing the connection gives them all back.
// Before the bound, 200,000 such frames cost about 200,000 goroutines,
// 140 MiB of heap and 780 MiB of stacks.
func TestRequestFloodIsBounded(t *testing.T) {
	const (
		frames = 200_000
		// Beyond the handlers themselves: the reader and the runtime's
		// and the test's own few.
		slack     = 16
		heapBound = 8 << 20
		// maxHandlers goroutines blocked writing, at 8 KiB of stack each
		// with room for growth.
		stackBound = maxHandlers * 32 << 10
	)
	tests := []struct {
		name    string
		handler Handler
	}{
		{"agent, quick handler", func(context.Context, *Conn, string, json.RawMessage) (any, error) {
			return "pong", nil
		}},
		{"agent, handler that blocks", func(ctx context.Context, _ *Conn, _ string, _ json.RawMessage) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}},
		{"host client, no handler", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := measure()
			ours, peer := socketPair(t)
			defer peer.Close()
			c := NewConn(ours, tt.handler)
			sent := flood(t, peer, frames)
			// Let the last admitted handlers start and block.
			time.Sleep(200 * time.Millisecond)
			got := measure()
			t.Logf("%d frames sent: %+d goroutines, %+d KiB heap, %+d KiB stack",
				sent, got.goroutines-base.goroutines,
				(int64(got.heap)-int64(base.heap))>>10, (int64(got.stack)-int64(base.stack))>>10)
			if d := got.goroutines - base.goroutines; d > maxHandlers+slack {
				t.Errorf("%d more goroutines, want at most %d", d, maxHandlers+slack)
			}
			if got.heap > base.heap && got.heap-base.heap > heapBound {
				t.Errorf("heap grew by %d bytes, want at most %d", got.heap-base.heap, heapBound)
			}
			if got.stack > base.stack && got.stack-base.stack > stackBound {
				t.Errorf("stacks grew by %d bytes, want at most %d", got.stack-base.stack, stackBound)
			}
			select {
			case <-c.Done():
				t.Fatalf("the flood closed the connection: %v", c.Err())
			default:
			}

			c.Close()
			deadline := time.Now().Add(5 * time.Second)
			for runtime.NumGoroutine() > base.goroutines+2 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := runtime.NumGoroutine(); n > base.goroutines+2 {
				t.Errorf("%d goroutines after Close, baseline %d", n, base.goroutines)
			}
		})
	}
}

// TestRequestsBeyondTheBoundAreRefused fills every handler slot with calls
// that block and checks that one more call is answered
// resource_exhausted at once, that calls are served again once the slots
// free, and that the connection stays up throughout.
func TestRequestsBeyondTheBoundAreRefused(t *testing.T) {
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(maxHandlers)
	client, server := pair(t, func(ctx context.Context, _ *Conn, method string, _ json.RawMessage) (any, error) {
		if method == "block" {
			started.Done()
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return method, nil
	})
	ctx := ctxT(t)
	errs := make(chan error, maxHandlers)
	for range maxHandlers {
		go func() { errs <- client.Call(ctx, "block", nil, nil) }()
	}
	started.Wait()

	err := client.Call(ctx, "quick", nil, nil)
	if !IsCode(err, CodeResourceExhausted) {
		t.Fatalf("call beyond %d in flight: %v, want %s", maxHandlers, err, CodeResourceExhausted)
	}
	close(release)
	for range maxHandlers {
		if err := <-errs; err != nil {
			t.Errorf("blocked call: %v", err)
		}
	}
	var got string
	if err := client.Call(ctx, "quick", nil, &got); err != nil || got != "quick" {
		t.Errorf("call after the slots freed: %q %v", got, err)
	}
	// A handler's slot frees just after its response is written.
	var handlers, bytes int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		server.mu.Lock()
		handlers, bytes = server.handlers, server.handlerBytes
		server.mu.Unlock()
		if handlers == 0 && bytes == 0 || time.Now().After(deadline) {
			break
		}
	}
	if handlers != 0 || bytes != 0 {
		t.Errorf("after every call returned: %d handlers, %d bytes still counted", handlers, bytes)
	}
}

// TestRequestBytesAreBounded checks that large requests are admitted only
// while their payloads fit maxHandlerBytes together.
func TestRequestBytesAreBounded(t *testing.T) {
	c := &Conn{}
	big := MaxPayload
	n := 0
	for c.admit(big) {
		n++
	}
	if n != maxHandlerBytes/big {
		t.Errorf("admitted %d requests of %d bytes, want %d", n, big, maxHandlerBytes/big)
	}
	if !c.admit(0) {
		t.Error("an empty request was refused while slots are free")
	}
	c.release(big)
	if !c.admit(big) {
		t.Error("a request that fits again was refused after a release")
	}
}
