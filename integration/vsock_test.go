package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	agent "github.com/govmm/vmm/guest/agent/client"
)

// vsockEcho talks to the test guest's vsock echo server (vsock=1,
// guest/testguest/virtio_vsock.c): first a CONNECT to a port nobody
// listens on, which must be refused (closed without "OK"), then a
// round trip of n random bytes through guest port 1234, and checks the
// guest's report of what it echoed.
func vsockEcho(t *testing.T, v *VM, sock string, n int) {
	t.Helper()
	_, off := v.WaitFor(regexp.MustCompile(`testguest: vsock listening port=1234\r?\n`), 0, testGuestTimeout)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if c, err := agent.DialHybridVsock(ctx, sock, 4321); err == nil {
		c.Close()
		t.Fatal("CONNECT to guest port 4321 (no listener) succeeded")
	} else {
		t.Logf("refused as expected after %v: %v", time.Since(start), err)
	}
	_, off = v.WaitFor(regexp.MustCompile(`testguest: vsock refused port=4321\r?\n`), off, testGuestTimeout)

	c, err := agent.DialHybridVsock(ctx, sock, 1234)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, n)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, n)
	c.SetReadDeadline(time.Now().Add(testGuestTimeout))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	h := fnv.New32a()
	h.Write(data)
	if string(got) != string(data) {
		t.Fatal("echo differs from what was sent")
	}
	c.Close()
	m, _ := v.WaitFor(regexp.MustCompile(`testguest: vsock echo bytes=(\d+) fnv=(0x[0-9a-f]+)\r?\n`), off, testGuestTimeout)
	if want := fmt.Sprint(n); m[1] != want || m[2] != fmt.Sprintf("%#x", h.Sum32()) {
		t.Errorf("guest echoed %s bytes with FNV-1a %s, want %s and %#x", m[1], m[2], want, h.Sum32())
	}
}

// TestVirtioVsock boots the test guest with a vsock device on the command
// line and talks to its echo server through the hybrid Unix socket; then
// the guest connects to host port 5000, served on "<uds>_5000".
func TestVirtioVsock(t *testing.T) {
	sock := filepath.Join(apiDir(t), "v.sock")
	ln, err := net.Listen("unix", sock+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(testGuestTimeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			served <- fmt.Sprintf("reading the guest's line: %v", err)
			return
		}
		io.WriteString(c, "hello from the host\n")
		// The guest closes after our answer.
		if n, err := io.Copy(io.Discard, c); n != 0 || err != nil {
			served <- fmt.Sprintf("after the answer: %d more bytes, %v", n, err)
			return
		}
		served <- line
	}()
	start := time.Now()
	v := Start(t, "--kernel", filepath.Join(shared.testGuest, "testguest.elf"), "--debug-exit",
		"--vsock", "cid=3,uds="+sock, "--cmdline", "vsock=1 vsock_connect=5000 exit=7")
	vsockEcho(t, v, sock, 20<<10) // more than the guest's 16 KiB buf_alloc
	select {
	case got := <-served:
		if got != "hello from the guest\n" {
			t.Errorf("guest-initiated connection: %q", got)
		}
	case <-time.After(testGuestTimeout):
		t.Fatal("the guest did not connect to host port 5000")
	}
	if code := v.Wait(testGuestTimeout); code != 7 {
		t.Fatalf("exit status %d, want 7", code)
	}
	checkLines(t, v.Output(), []string{
		"testguest: vsock device=1 cid=3",
		"testguest: vsock listening port=1234",
		"testguest: vsock refused port=4321",
		"testguest: vsock accepted port=1234 peer=1073741825",
		"testguest: vsock connect port=5000 ok",
		"testguest: vsock got hello from the host",
	})
	t.Logf("boot to exit: %v", time.Since(start))
	requireGone(t, sock)
}

// TestVirtioVsockAPI configures the device with PUT /vsock and boots with
// InstanceStart.
func TestVirtioVsockAPI(t *testing.T) {
	ctx := context.Background()
	dir := apiDir(t)
	sock, vsock := filepath.Join(dir, "api.sock"), filepath.Join(dir, "v.sock")
	v := Start(t, "--api-sock", sock, "--debug-exit")
	c := apiClient(t, sock)
	if err := c.PutBootSource(ctx, filepath.Join(shared.testGuest, "testguest.elf"), "", "vsock=1 exit=8"); err != nil {
		t.Fatal(err)
	}
	if err := c.PutVsock(ctx, 5, vsock); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	vsockEcho(t, v, vsock, 4<<10)
	if code := v.Wait(testGuestTimeout); code != 8 {
		t.Fatalf("exit status %d, want 8", code)
	}
	checkLines(t, v.Output(), []string{"testguest: vsock device=1 cid=5"})
}
