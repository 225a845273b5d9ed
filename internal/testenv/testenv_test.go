package testenv

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// recorder stands in for a test: it records a skip or a failure instead
// of ending the goroutine.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper()          {}
func (r *recorder) Skip(args ...any) { r.skipped = fmt.Sprint(args...) }
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

func TestStrict(t *testing.T) {
	for _, tt := range []struct {
		value string
		want  bool
	}{{"1", true}, {"", false}, {"0", false}, {"yes", false}} {
		t.Setenv(StrictVar, tt.value)
		if got := Strict(); got != tt.want {
			t.Errorf("%s=%q: Strict() = %v, want %v", StrictVar, tt.value, got, tt.want)
		}
	}
}

func TestRequire(t *testing.T) {
	_, kvmErr := os.Stat(KVMDevice)
	for _, tt := range []struct {
		name string
		call func(testing.TB)
		stop bool     // the host can't run the test
		says []string // what the reason must name
	}{
		{"Skip", func(t testing.TB) { Skip(t, "no frobnicator") }, true, []string{"no frobnicator"}},
		{"Skipf", func(t testing.TB) { Skipf(t, "no %s", "tap") }, true, []string{"no tap"}},
		{"RequireCommand present", func(t testing.TB) {
			if RequireCommand(t, "sh", "dash") == "" {
				t.Fatalf("sh: no path")
			}
		}, false, nil},
		{"RequireCommand missing", func(t testing.TB) {
			RequireCommand(t, "vmm-testenv-no-such-command", "vmm-no-such-package")
		}, true, []string{"vmm-testenv-no-such-command", "vmm-no-such-package", "make deps"}},
		{"RequireRoot", func(t testing.TB) { RequireRoot(t, "mounts") }, os.Geteuid() != 0, []string{"root", "mounts"}},
		{"RequireKVM", RequireKVM, kvmErr != nil, []string{KVMDevice}},
	} {
		for _, strict := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/strict=%v", tt.name, strict), func(t *testing.T) {
				t.Setenv(StrictVar, map[bool]string{false: "", true: "1"}[strict])
				r := &recorder{TB: t}
				tt.call(r)
				switch {
				case !tt.stop:
					if r.skipped != "" || r.failed != "" {
						t.Fatalf("skipped %q, failed %q; want neither", r.skipped, r.failed)
					}
					return
				case strict && (r.failed == "" || r.skipped != ""):
					t.Fatalf("strict: skipped %q, failed %q; want a failure only", r.skipped, r.failed)
				case !strict && (r.skipped == "" || r.failed != ""):
					t.Fatalf("skipped %q, failed %q; want a skip only", r.skipped, r.failed)
				}
				for _, s := range tt.says {
					if !strings.Contains(r.skipped+r.failed, s) {
						t.Errorf("reason %q does not name %q", r.skipped+r.failed, s)
					}
				}
				if strict && !strings.Contains(r.failed, StrictVar) {
					t.Errorf("failure %q does not say it comes from %s", r.failed, StrictVar)
				}
			})
		}
	}
}

// LookCommand finds commands outside PATH in the sbin directories, where
// a non-root PATH may not reach.
func TestLookCommandSbin(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/nologin"); err != nil {
		Skip(t, "no /usr/sbin/nologin to look for")
	}
	t.Setenv("PATH", "/nonexistent")
	if p, err := LookCommand("nologin"); err != nil || p != "/usr/sbin/nologin" {
		t.Errorf("LookCommand(nologin) with an empty PATH = %q, %v; want /usr/sbin/nologin", p, err)
	}
}
