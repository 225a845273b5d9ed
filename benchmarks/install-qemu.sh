#!/usr/bin/env bash
# Installs QEMU for `make bench` if it is missing. Never fails: without QEMU
# the benchmarks still run and say why the QEMU columns are empty.
command -v qemu-system-x86_64 >/dev/null 2>&1 && exit 0
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
echo "bench: installing qemu-system-x86" >&2
"${sudo[@]}" apt-get install -y --no-install-recommends qemu-system-x86 ||
	{ "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y --no-install-recommends qemu-system-x86; } ||
	echo "bench: could not install QEMU; its columns will be skipped" >&2
exit 0
