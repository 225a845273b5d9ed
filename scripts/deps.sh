#!/usr/bin/env bash
# Installs the Debian packages vmm's build and tests need, if any is missing.
# The tests ask for each by name and package through internal/testenv: a
# missing one skips them, or under VMM_TEST_STRICT=1 (CI) fails them.
set -euo pipefail

need=()
# have looks in the sbin directories too, which a non-root PATH may lack.
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }
# static reports whether $1 is an ELF without a program interpreter, as
# guest/testimage requires of busybox (containers run it with no libc).
static() { [[ -x $1 ]] && ! grep -aq 'ld-linux' <(head -c 4096 "$1"); }
have gcc || need+=(gcc)
have ld || need+=(binutils)
have make || need+=(make)
have cpio || need+=(cpio)
# mkfs.ext4 and debugfs: the image builder, its tests and the agent's.
have mkfs.ext4 && have debugfs || need+=(e2fsprogs)
# ip: network namespaces and taps for the net tests.
have ip || need+=(iproute2)
# losetup: the agent's block-device rootfs test.
have losetup || need+=(mount)
# iasl: the ACPI tables' disassembly checks in boot.
have iasl || need+=(acpica-tools)
# A static busybox: the test image and the agent's containers.
static /bin/busybox || static /usr/bin/busybox || need+=(busybox-static)
# containerd (Debian's, 1.6; it pulls in runc): the containerd shim's tests
# start a private one.
have containerd && have ctr || need+=(containerd)
[[ -f /usr/src/linux-source-6.12.tar.xz ]] || need+=(linux-source-6.12)
# lz4: the guest kernel's bzImage is LZ4-compressed (guest/kernel/config).
have lz4 || need+=(lz4)

if ! have go; then
	echo "deps: Go is not installed (need Go >= 1.26 on PATH or in /usr/local/go)" >&2
	exit 1
fi

if ((${#need[@]})); then
	sudo=()
	[[ $(id -u) -eq 0 ]] || sudo=(sudo)
	export DEBIAN_FRONTEND=noninteractive
	echo "deps: installing ${need[*]}" >&2
	if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"; then
		"${sudo[@]}" apt-get update
		"${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"
	fi
fi
