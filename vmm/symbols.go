package vmm

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// symbolTable maps guest kernel addresses to names from a System.map.
type symbolTable struct {
	addrs []uint64
	names []string
}

func loadSymbols(path, kernel string, log *slog.Logger) *symbolTable {
	if path == "" {
		path = systemMapBeside(kernel)
	}
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		log.Debug("no System.map", "err", err)
		return nil
	}
	defer f.Close()
	t := &symbolTable{}
	type sym struct {
		addr uint64
		name string
	}
	var syms []sym
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			continue
		}
		switch fields[1] {
		case "T", "t", "W", "w":
		default:
			continue
		}
		a, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil {
			continue
		}
		syms = append(syms, sym{a, fields[2]})
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	for _, s := range syms {
		t.addrs = append(t.addrs, s.addr)
		t.names = append(t.names, s.name)
	}
	log.Debug("symbols loaded", "path", path, "count", len(syms))
	return t
}

// lookup returns "name+0xoff" for addr, or "".
func (t *symbolTable) lookup(addr uint64) string {
	if t == nil || len(t.addrs) == 0 || addr < t.addrs[0] {
		return ""
	}
	i := sort.Search(len(t.addrs), func(i int) bool { return t.addrs[i] > addr }) - 1
	off := addr - t.addrs[i]
	if off > 1<<20 {
		return ""
	}
	return fmt.Sprintf("%s+%#x", t.names[i], off)
}

// name returns the symbol containing addr without the offset.
func (t *symbolTable) name(addr uint64) string {
	s := t.lookup(addr)
	if i := strings.IndexByte(s, '+'); i > 0 {
		return s[:i]
	}
	if s == "" {
		return fmt.Sprintf("%#x", addr)
	}
	return s
}

// startSampler periodically kicks every vCPU to record where it is. It
// returns a function that stops it.
func (m *Machine) startSampler(every time.Duration) func() {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		report := time.NewTicker(sampleReportEvery)
		defer report.Stop()
		for {
			select {
			case <-done:
				return
			case <-report.C:
				// A stalled guest shows up here while it is still stalled:
				// each report covers only the last interval.
				m.reportSamples(5)
				m.resetSamples()
			case <-t.C:
				for _, v := range m.vcpus {
					v.sampleReq.Store(true)
					v.kick()
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

func (v *vcpu) sample() {
	regs, err := v.kvm.Regs()
	if err != nil {
		return
	}
	v.samplesMu.Lock()
	if v.samples == nil {
		v.samples = map[uint64]int{}
	}
	v.samples[regs.RIP]++
	v.samplesMu.Unlock()
}

// resetSamples starts a new sampling window.
func (m *Machine) resetSamples() {
	for _, v := range m.vcpus {
		v.samplesMu.Lock()
		v.samples = nil
		v.samplesMu.Unlock()
	}
}

// sampleReportEvery is how often the sampler logs the hottest functions.
const sampleReportEvery = 10 * time.Second

// reportSamples logs the top hottest guest functions seen by the sampler.
func (m *Machine) reportSamples(top int) {
	bySym := map[string]int{}
	total := 0
	for _, v := range m.vcpus {
		v.samplesMu.Lock()
		for rip, n := range v.samples {
			bySym[m.syms.name(rip)] += n
			total += n
		}
		v.samplesMu.Unlock()
	}
	type hot struct {
		name string
		n    int
	}
	var hs []hot
	for k, n := range bySym {
		hs = append(hs, hot{k, n})
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].n > hs[j].n })
	for i, h := range hs {
		if i == top {
			break
		}
		m.log.Info("rip sample", "symbol", h.name, "hits", h.n, "share", fmt.Sprintf("%.1f%%", 100*float64(h.n)/float64(total)))
	}
}
