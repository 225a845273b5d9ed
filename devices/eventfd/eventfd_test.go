package eventfd

import (
	"testing"
	"time"
)

func TestSignalWaitClose(t *testing.T) {
	e, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Signal(); err != nil {
		t.Fatal(err)
	}
	if err := e.Signal(); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Wait(); err != nil || n != 2 {
		t.Fatalf("Wait = %d, %v; want 2, nil", n, err)
	}
	done := make(chan error)
	go func() { _, err := e.Wait(); done <- err }()
	time.Sleep(10 * time.Millisecond)
	e.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Wait after Close succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Wait")
	}
}
