package kvm

// IoctlRequests returns every ioctl request number this package issues, in
// a fresh slice: the seccomp allow-list takes its KVM ioctls from here, so a
// request added to this package is allowed without a second list to keep in
// step. A test checks that each constant of kvm.go is listed.
func IoctlRequests() []uint32 {
	return []uint32{
		ioctlGetAPIVersion, ioctlCreateVM, ioctlGetMSRIndexList, ioctlCheckExtension,
		ioctlGetVCPUMmapSize, ioctlGetSupportedCPUID, ioctlCreateVCPU,
		ioctlGetDirtyLog, ioctlSetUserMemoryRegion, ioctlSetTSSAddr, ioctlSetIdentityMapAddr,
		ioctlCreateIRQChip, ioctlIRQLine, ioctlSetGSIRouting, ioctlIRQFD,
		ioctlCreatePIT2, ioctlIOEventFD, ioctlRun,
		ioctlGetRegs, ioctlSetRegs, ioctlGetSregs, ioctlSetSregs,
		ioctlGetMSRs, ioctlSetMSRs, ioctlGetFPU, ioctlSetFPU,
		ioctlGetLAPIC, ioctlSetLAPIC, ioctlSetCPUID2, ioctlGetMPState, ioctlSetMPState,
		ioctlGetVCPUEvents, ioctlSetVCPUEvents, ioctlSignalMSI, ioctlGetTSCKHz,
		ioctlGetClock, ioctlSetClock,
		ioctlGetXSAVE, ioctlSetXSAVE, ioctlGetXCRS, ioctlSetXCRS,
		ioctlGetCPUID2, ioctlGetDebugRegs, ioctlSetDebugRegs, ioctlSetTSCKHz, ioctlKVMClockCtrl,
		ioctlGetIRQChip, ioctlSetIRQChip, ioctlGetPIT2, ioctlSetPIT2,
	}
}
