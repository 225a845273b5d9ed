package kvm

import (
	"encoding/binary"
	"math/bits"
	"unsafe"
)

// CPUIDEntry mirrors struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// cpuidFlagSignificantIndex marks leaves whose output depends on ECX
// (KVM_CPUID_FLAG_SIGNIFCANT_INDEX, api.rst §4.46).
const cpuidFlagSignificantIndex = 1

// CPUID is a vCPU's CPUID table.
type CPUID []CPUIDEntry

const cpuidEntrySize = int(unsafe.Sizeof(CPUIDEntry{}))

func newCPUIDBuffer(n int) []byte {
	buf := make([]byte, 8+n*cpuidEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(n))
	return buf
}

func parseCPUIDBuffer(buf []byte) CPUID {
	n := int(binary.LittleEndian.Uint32(buf))
	out := make(CPUID, n)
	for i := range out {
		e := buf[8+i*cpuidEntrySize:]
		out[i] = CPUIDEntry{
			Function: binary.LittleEndian.Uint32(e[0:]),
			Index:    binary.LittleEndian.Uint32(e[4:]),
			Flags:    binary.LittleEndian.Uint32(e[8:]),
			EAX:      binary.LittleEndian.Uint32(e[12:]),
			EBX:      binary.LittleEndian.Uint32(e[16:]),
			ECX:      binary.LittleEndian.Uint32(e[20:]),
			EDX:      binary.LittleEndian.Uint32(e[24:]),
		}
	}
	return out
}

func (c CPUID) buffer() []byte {
	buf := newCPUIDBuffer(len(c))
	for i, e := range c {
		b := buf[8+i*cpuidEntrySize:]
		binary.LittleEndian.PutUint32(b[0:], e.Function)
		binary.LittleEndian.PutUint32(b[4:], e.Index)
		binary.LittleEndian.PutUint32(b[8:], e.Flags)
		binary.LittleEndian.PutUint32(b[12:], e.EAX)
		binary.LittleEndian.PutUint32(b[16:], e.EBX)
		binary.LittleEndian.PutUint32(b[20:], e.ECX)
		binary.LittleEndian.PutUint32(b[24:], e.EDX)
	}
	return buf
}

// Find returns the entry for (function, index), or nil.
func (c CPUID) Find(function, index uint32) *CPUIDEntry {
	for i := range c {
		e := &c[i]
		if e.Function == function && (e.Flags&cpuidFlagSignificantIndex == 0 || e.Index == index) {
			return e
		}
	}
	return nil
}

// CPUID leaves and bits adjusted per vCPU (Intel SDM vol. 2A, CPUID).
const (
	leafFeatures      = 0x1
	leafCacheParams   = 0x4
	leafThermalPower  = 0x6
	leafTopology      = 0xb
	leafTopologyV2    = 0x1f
	leafHypervisor    = 0x40000000
	leafKVMFeatures   = 0x40000001
	leafExtAddrSizes  = 0x80000008
	leafExtFeatures   = 0x80000001
	featECXVMX        = 1 << 5  // CPUID.1:ECX[5], VMX (Intel)
	featExtECXSVM     = 1 << 2  // CPUID.80000001h:ECX[2], SVM (AMD)
	featECXHypervisor = 1 << 31 // CPUID.1:ECX[31], "running under a hypervisor"
	featECXTSCDeadl   = 1 << 24 // CPUID.1:ECX[24], TSC-deadline timer
	featEDXHTT        = 1 << 28 // CPUID.1:EDX[28], EBX[23:16] is valid
	topoLevelSMT      = 1       // CPUID.B:ECX[15:8] level types
	topoLevelCore     = 2
)

// ForVCPU returns a copy of the host-supported table fitted to vCPU id of a
// VM with n vCPUs: its own APIC ID, a topology of n single-threaded cores in
// one package, and the hypervisor bit, so the guest's topology code and the
// ACPI MADT agree. VMX and SVM are hidden: a nested hypervisor's state
// (KVM_GET_NESTED_STATE) is not in snapshots, so a guest must not start
// one.
func (c CPUID) ForVCPU(id, n int) CPUID {
	out := make(CPUID, 0, len(c))
	coreBits := uint32(bits.Len(uint(n - 1)))
	for _, e := range c {
		switch e.Function {
		case leafFeatures:
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(n)<<16
			e.ECX |= featECXHypervisor
			e.ECX &^= featECXVMX
			e.EDX |= featEDXHTT
		case leafCacheParams:
			// EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing
			// this cache - 1 (each core has its own L1/L2; the L3 is shared).
			e.EAX &= 0x3fff
			e.EAX |= uint32(n-1) << 26
			if level := (e.EAX >> 5) & 7; level == 3 {
				e.EAX |= uint32(n-1) << 14
			}
		case leafThermalPower:
			// Power management belongs to the host; hide it.
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case leafTopology, leafTopologyV2:
			e.EDX = uint32(id)
			switch e.Index {
			case 0:
				e.EAX, e.EBX, e.ECX = 0, 1, topoLevelSMT<<8
			case 1:
				e.EAX, e.EBX, e.ECX = coreBits, uint32(n), topoLevelCore<<8|1
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index&0xff
			}
		case leafExtFeatures:
			e.ECX &^= featExtECXSVM
		case leafExtAddrSizes:
			// ECX[7:0]: number of cores - 1 (AMD); ECX[15:12]: APIC ID bits.
			e.ECX = e.ECX&^0xf0ff | uint32(n-1) | coreBits<<12
		}
		out = append(out, e)
	}
	return out
}

// HasFeatureECX1 reports whether CPUID.1:ECX has bit set in this table.
func (c CPUID) HasFeatureECX1(bit uint) bool {
	if e := c.Find(leafFeatures, 0); e != nil {
		return e.ECX&(1<<bit) != 0
	}
	return false
}
