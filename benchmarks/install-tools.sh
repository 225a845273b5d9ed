#!/usr/bin/env bash
# Installs what `make bench` compares with and measures through, if missing:
# QEMU, and iperf3, fio and a static busybox for the guest's tools image
# (the iperf3 and fio suites). Never fails: a suite whose tool is missing
# is skipped with a line saying why, and QEMU's columns stay empty.
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v fio >/dev/null 2>&1 || need+=(fio)
[[ -x /bin/busybox ]] || need+=(busybox-static)
((${#need[@]} == 0)) && exit 0
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
echo "bench: installing ${need[*]}" >&2
"${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}" ||
	{ "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"; } ||
	echo "bench: could not install ${need[*]}; the suites that need them will be skipped" >&2
exit 0
