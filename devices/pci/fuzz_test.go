package pci

import (
	"encoding/binary"
	"sync/atomic"
	"testing"

	"github.com/govmm/vmm/devices"
)

// FuzzConfigAccess drives both configuration front ends (ECAM and
// mechanism #1) with random offsets, sizes and values against a bus with
// 32- and 64-bit BARs, MSI-X and an INTx pin. Nothing may panic, the ID
// registers never change, and what ECAM reads equals what mechanism #1
// reads.
//
// Each operation takes 10 bytes: kind, size, a 32-bit offset, a 32-bit
// value.
func FuzzConfigAccess(f *testing.F) {
	le := binary.LittleEndian
	op := func(kind, size byte, off, val uint32) []byte {
		b := []byte{kind, size}
		b = le.AppendUint32(b, off)
		return le.AppendUint32(b, val)
	}
	join := func(ops ...[]byte) []byte {
		var b []byte
		for _, o := range ops {
			b = append(b, o...)
		}
		return b
	}
	// BAR sizing of a 64-bit BAR through ECAM, then memory enable.
	f.Add(join(op(1, 4, 2<<15|0x10, 0xffff_ffff), op(1, 4, 2<<15|0x14, 0xffff_ffff), op(0, 4, 2<<15|0x10, 0),
		op(1, 2, 2<<15|4, CommandMemory), op(1, 4, 2<<15|0x14, 0x1)))
	// MSI-X enable and INTx disable through conf1.
	f.Add(join(op(2, 4, 0, 0x8000_0000|1<<11|0x40), op(3, 2, 2, 0x8000), op(2, 4, 0, 0x8000_0000|3<<11|4), op(3, 2, 0, 0x400)))
	f.Add(join(op(0, 8, 0xfffff, 0), op(1, 3, 0x1001, 7), op(0, 4, 0x100, 0), op(2, 1, 0, 0), op(4, 4, 3, 0)))

	f.Fuzz(func(t *testing.T, ops []byte) {
		mmio := devices.NewBus("mmio")
		lines := &fakeLines{}
		b := NewBusWith(BusConfig{MMIO: mmio, Mem32Start: 0xc000_0000, Mem32End: 0xe000_0000,
			Mem64Start: 1 << 32, Mem64End: 1 << 36, INTx: lines, INTxRouting: INTxRouting{FirstGSI: 16, Count: 8}})
		if _, err := b.Add(newTestFunc(t, &alloc{})); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Add(newBar64Func(t, 0x8000)); err != nil {
			t.Fatal(err)
		}
		var cond atomic.Bool
		cond.Store(true)
		fi := &intxFunc{cfg: NewConfigSpace("intx", Identity{VendorID: 0x1234, DeviceID: 3})}
		if _, err := AddINTx(fi.cfg, cond.Load, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Add(fi); err != nil {
			t.Fatal(err)
		}
		e, addr, data := b.ECAM(), b.AddressPort(), b.DataPort()
		for len(ops) >= 10 {
			kind, size := ops[0], int(ops[1]%9)
			off, val := le.Uint32(ops[2:]), le.Uint32(ops[6:])
			ops = ops[10:]
			if size == 0 {
				size = 1
			}
			buf := make([]byte, size)
			for i := range buf {
				buf[i] = byte(uint64(val) >> (8 * (i % 4)))
			}
			eoff := uint64(off) % (ECAMBusSize + 0x1000) // a little past the window too
			switch kind % 6 {
			case 0:
				e.Read(eoff, buf)
			case 1:
				e.Write(eoff, buf)
			case 2:
				addr.Write(uint64(off%5), buf)
			case 3:
				data.Write(uint64(off%4), buf)
			case 4:
				data.Read(uint64(off%4), buf)
			case 5:
				cond.Store(val&1 != 0)
				fi.cfg.intx.Update()
			}
		}
		for dev := uint32(0); dev < 4; dev++ {
			id := make([]byte, 4)
			e.Read(uint64(dev)<<15, id)
			want := map[uint32]uint32{0: hostBridgeDevice<<16 | hostBridgeVendor, 1: 0x5678_1234, 2: 0x0064_1234, 3: 0x0003_1234}[dev]
			if got := le.Uint32(id); got != want {
				t.Fatalf("device %d ID %#x, want %#x", dev, got, want)
			}
			for reg := uint32(0); reg < ConfigSize; reg += 4 {
				viaECAM, viaPort := make([]byte, 4), make([]byte, 4)
				e.Read(uint64(dev)<<15|uint64(reg), viaECAM)
				addr.Write(0, le.AppendUint32(nil, 0x8000_0000|dev<<11|reg))
				data.Read(0, viaPort)
				if le.Uint32(viaECAM) != le.Uint32(viaPort) {
					t.Fatalf("device %d register %#x: ECAM %x, conf1 %x", dev, reg, viaECAM, viaPort)
				}
			}
			ext := make([]byte, 4)
			e.Read(uint64(dev)<<15|0x100, ext)
			if le.Uint32(ext) != 0xffff_ffff {
				t.Fatalf("device %d extended register 0x100 = %x", dev, ext)
			}
		}
		b.Close()
	})
}
