// Package containerd makes vmm a containerd runtime, io.containerd.vmm.v2:
// the shim v2 bootstrap (`start` prints the ttrpc address of a daemon it
// re-executes, `delete` cleans up after a shim that died) and the Task
// API v2 over ttrpc, which containerd 1.6, 1.7 and 2.x all speak.
//
// One shim serves one sandbox: a plain task, or with CRI's annotations a
// whole pod. Its VM is a vmm process configured only through the REST
// API socket, and the tasks' processes run through the guest agent over
// hybrid vsock. A task's root filesystem is made of the overlayfs
// snapshotter's layers, each turned once into a read-only ext4 image
// cached by snapshot and shared by every VM, plus a writable ext4 disk of
// its own; the guest stacks them with overlayfs, so a container's writes
// never reach a shared layer (nor the snapshot's upper directory on the
// host: they live and die with the task's disk). A pod's VM boots with
// its sandbox container's disks and spare placeholder drives; a later
// container of the pod takes spare slots and has its images swapped in
// with PATCH /drives/{id}, and gives them back when deleted (slots.go).
// A pod with a network namespace (CRI's) gets a NIC: vmm runs in that
// namespace on a tap that tc redirects to and from the CNI interface,
// and the agent gives the guest the pod's addresses and routes
// (network.go).
package containerd
