package protocol

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pair connects a client Conn to a server Conn with handler.
func pair(t *testing.T, handler Handler) (client, server *Conn) {
	a, b := net.Pipe()
	client = NewConn(a, nil)
	server = NewConn(b, handler)
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

func TestCallAndErrors(t *testing.T) {
	client, _ := pair(t, func(ctx context.Context, conn *Conn, method string, params json.RawMessage) (any, error) {
		switch method {
		case "echo":
			var s string
			if err := json.Unmarshal(params, &s); err != nil {
				return nil, Errorf(CodeInvalidArgument, "%v", err)
			}
			return strings.ToUpper(s), nil
		case "fail":
			return nil, errors.New("plain error")
		case "panic":
			var m map[string]int
			//lint:ignore SA5000 the handler must panic, with a runtime error
			m["boom"]++
		}
		return nil, Errorf(CodeUnimplemented, "no %s", method)
	})
	ctx := ctxT(t)
	var got string
	if err := client.Call(ctx, "echo", "hi", &got); err != nil || got != "HI" {
		t.Errorf("echo: %q %v", got, err)
	}
	if err := client.Call(ctx, "echo", 42, &got); !IsCode(err, CodeInvalidArgument) {
		t.Errorf("echo 42: %v", err)
	}
	if err := client.Call(ctx, "fail", nil, nil); !IsCode(err, CodeInternal) || !strings.Contains(err.Error(), "plain error") {
		t.Errorf("fail: %v", err)
	}
	if err := client.Call(ctx, "panic", nil, nil); !IsCode(err, CodeInternal) || !strings.Contains(err.Error(), "panic") {
		t.Errorf("panic: %v", err)
	}
	if err := client.Call(ctx, "other", nil, nil); !IsCode(err, CodeUnimplemented) {
		t.Errorf("other: %v", err)
	}
	// Still serving after all that.
	if err := client.Call(ctx, "echo", "again", &got); err != nil || got != "AGAIN" {
		t.Errorf("echo after errors: %q %v", got, err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	release := make(chan struct{})
	client, _ := pair(t, func(ctx context.Context, conn *Conn, method string, params json.RawMessage) (any, error) {
		if method == "block" {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return method, nil
	})
	ctx := ctxT(t)
	done := make(chan error, 1)
	go func() { done <- client.Call(ctx, "block", nil, nil) }()
	// A blocked call does not hold up others.
	var got string
	if err := client.Call(ctx, "quick", nil, &got); err != nil || got != "quick" {
		t.Fatalf("quick: %q %v", got, err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestStreamFlowControl sends far more than the window through a reader
// that is slow to start, and checks every byte arrives in order.
func TestStreamFlowControl(t *testing.T) {
	client, server := pair(t, nil)
	cs, err := client.OpenStream(1)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := server.OpenStream(1)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4*InitialWindow+12345)
	rand.Read(data)
	writeDone := make(chan error, 1)
	go func() {
		_, err := cs.Write(data)
		if err == nil {
			err = cs.CloseWrite()
		}
		writeDone <- err
	}()
	select {
	case err := <-writeDone:
		t.Fatalf("writer finished before the reader read anything (no flow control): %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	got, err := io.ReadAll(ss)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-writeDone; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("got %d bytes, sent %d, contents differ", len(got), len(data))
	}
	// Control calls still work while streams are busy.
	if _, err := client.OpenStream(1); !IsCode(err, CodeAlreadyExists) {
		t.Errorf("reusing stream id 1: %v", err)
	}
	if _, err := client.OpenStream(0); !IsCode(err, CodeInvalidArgument) {
		t.Errorf("stream id 0: %v", err)
	}
}

func TestCloseReadAndClose(t *testing.T) {
	client, server := pair(t, nil)
	cs, _ := client.OpenStream(7)
	ss, _ := server.OpenStream(7)
	cs.Write([]byte("before"))
	// Wait for the data to be buffered on the server side.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ss.mu.Lock()
		n := len(ss.buf)
		ss.mu.Unlock()
		if n == 6 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	ss.CloseRead()
	got, err := io.ReadAll(ss)
	if err != nil || string(got) != "before" {
		t.Errorf("after CloseRead: %q %v", got, err)
	}
	cs.Close()
	if _, err := cs.Write([]byte("x")); err == nil {
		t.Error("write to a closed stream succeeded")
	}
}

func TestConnectionLoss(t *testing.T) {
	block := make(chan struct{})
	client, server := pair(t, func(ctx context.Context, conn *Conn, method string, params json.RawMessage) (any, error) {
		<-block
		return nil, nil
	})
	defer close(block)
	cs, _ := client.OpenStream(3)
	errc := make(chan error, 1)
	go func() { errc <- client.Call(context.Background(), "hang", nil, nil) }()
	readErr := make(chan error, 1)
	go func() {
		_, err := cs.Read(make([]byte, 1))
		readErr <- err
	}()
	time.Sleep(50 * time.Millisecond)
	server.Close()
	if err := <-errc; !IsCode(err, CodeUnavailable) {
		t.Errorf("call on a lost connection: %v", err)
	}
	if err := <-readErr; err == nil {
		t.Error("read on a lost connection succeeded")
	}
	<-client.Done()
	if err := client.Call(context.Background(), "late", nil, nil); !IsCode(err, CodeUnavailable) {
		t.Errorf("call after close: %v", err)
	}
}

// rawFrame writes one hand-made frame.
func rawFrame(typ byte, id uint32, payload []byte) []byte {
	return appendFrame(nil, typ, id, payload)
}

func TestMalformedFrames(t *testing.T) {
	a, b := net.Pipe()
	server := NewConn(b, func(ctx context.Context, conn *Conn, method string, params json.RawMessage) (any, error) {
		return "ok", nil
	})
	defer server.Close()
	defer a.Close()
	var mu sync.Mutex
	go func() {
		mu.Lock()
		defer mu.Unlock()
		a.Write(rawFrame(FrameRequest, 1, []byte("not json")))
		a.Write(rawFrame(FrameData, 99, []byte("for nobody")))
		a.Write(rawFrame(42, 1, []byte("unknown type")))
		a.Write(rawFrame(FrameRequest, 2, []byte(`{"method":"x"}`)))
	}()
	for want := 1; want <= 2; want++ {
		f, err := readFrame(a)
		if err != nil {
			t.Fatal(err)
		}
		var resp Response
		json.Unmarshal(f.payload, &resp)
		switch f.id {
		case 1:
			if resp.Error == nil || resp.Error.Code != CodeInvalidArgument {
				t.Errorf("reply to garbage: %s", f.payload)
			}
		case 2:
			if resp.Error != nil || string(resp.Result) != `"ok"` {
				t.Errorf("reply to a good request: %s", f.payload)
			}
		}
	}
	// A frame over the limit ends the connection.
	var hdr [headerSize]byte
	binary.BigEndian.PutUint32(hdr[:], MaxPayload+1)
	hdr[4] = FrameRequest
	mu.Lock()
	a.Write(hdr[:])
	mu.Unlock()
	select {
	case <-server.Done():
		if !errors.Is(server.Err(), ErrFrameTooLarge) {
			t.Errorf("closed with %v", server.Err())
		}
	case <-time.After(5 * time.Second):
		t.Error("oversized frame did not close the connection")
	}
}
