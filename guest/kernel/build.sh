#!/usr/bin/env bash
# Build (or fetch from cache) vmm's default guest kernel.
#
# Usage: guest/kernel/build.sh OUT_DIR
#
# Produces OUT_DIR/vmlinux (ELF with PVH entry note), OUT_DIR/bzImage and
# OUT_DIR/System.map.  Builds are cached under
#   ${VMM_CACHE:-$HOME/.cache/vmm}/kernel/<key>
# where <key> hashes the source tarball name and version, the config fragment,
# the patches and this script.  Environment:
#   VMM_CACHE            cache root (default $HOME/.cache/vmm)
#   VMM_KERNEL_TARBALL   kernel source tarball (default /usr/src/linux-source-6.12.tar.xz)
#   VMM_KERNEL_JOBS      make -j value (default $(nproc))
set -euo pipefail

if [[ $# -ne 1 ]]; then
	echo "usage: $0 OUT_DIR" >&2
	exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="$1"
fragment="$here/config"
patch_dir="$here/patches"
tarball="${VMM_KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"
jobs="${VMM_KERNEL_JOBS:-$(nproc)}"
cache_root="${VMM_CACHE:-$HOME/.cache/vmm}/kernel"
outputs=(vmlinux bzImage System.map)

log() { echo "guest/kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools and sources -------------------------------------------------------
need_pkgs=()
if [[ -z "${VMM_KERNEL_TARBALL:-}" && ! -f "$tarball" ]]; then
	need_pkgs+=(linux-source-6.12)
fi
for tool in bc:bc bison:bison flex:flex cpio:cpio xz:xz-utils make:make gcc:gcc patch:patch; do
	command -v "${tool%%:*}" >/dev/null 2>&1 || need_pkgs+=("${tool#*:}")
done
[[ -f /usr/include/libelf.h ]] || need_pkgs+=(libelf-dev)
[[ -f /usr/include/openssl/ssl.h ]] || need_pkgs+=(libssl-dev)

cached_outputs_present() {
	local d="$1" f
	for f in "${outputs[@]}"; do [[ -s "$d/$f" ]] || return 1; done
}

install_pkgs() {
	local sudo=()
	[[ $(id -u) -eq 0 ]] || sudo=(sudo)
	log "installing: $*"
	export DEBIAN_FRONTEND=noninteractive
	if ! "${sudo[@]}" apt-get install -y --no-install-recommends "$@"; then
		log "apt-get install failed; running apt-get update and retrying"
		"${sudo[@]}" apt-get update
		"${sudo[@]}" apt-get install -y --no-install-recommends "$@"
	fi
}

# The tarball must exist before the key can be computed.
if [[ ! -f "$tarball" && -z "${VMM_KERNEL_TARBALL:-}" ]]; then
	install_pkgs "${need_pkgs[@]}"
	need_pkgs=()
fi
[[ -f "$tarball" ]] || die "kernel source tarball $tarball not found"

# --- cache key ----------------------------------------------------------------
tar_id="$(basename "$tarball") $(stat -c %s "$tarball")"
if command -v dpkg-query >/dev/null 2>&1 && [[ "$tarball" == /usr/src/linux-source-*.tar.xz ]]; then
	pkg="$(basename "$tarball" .tar.xz)"
	tar_id+=" $(dpkg-query -W -f='${Package}=${Version}' "$pkg" 2>/dev/null || true)"
fi
shopt -s nullglob
patches=("$patch_dir"/*.patch)
shopt -u nullglob
key="$(
	{
		echo "tarball: $tar_id"
		echo "--- config"; cat "$fragment"
		for p in "${patches[@]}"; do echo "--- patch $(basename "$p")"; cat "$p"; done
		echo "--- build.sh"; cat "${BASH_SOURCE[0]}"
	} | sha256sum | cut -c1-16
)"
cache="$cache_root/$key"

copy_out() {
	mkdir -p "$out_dir"
	local f
	for f in "${outputs[@]}"; do cp -f "$cache/$f" "$out_dir/$f.tmp.$$" && mv -f "$out_dir/$f.tmp.$$" "$out_dir/$f"; done
}

if cached_outputs_present "$cache"; then
	copy_out
	log "cached kernel $key -> $out_dir"
	exit 0
fi

# --- build --------------------------------------------------------------------
[[ ${#need_pkgs[@]} -eq 0 ]] || install_pkgs "${need_pkgs[@]}"

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$key"
flock 9
if cached_outputs_present "$cache"; then # built by a concurrent run
	copy_out
	log "cached kernel $key -> $out_dir"
	exit 0
fi

start=$(date +%s)
rm -rf "$cache"
mkdir -p "$cache"
logf="$cache/build.log"
src="$cache/src"
mkdir -p "$src"
log "building kernel $key in $cache (log: $logf)"

fail() {
	log "error: $1"
	if [[ -f "$logf" ]]; then
		log "last lines of $logf:"
		tail -n 60 "$logf" >&2
	fi
	exit 1
}

tar -xf "$tarball" -C "$src" --strip-components=1 >>"$logf" 2>&1 || fail "extracting $tarball"
for p in "${patches[@]}"; do
	echo "=== patch $(basename "$p")" >>"$logf"
	patch -d "$src" -p1 --forward --no-backup-if-mismatch <"$p" >>"$logf" 2>&1 || fail "patch $(basename "$p") does not apply"
done

mk() { make -C "$src" -j"$jobs" KBUILD_BUILD_USER=vmm KBUILD_BUILD_HOST=vmm "$@" >>"$logf" 2>&1; }

mk tinyconfig || fail "make tinyconfig"
(cd "$src" && KCONFIG_CONFIG=.config ./scripts/kconfig/merge_config.sh -m -O . .config "$fragment") >>"$logf" 2>&1 ||
	fail "merge_config.sh"
mk olddefconfig || fail "make olddefconfig"

# Every line of the fragment must hold in the final .config.
mismatch=()
while IFS= read -r line; do
	if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
		sym="${BASH_REMATCH[1]}" want="${BASH_REMATCH[2]}"
		got="$(grep -E "^${sym}=" "$src/.config" | head -n1 | cut -d= -f2- || true)"
		[[ "$got" == "$want" ]] || mismatch+=("$sym: want $want, got ${got:-<unset>}")
	elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
		sym="${BASH_REMATCH[1]}"
		got="$(grep -E "^${sym}=" "$src/.config" | head -n1 | cut -d= -f2- || true)"
		[[ -z "$got" || "$got" == n ]] || mismatch+=("$sym: want unset, got $got")
	fi
done <"$fragment"
if [[ ${#mismatch[@]} -gt 0 ]]; then
	log "error: the config fragment did not take effect (missing dependencies?):"
	printf '  %s\n' "${mismatch[@]}" >&2
	exit 1
fi
cp "$src/.config" "$cache/config"

mk vmlinux bzImage || fail "make vmlinux bzImage"
cp "$src/vmlinux" "$cache/vmlinux.tmp"
cp "$src/arch/x86/boot/bzImage" "$cache/bzImage.tmp"
cp "$src/System.map" "$cache/System.map.tmp"
for f in "${outputs[@]}"; do mv -f "$cache/$f.tmp" "$cache/$f"; done
if [[ "${VMM_KERNEL_KEEP_SRC:-0}" != 1 ]]; then
	rm -rf "$src"
fi
copy_out
log "built kernel $key in $(($(date +%s) - start))s -> $out_dir"
