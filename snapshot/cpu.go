package snapshot

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// CPUIDEntry is one CPUID leaf: the output registers for input EAX=Function,
// ECX=Index. It carries what kvm.CPUIDEntry (struct kvm_cpuid_entry2) does,
// minus the flags, so that this package need not import kvm.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
}

// Register names a CPUID output register.
type Register uint8

// CPUID output registers.
const (
	EAX Register = iota
	EBX
	ECX
	EDX
)

var registerNames = [...]string{EAX: "eax", EBX: "ebx", ECX: "ecx", EDX: "edx"}

func (r Register) String() string {
	if int(r) < len(registerNames) {
		return registerNames[r]
	}
	return fmt.Sprintf("register(%d)", uint8(r))
}

// MarshalText writes the register's name, so the state file reads "ecx".
func (r Register) MarshalText() ([]byte, error) {
	if int(r) >= len(registerNames) {
		return nil, fmt.Errorf("snapshot: no CPUID register %d", uint8(r))
	}
	return []byte(registerNames[r]), nil
}

// UnmarshalText accepts the names MarshalText writes.
func (r *Register) UnmarshalText(b []byte) error {
	for i, n := range registerNames {
		if string(b) == n {
			*r = Register(i)
			return nil
		}
	}
	return fmt.Errorf("snapshot: unknown CPUID register %q", b)
}

func (r Register) of(e CPUIDEntry) uint32 {
	switch r {
	case EAX:
		return e.EAX
	case EBX:
		return e.EBX
	case ECX:
		return e.ECX
	default:
		return e.EDX
	}
}

// FeatureWord is one CPUID output register of feature flags: the bits set in
// CPUID.(EAX=Function,ECX=Index):Register.
type FeatureWord struct {
	Function uint32   `json:"function"`
	Index    uint32   `json:"index"`
	Register Register `json:"register"`
	Bits     uint32   `json:"bits"`
}

// CPUFeatures is a CPU's feature flags as a list of feature words. A word
// that is absent has no bits set, so a snapshot written before a word was
// collected requires nothing of it.
type CPUFeatures []FeatureWord

// featureWord is a CPUID register FeaturesFromCPUID collects, and which of its
// bits mean "the guest may use this".
type featureWord struct {
	function, index uint32
	reg             Register
	// indexed: the leaf's output depends on ECX (KVM flags such leaves
	// KVM_CPUID_FLAG_SIGNIFCANT_INDEX); other leaves match any index.
	indexed bool
	mask    uint32
}

// CPUID leaves holding feature flags (Intel SDM vol. 2A, CPUID; AMD APM
// vol. 3, appendix E).
const (
	leafVendor       = 0x0
	leafFeatures     = 0x1
	leafExtFeatures  = 0x7
	leafXSAVE        = 0xd
	leafExtended     = 0x80000001
	leafPowerMgmt    = 0x80000007
	leafExtAddrSizes = 0x80000008
)

// Bits of the guest's CPUID that do not describe the CPU, so comparing them
// with another host's KVM_GET_SUPPORTED_CPUID would refuse for nothing.
const (
	// CPUID.1:ECX[24] TSC-deadline: KVM offers it through
	// KVM_CAP_TSC_DEADLINE_TIMER, not KVM_GET_SUPPORTED_CPUID.
	bit1ECXTSCDeadline = 1 << 24
	// CPUID.1:ECX[27] OSXSAVE mirrors the guest's CR4.OSXSAVE.
	bit1ECXOSXSAVE = 1 << 27
	// CPUID.1:ECX[31] "running under a hypervisor": set by the VMM.
	bit1ECXHypervisor = 1 << 31
	// CPUID.1:EDX[28] HTT: set by the VMM to describe its topology.
	bit1EDXHTT = 1 << 28
	// CPUID.(EAX=7,ECX=0):ECX[4] OSPKE mirrors the guest's CR4.PKE.
	bit7ECXOSPKE = 1 << 4
)

// featureWords are the registers compared on restore. Leaf 0xD sub-leaf 0
// EAX is the XCR0 state components the CPU supports: restoring an XSAVE
// area with a component the host lacks fails.
var featureWords = [...]featureWord{
	{function: leafFeatures, reg: ECX, mask: ^uint32(bit1ECXTSCDeadline | bit1ECXOSXSAVE | bit1ECXHypervisor)},
	{function: leafFeatures, reg: EDX, mask: ^uint32(bit1EDXHTT)},
	{function: leafExtFeatures, index: 0, indexed: true, reg: EBX, mask: ^uint32(0)},
	{function: leafExtFeatures, index: 0, indexed: true, reg: ECX, mask: ^uint32(bit7ECXOSPKE)},
	{function: leafExtFeatures, index: 0, indexed: true, reg: EDX, mask: ^uint32(0)},
	{function: leafExtFeatures, index: 1, indexed: true, reg: EAX, mask: ^uint32(0)},
	{function: leafXSAVE, index: 0, indexed: true, reg: EAX, mask: ^uint32(0)},
	{function: leafXSAVE, index: 1, indexed: true, reg: EAX, mask: ^uint32(0)},
	{function: leafExtended, reg: ECX, mask: ^uint32(0)},
	{function: leafExtended, reg: EDX, mask: ^uint32(0)},
	{function: leafPowerMgmt, reg: EDX, mask: ^uint32(0)},
	{function: leafExtAddrSizes, reg: EBX, mask: ^uint32(0)},
}

func findLeaf(entries []CPUIDEntry, function, index uint32, indexed bool) (CPUIDEntry, bool) {
	for _, e := range entries {
		if e.Function == function && (!indexed || e.Index == index) {
			return e, true
		}
	}
	return CPUIDEntry{}, false
}

// FeaturesFromCPUID collects the feature words of a CPUID table: the vCPU's
// table when snapshotting (what the guest saw), KVM_GET_SUPPORTED_CPUID when
// restoring (what this host can give). Bits the VMM sets or the guest's
// control registers decide (hypervisor, HTT, OSXSAVE, OSPKE, TSC-deadline)
// are left out. Words with no bit set are omitted.
func FeaturesFromCPUID(entries []CPUIDEntry) CPUFeatures {
	var out CPUFeatures
	for _, w := range featureWords {
		e, ok := findLeaf(entries, w.function, w.index, w.indexed)
		if !ok {
			continue
		}
		if bits := w.reg.of(e) & w.mask; bits != 0 {
			out = append(out, FeatureWord{Function: w.function, Index: w.index, Register: w.reg, Bits: bits})
		}
	}
	return out
}

// VendorFromCPUID returns the vendor string of CPUID leaf 0 (EBX, EDX, ECX:
// "GenuineIntel", "AuthenticAMD"), or "" if the table has no leaf 0.
func VendorFromCPUID(entries []CPUIDEntry) string {
	e, ok := findLeaf(entries, leafVendor, 0, false)
	if !ok {
		return ""
	}
	var b [12]byte
	binary.LittleEndian.PutUint32(b[0:], e.EBX)
	binary.LittleEndian.PutUint32(b[4:], e.EDX)
	binary.LittleEndian.PutUint32(b[8:], e.ECX)
	return strings.TrimRight(string(b[:]), "\x00")
}

// bits returns the bits of the word (function, index, reg), 0 if absent.
// Several entries for one word are merged.
func (f CPUFeatures) bits(function, index uint32, reg Register) uint32 {
	var b uint32
	for _, w := range f {
		if w.Function == function && w.Index == index && w.Register == reg {
			b |= w.Bits
		}
	}
	return b
}

// Missing names the features in need that f lacks, in need's order, e.g.
// "AVX512F" or, for a bit without a name here, "CPUID.(EAX=0x7,ECX=0):EBX[6]".
func (f CPUFeatures) Missing(need CPUFeatures) []string {
	var out []string
	for _, w := range need {
		lack := w.Bits &^ f.bits(w.Function, w.Index, w.Register)
		for bit := uint(0); bit < 32; bit++ {
			if lack&(1<<bit) != 0 {
				out = append(out, featureName(w.Function, w.Index, w.Register, bit))
			}
		}
	}
	return out
}

type featureKey struct {
	function, index uint32
	reg             Register
	bit             uint8
}

// featureNames are the names Linux gives the bits (arch/x86/include/asm/
// cpufeatures.h), upper-cased, for refusals a person can act on; XCR0
// components are named as in the SDM vol. 1, 13.1.
var featureNames = map[featureKey]string{
	{leafFeatures, 0, ECX, 0}: "SSE3", {leafFeatures, 0, ECX, 1}: "PCLMULQDQ",
	{leafFeatures, 0, ECX, 3}: "MONITOR", {leafFeatures, 0, ECX, 5}: "VMX",
	{leafFeatures, 0, ECX, 9}: "SSSE3", {leafFeatures, 0, ECX, 12}: "FMA",
	{leafFeatures, 0, ECX, 13}: "CX16", {leafFeatures, 0, ECX, 17}: "PCID",
	{leafFeatures, 0, ECX, 19}: "SSE4_1", {leafFeatures, 0, ECX, 20}: "SSE4_2",
	{leafFeatures, 0, ECX, 21}: "X2APIC", {leafFeatures, 0, ECX, 22}: "MOVBE",
	{leafFeatures, 0, ECX, 23}: "POPCNT", {leafFeatures, 0, ECX, 25}: "AES",
	{leafFeatures, 0, ECX, 26}: "XSAVE", {leafFeatures, 0, ECX, 28}: "AVX",
	{leafFeatures, 0, ECX, 29}: "F16C", {leafFeatures, 0, ECX, 30}: "RDRAND",

	{leafFeatures, 0, EDX, 0}: "FPU", {leafFeatures, 0, EDX, 4}: "TSC",
	{leafFeatures, 0, EDX, 5}: "MSR", {leafFeatures, 0, EDX, 6}: "PAE",
	{leafFeatures, 0, EDX, 8}: "CX8", {leafFeatures, 0, EDX, 9}: "APIC",
	{leafFeatures, 0, EDX, 15}: "CMOV", {leafFeatures, 0, EDX, 16}: "PAT",
	{leafFeatures, 0, EDX, 19}: "CLFLUSH", {leafFeatures, 0, EDX, 23}: "MMX",
	{leafFeatures, 0, EDX, 24}: "FXSR", {leafFeatures, 0, EDX, 25}: "SSE",
	{leafFeatures, 0, EDX, 26}: "SSE2",

	{leafExtFeatures, 0, EBX, 0}: "FSGSBASE", {leafExtFeatures, 0, EBX, 3}: "BMI1",
	{leafExtFeatures, 0, EBX, 4}: "HLE", {leafExtFeatures, 0, EBX, 5}: "AVX2",
	{leafExtFeatures, 0, EBX, 7}: "SMEP", {leafExtFeatures, 0, EBX, 8}: "BMI2",
	{leafExtFeatures, 0, EBX, 9}: "ERMS", {leafExtFeatures, 0, EBX, 10}: "INVPCID",
	{leafExtFeatures, 0, EBX, 11}: "RTM", {leafExtFeatures, 0, EBX, 14}: "MPX",
	{leafExtFeatures, 0, EBX, 16}: "AVX512F", {leafExtFeatures, 0, EBX, 17}: "AVX512DQ",
	{leafExtFeatures, 0, EBX, 18}: "RDSEED", {leafExtFeatures, 0, EBX, 19}: "ADX",
	{leafExtFeatures, 0, EBX, 20}: "SMAP", {leafExtFeatures, 0, EBX, 21}: "AVX512IFMA",
	{leafExtFeatures, 0, EBX, 23}: "CLFLUSHOPT", {leafExtFeatures, 0, EBX, 24}: "CLWB",
	{leafExtFeatures, 0, EBX, 28}: "AVX512CD", {leafExtFeatures, 0, EBX, 29}: "SHA_NI",
	{leafExtFeatures, 0, EBX, 30}: "AVX512BW", {leafExtFeatures, 0, EBX, 31}: "AVX512VL",

	{leafExtFeatures, 0, ECX, 1}: "AVX512VBMI", {leafExtFeatures, 0, ECX, 2}: "UMIP",
	{leafExtFeatures, 0, ECX, 3}: "PKU", {leafExtFeatures, 0, ECX, 6}: "AVX512_VBMI2",
	{leafExtFeatures, 0, ECX, 8}: "GFNI", {leafExtFeatures, 0, ECX, 9}: "VAES",
	{leafExtFeatures, 0, ECX, 10}: "VPCLMULQDQ", {leafExtFeatures, 0, ECX, 11}: "AVX512_VNNI",
	{leafExtFeatures, 0, ECX, 12}: "AVX512_BITALG", {leafExtFeatures, 0, ECX, 14}: "AVX512_VPOPCNTDQ",
	{leafExtFeatures, 0, ECX, 16}: "LA57", {leafExtFeatures, 0, ECX, 22}: "RDPID",
	{leafExtFeatures, 0, ECX, 27}: "MOVDIRI", {leafExtFeatures, 0, ECX, 28}: "MOVDIR64B",

	{leafExtFeatures, 0, EDX, 4}: "FSRM", {leafExtFeatures, 0, EDX, 10}: "MD_CLEAR",
	{leafExtFeatures, 0, EDX, 14}: "SERIALIZE", {leafExtFeatures, 0, EDX, 22}: "AMX_BF16",
	{leafExtFeatures, 0, EDX, 23}: "AVX512_FP16", {leafExtFeatures, 0, EDX, 24}: "AMX_TILE",
	{leafExtFeatures, 0, EDX, 25}: "AMX_INT8", {leafExtFeatures, 0, EDX, 26}: "SPEC_CTRL",
	{leafExtFeatures, 0, EDX, 27}: "INTEL_STIBP", {leafExtFeatures, 0, EDX, 28}: "FLUSH_L1D",
	{leafExtFeatures, 0, EDX, 29}: "ARCH_CAPABILITIES", {leafExtFeatures, 0, EDX, 31}: "SPEC_CTRL_SSBD",

	{leafExtFeatures, 1, EAX, 4}: "AVX_VNNI", {leafExtFeatures, 1, EAX, 5}: "AVX512_BF16",

	{leafXSAVE, 0, EAX, 0}: "XCR0.X87", {leafXSAVE, 0, EAX, 1}: "XCR0.SSE",
	{leafXSAVE, 0, EAX, 2}: "XCR0.AVX", {leafXSAVE, 0, EAX, 3}: "XCR0.BNDREGS",
	{leafXSAVE, 0, EAX, 4}: "XCR0.BNDCSR", {leafXSAVE, 0, EAX, 5}: "XCR0.OPMASK",
	{leafXSAVE, 0, EAX, 6}: "XCR0.ZMM_HI256", {leafXSAVE, 0, EAX, 7}: "XCR0.HI16_ZMM",
	{leafXSAVE, 0, EAX, 9}: "XCR0.PKRU", {leafXSAVE, 0, EAX, 17}: "XCR0.XTILECFG",
	{leafXSAVE, 0, EAX, 18}: "XCR0.XTILEDATA",

	{leafXSAVE, 1, EAX, 0}: "XSAVEOPT", {leafXSAVE, 1, EAX, 1}: "XSAVEC",
	{leafXSAVE, 1, EAX, 2}: "XGETBV1", {leafXSAVE, 1, EAX, 3}: "XSAVES",

	{leafExtended, 0, ECX, 0}: "LAHF_LM", {leafExtended, 0, ECX, 2}: "SVM",
	{leafExtended, 0, ECX, 5}: "ABM", {leafExtended, 0, ECX, 6}: "SSE4A",
	{leafExtended, 0, ECX, 8}: "3DNOWPREFETCH", {leafExtended, 0, ECX, 11}: "XOP",
	{leafExtended, 0, ECX, 16}: "FMA4", {leafExtended, 0, ECX, 21}: "TBM",
	{leafExtended, 0, ECX, 22}: "TOPOEXT",

	{leafExtended, 0, EDX, 11}: "SYSCALL", {leafExtended, 0, EDX, 20}: "NX",
	{leafExtended, 0, EDX, 26}: "PDPE1GB", {leafExtended, 0, EDX, 27}: "RDTSCP",
	{leafExtended, 0, EDX, 29}: "LM",

	{leafPowerMgmt, 0, EDX, 8}: "INVARIANT_TSC",

	{leafExtAddrSizes, 0, EBX, 0}: "CLZERO", {leafExtAddrSizes, 0, EBX, 9}: "WBNOINVD",
	{leafExtAddrSizes, 0, EBX, 12}: "AMD_IBPB", {leafExtAddrSizes, 0, EBX, 14}: "AMD_IBRS",
	{leafExtAddrSizes, 0, EBX, 15}: "AMD_STIBP", {leafExtAddrSizes, 0, EBX, 24}: "AMD_SSBD",
	{leafExtAddrSizes, 0, EBX, 25}: "VIRT_SSBD", {leafExtAddrSizes, 0, EBX, 26}: "AMD_SSB_NO",
}

func featureName(function, index uint32, reg Register, bit uint) string {
	if n, ok := featureNames[featureKey{function, index, reg, uint8(bit)}]; ok {
		return n
	}
	return fmt.Sprintf("CPUID.(EAX=%#x,ECX=%d):%s[%d]", function, index, strings.ToUpper(reg.String()), bit)
}
