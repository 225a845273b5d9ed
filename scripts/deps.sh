#!/usr/bin/env bash
# Installs the Debian packages vmm's build and tests need, if any is missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have gcc || need+=(gcc)
have ld || need+=(binutils)
have make || need+=(make)
have cpio || need+=(cpio)
have mkfs.ext4 || need+=(e2fsprogs)
have ip || need+=(iproute2)
[[ -x /bin/busybox ]] || need+=(busybox-static)
have debugfs || need+=(e2fsprogs)
[[ -f /usr/src/linux-source-6.12.tar.xz ]] || need+=(linux-source-6.12)

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
