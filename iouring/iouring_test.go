package iouring

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestLayoutMatchesUAPI(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"io_uring_params", unsafe.Sizeof(params{}), 120},
		{"io_uring_sqe", unsafe.Sizeof(sqe{}), 64},
		{"io_uring_cqe", unsafe.Sizeof(cqe{}), 16},
		{"sqe.user_data offset", unsafe.Offsetof(sqe{}.userData), 32},
		{"sqe.len offset", unsafe.Offsetof(sqe{}.len), 24},
		{"params.sq_off offset", unsafe.Offsetof(params{}.sqOff), 40},
		{"params.cq_off offset", unsafe.Offsetof(params{}.cqOff), 80},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d bytes, the kernel's is %d", c.name, c.got, c.want)
		}
	}
}

// newRing returns a ring, or fails: io_uring is part of every kernel the
// project supports, so a host without it is a finding, not a skip.
func newRing(t *testing.T, entries uint32) *Ring {
	t.Helper()
	r, err := New(entries)
	if err != nil {
		t.Fatalf("%v (kernel.io_uring_disabled=%s)", err, sysctl("/proc/sys/kernel/io_uring_disabled"))
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func sysctl(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return "?"
	}
	return string(bytes.TrimSpace(b))
}

// result is one reaped completion.
type result struct {
	userData uint64
	res      int32
}

// reapAll submits what is prepared and collects n completions.
func reapAll(t *testing.T, r *Ring, n int) map[uint64]int32 {
	t.Helper()
	if _, err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]int32{}
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d completions in 10 s", len(got), n)
		}
		if err := r.Wait(); err != nil {
			t.Fatal(err)
		}
		r.Reap(func(ud uint64, res int32) { got[ud] = res })
	}
	return got
}

func TestReadWriteFsync(t *testing.T) {
	r := newRing(t, 8)
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	a, b := bytes.Repeat([]byte("a"), 4096), bytes.Repeat([]byte("bc"), 1024)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.PrepWrite(fd, a, 0, 1))
	must(r.PrepWritev(fd, AppendIovecs(nil, [][]byte{b[:1000], b[1000:]}), 4096, 2))
	got := reapAll(t, r, 2)
	if got[1] != 4096 || got[2] != 2048 {
		t.Fatalf("write results %v, want 4096 and 2048", got)
	}
	must(r.PrepFsync(fd, true, 3))
	must(r.PrepFsync(fd, false, 4))
	if got := reapAll(t, r, 2); got[3] != 0 || got[4] != 0 {
		t.Fatalf("fsync results %v, want 0", got)
	}
	readA, readB1, readB2 := make([]byte, 4096), make([]byte, 24), make([]byte, 2024)
	iovs := AppendIovecs(nil, [][]byte{readB1, readB2})
	must(r.PrepRead(fd, readA, 0, 5))
	must(r.PrepReadv(fd, iovs, 4096, 6))
	must(r.PrepRead(fd, make([]byte, 100), 6144, 7)) // at the end of the file
	got = reapAll(t, r, 3)
	if got[5] != 4096 || got[6] != 2048 || got[7] != 0 {
		t.Fatalf("read results %v, want 4096, 2048 and 0 (end of file)", got)
	}
	if !bytes.Equal(readA, a) || !bytes.Equal(append(readB1, readB2...), b) {
		t.Fatal("read back other bytes than written")
	}
}

func TestErrorsComeBackAsNegativeErrno(t *testing.T) {
	r := newRing(t, 4)
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if err := r.PrepRead(-1, make([]byte, 8), 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := r.PrepRead(int(dir.Fd()), make([]byte, 8), 0, 2); err != nil {
		t.Fatal(err)
	}
	got := reapAll(t, r, 2)
	if got[1] != -int32(unix.EBADF) || got[2] != -int32(unix.EISDIR) {
		t.Fatalf("results %v, want -EBADF and -EISDIR", got)
	}
}

func TestFullSubmissionQueue(t *testing.T) {
	r := newRing(t, 4)
	n := int(r.Entries())
	for i := range n {
		if err := r.PrepNop(uint64(i)); err != nil {
			t.Fatalf("nop %d of %d: %v", i, n, err)
		}
	}
	if err := r.PrepNop(99); !errors.Is(err, ErrFull) {
		t.Fatalf("prep into a full queue: %v, want ErrFull", err)
	}
	if got := reapAll(t, r, n); len(got) != n {
		t.Fatalf("%d completions, want %d", len(got), n)
	}
	// Submitted and reaped: the slots are free again, many times over.
	for round := range 3 * n {
		if err := r.PrepNop(uint64(round)); err != nil {
			t.Fatal(err)
		}
		reapAll(t, r, 1)
	}
}

// An operation the kernel can't finish at once (a read from an empty pipe)
// completes later, and Wait, in another goroutine, sees it then.
func TestWaitForLaterCompletion(t *testing.T) {
	r := newRing(t, 4)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	buf := make([]byte, 16)
	if err := r.PrepRead(p[0], buf, ^uint64(0), 7); err != nil { // -1: the pipe's own position
		t.Fatal(err)
	}
	if _, err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	if n := r.Reap(func(uint64, int32) {}); n != 0 {
		t.Fatalf("%d completions before the pipe had data", n)
	}
	done := make(chan result, 1)
	go func() {
		if err := r.Wait(); err != nil {
			done <- result{0, -1}
			return
		}
		var got result
		r.Reap(func(ud uint64, res int32) { got = result{ud, res} })
		done <- got
	}()
	select {
	case got := <-done:
		t.Fatalf("Wait returned %v before the pipe had data", got)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := unix.Write(p[1], []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if got != (result{7, 5}) || string(buf[:5]) != "hello" {
			t.Fatalf("completion %v with %q, want {7 5} with hello", got, buf[:5])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no completion 10 s after the pipe got data")
	}
}

func TestClosedRing(t *testing.T) {
	r, err := New(4)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.PrepNop(1); err == nil {
		t.Fatal("prep on a closed ring succeeded")
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// Operations taken back before the kernel consumed them never run, and
// the ring goes on as before.
func TestRetract(t *testing.T) {
	r := newRing(t, 4)
	for ud := range uint64(3) {
		if err := r.PrepNop(ud); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.Retract(); len(got) != 3 || got[0] != 0 || got[2] != 2 {
		t.Fatalf("Retract = %v, want [0 1 2]", got)
	}
	if n, err := r.Submit(); n != 0 || err != nil {
		t.Fatalf("Submit after Retract = %d, %v; want nothing to submit", n, err)
	}
	if n := r.Reap(func(uint64, int32) {}); n != 0 {
		t.Fatalf("%d completions of retracted operations", n)
	}
	if err := r.PrepNop(7); err != nil {
		t.Fatal(err)
	}
	if got := reapAll(t, r, 1); len(got) != 1 || got[7] != 0 {
		t.Fatalf("after Retract: %v, want the new nop", got)
	}
	if got := r.Retract(); len(got) != 0 {
		t.Fatalf("Retract with nothing pending = %v", got)
	}
}

func TestSubmitAll(t *testing.T) {
	r := newRing(t, 4)
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for ud := range uint64(2) {
		if err := r.PrepNop(ud); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.PrepRead(int(dir.Fd()), make([]byte, 8), 0, 2); err != nil {
		t.Fatal(err)
	}
	res := []int32{9, 9, 9}
	if err := r.SubmitAll(res); err != nil {
		t.Fatal(err)
	}
	if res[0] != 0 || res[1] != 0 || res[2] != -int32(unix.EISDIR) {
		t.Fatalf("results %v, want [0 0 -EISDIR]", res)
	}
}

// WaitTimeout returns after its timeout with nothing to reap, and at once
// when something is.
func TestWaitTimeout(t *testing.T) {
	r := newRing(t, 4)
	if !r.extArg {
		t.Fatal("the kernel's io_uring takes no timeout (IORING_FEAT_EXT_ARG, Linux 5.11): older than any the project supports")
	}
	start := time.Now()
	if err := r.WaitTimeout(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("WaitTimeout(50ms) with nothing in flight returned after %v", d)
	}
	if n := r.Reap(func(uint64, int32) {}); n != 0 {
		t.Fatalf("%d completions from nothing", n)
	}
	if err := r.PrepNop(1); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := r.WaitTimeout(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("WaitTimeout with a completion ready took %v", d)
	}
	if n := r.Reap(func(uint64, int32) {}); n != 1 {
		t.Fatalf("%d completions, want the nop", n)
	}
}
