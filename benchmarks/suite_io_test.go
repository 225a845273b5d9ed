package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/internal/testenv"
)

func TestParseLdd(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffd)\n" +
		"\tlibiperf.so.0 => /lib/x86_64-linux-gnu/libiperf.so.0 (0x00007f2e)\n" +
		"\tlibceph-common.so.2 => /usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2 (0x00007fb5)\n" +
		"\tlibmissing.so.1 => not found\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f2e)\n"
	got := parseLdd([]byte(out))
	want := []string{"/lib/x86_64-linux-gnu/libiperf.so.0", "/usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2",
		"/lib64/ld-linux-x86-64.so.2"}
	if !slices.Equal(got, want) {
		t.Errorf("parseLdd = %q, want %q", got, want)
	}
}

func TestParseStatTicks(t *testing.T) {
	for _, tc := range []struct {
		line  string
		comm  string
		ticks uint64
		bad   bool
	}{
		{line: "1234 (vcpu0) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 40 0 0 20 0 1 0 100 0 0", comm: "vcpu0", ticks: 290},
		{line: "99 (CPU 0/KVM) R 1 99 99 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0", comm: "CPU 0/KVM", ticks: 10},
		{line: "5 (a) b)) S 1 5 5 0 -1 0 0 0 0 0 1 2 0 0", comm: "a) b)", ticks: 3},
		{line: "5 vcpu0 S 1", bad: true},
		{line: "5 (x) S 1 2 3", bad: true},
		{line: "5 (x) S 1 5 5 0 -1 0 0 0 0 0 x 2 0 0", bad: true},
	} {
		comm, ticks, err := parseStatTicks(tc.line)
		if tc.bad {
			if err == nil {
				t.Errorf("parseStatTicks(%q) succeeded, want an error", tc.line)
			}
			continue
		}
		if err != nil || comm != tc.comm || ticks != tc.ticks {
			t.Errorf("parseStatTicks(%q) = %q, %d, %v; want %q, %d", tc.line, comm, ticks, err, tc.comm, tc.ticks)
		}
	}
}

func TestIsVCPUThread(t *testing.T) {
	for comm, want := range map[string]bool{
		"vcpu0": true, "vcpu12": true, "CPU 0/KVM": true, "CPU 3/KVM": true,
		"vmm": false, "qemu-system-x86": false, "IO mon_iothread": false, "worker": false,
	} {
		if got := isVCPUThread(comm); got != want {
			t.Errorf("isVCPUThread(%q) = %v, want %v", comm, got, want)
		}
	}
}

func TestThreadCPUSplit(t *testing.T) {
	before := ThreadCPU{Total: 10 * time.Second, VCPU: 8 * time.Second}
	after := ThreadCPU{Total: 13 * time.Second, VCPU: 10 * time.Second}
	if d := after.Sub(before).Device(); d != time.Second {
		t.Errorf("device CPU %v, want 1s", d)
	}
}

// TestReadThreadCPUNeedsVCPUNames: a process without vCPU-named threads
// (this test binary) gives an error rather than charging everything to
// devices.
func TestReadThreadCPUNeedsVCPUNames(t *testing.T) {
	if _, err := ReadThreadCPU(os.Getpid()); err == nil || !strings.Contains(err.Error(), "vCPU") {
		t.Errorf("ReadThreadCPU(self) = %v, want an error naming the missing vCPU threads", err)
	}
}

func TestParseIperf3(t *testing.T) {
	// The guest's clock ran at half speed: its side measured 5 s where the
	// host's measured 10 s.
	forward := `{"start":{},"intervals":[],"end":{"sum_sent":{"seconds":10,"bytes":1600000,"bits_per_second":1280000},` +
		`"sum_received":{"seconds":5,"bytes":1500000,"bits_per_second":2400000}}}`
	reverse := `{"start":{},"intervals":[],"end":{"sum_sent":{"seconds":5,"bytes":1600000,"bits_per_second":2560000},` +
		`"sum_received":{"seconds":10,"bytes":1500000,"bits_per_second":1200000}}}`
	for _, tc := range []struct {
		name    string
		out     string
		reverse bool
	}{{"host → guest", forward, false}, {"guest → host", reverse, true}} {
		res, err := parseIperf3([]byte(tc.out), tc.reverse)
		if err != nil || res.bytes != 1500000 || res.bitsPerSecond != 1200000 {
			t.Errorf("%s: parseIperf3 = %+v, %v; want 1500000 bytes at 1200000 b/s of host time", tc.name, res, err)
		}
	}
	for _, bad := range []string{
		`{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`,
		`{"end":{"sum_received":{"bytes":0,"bits_per_second":0}}}`,
		`{"end":{"sum_sent":{"seconds":0},"sum_received":{"seconds":10,"bytes":100}}}`,
		`iperf3: error`,
		``,
	} {
		if _, err := parseIperf3([]byte(bad), false); err == nil {
			t.Errorf("parseIperf3(%q) succeeded", bad)
		}
	}
}

func TestParseFio(t *testing.T) {
	jobs := fioJobs()
	randread, write := jobs[0], jobs[3]
	client := `hostname=10.200.0.2, be=0, 64-bit, os=Linux, arch=x86-64, fio=fio-3.33, flags=1
{"fio version":"fio-3.33","client_stats":[{"jobname":"randread","error":0,` +
		`"read":{"iops":20.5,"bw_bytes":83968,"io_bytes":839680},"write":{"iops":0,"bw_bytes":0,"io_bytes":0}}]}`
	res, err := parseFio([]byte(client), randread)
	if err != nil || res.figure != 20.5 || res.bytes != 839680 {
		t.Errorf("client output: %+v, %v", res, err)
	}
	local := `{"jobs":[{"jobname":"write","error":0,"read":{"iops":0,"bw_bytes":0,"io_bytes":0},` +
		`"write":{"iops":8000,"bw_bytes":1048576000,"io_bytes":10485760000}}]}`
	res, err = parseFio([]byte(local), write)
	if err != nil || res.figure != 1048.576 || res.bytes != 10485760000 {
		t.Errorf("local output: %+v, %v", res, err)
	}
	for _, bad := range []string{
		local, // no randread job in it
		`{"jobs":[{"jobname":"randread","error":5,"read":{"iops":1,"bw_bytes":1,"io_bytes":1}}]}`,
		`{"jobs":[{"jobname":"randread","error":0,"read":{"iops":0,"bw_bytes":0,"io_bytes":0}}]}`,
		`fio: connect: Connection refused`,
	} {
		if _, err := parseFio([]byte(bad), randread); err == nil {
			t.Errorf("parseFio(%q) succeeded", bad)
		}
	}
}

func TestFioJobFile(t *testing.T) {
	got := fioJobs()[0].jobFile("/dev/vdb", 10*time.Second)
	for _, want := range []string{"filename=/dev/vdb\n", "direct=1\n", "ioengine=libaio\n", "runtime=10\n",
		"[randread]\n", "rw=randread\n", "bs=4k\n", "iodepth=32\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("job file lacks %q:\n%s", want, got)
		}
	}
}

func TestQEMUCmdlineKeepsNoxsaveOnce(t *testing.T) {
	if got := qemuCmdline("console=ttyS0 noxsave"); got != "console=ttyS0 noxsave" {
		t.Errorf("qemuCmdline added a second noxsave: %q", got)
	}
}

// TestIOStartScriptParses checks the guest script with a real shell's
// syntax check, and that it names the markers the host waits for.
func TestIOStartScriptParses(t *testing.T) {
	script := ioStartScript("/lib64/ld-linux-x86-64.so.2", []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu/ceph"})
	for _, want := range []string{ioReadyLine, ioDataLine, ioFailLine, ioGuestIP,
		"/tools/lib/x86_64-linux-gnu:/tools/usr/lib/x86_64-linux-gnu/ceph", "--server"} {
		if !strings.Contains(script, want) {
			t.Errorf("start script lacks %q", want)
		}
	}
	sh := testenv.RequireCommand(t, "sh", "dash")
	f := filepath.Join(t.TempDir(), "run.sh")
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sh, "-n", f).CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v: %s", err, out)
	}
	if !strings.Contains(ioMountCommand(), "/tools/run.sh") || !strings.HasSuffix(ioMountCommand(), "\n") {
		t.Errorf("mount command %q", ioMountCommand())
	}
}

func TestSupportsDirect(t *testing.T) {
	if supportsDirect(filepath.Join(t.TempDir(), "missing")) {
		t.Error("a missing file supports O_DIRECT")
	}
	p := filepath.Join("/dev/shm", fmt.Sprintf("vmm-bench-direct-%d", os.Getpid()))
	if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
		testenv.Skipf(t, "no /dev/shm file for the tmpfs case: %v", err)
	}
	defer os.Remove(p)
	if supportsDirect(p) {
		t.Error("a tmpfs file counts as supporting O_DIRECT; vmm refuses it")
	}
}

// TestWaitConsole: the wanted line wins, the failure line or an exit ends
// the wait early with the console tail, and the deadline bounds it.
func TestWaitConsole(t *testing.T) {
	for _, tc := range []struct {
		name, script, want string
		fail               bool
	}{
		{"ready", "echo booting; echo io-tools: ready; exec sleep 5", "", false},
		{"fail line", "echo io-tools: failed: no eth0; exec sleep 5", "on the console", true},
		{"exit", "echo bye", "exited before", true},
		{"deadline", "exec sleep 10", "within", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Launch(context.Background(), ProcSpec{Name: "sh", Argv: []string{"sh", "-c", tc.script}, Timeout: 20 * time.Second,
				Marks: []string{ioReadyLine, ioFailLine}})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Stop()
			start := time.Now()
			_, err = waitConsole(context.Background(), p, ioReadyLine, ioFailLine, 3*time.Second)
			if tc.fail != (err != nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("waitConsole: %v, want failure %v containing %q", err, tc.fail, tc.want)
			}
			if time.Since(start) > 8*time.Second {
				t.Errorf("waitConsole took %v", time.Since(start))
			}
		})
	}
}
