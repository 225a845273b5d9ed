#!/usr/bin/env bash
# Build the vmm test guest.
#
#   guest/testguest/build.sh OUT_DIR
#
# Produces OUT_DIR/testguest.elf (ELF64 with a Xen PVH note, e_entry = the
# 64-bit Linux entry) and OUT_DIR/testguest.bzimage (Linux boot protocol
# 2.15 image with the 64-bit entry at payload + 0x200).  Needs only the host
# gcc and binutils; always rebuilds (it takes well under a second).  Outputs
# are written to a temporary directory first and renamed into place, so
# concurrent builds into the same OUT_DIR do not see half-written files.
set -euo pipefail

if [[ $# -ne 1 ]]; then
	echo "usage: $0 OUT_DIR" >&2
	exit 2
fi

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
TMP=$(mktemp -d "$OUT/.testguest-build.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

CC=${CC:-gcc}
LD=${LD:-ld}
OBJCOPY=${OBJCOPY:-objcopy}
NM=${NM:-nm}
OBJDUMP=${OBJDUMP:-objdump}

# Freestanding, no FP/SIMD (KVM's emulator cannot run it), no red zone
# (exceptions push onto the stack we are on), no builtins / loop-to-memset
# transformations, no CET endbr64 (unknown to the emulator), no unwind tables.
CFLAGS=(
	-std=gnu11 -O2 -Wall -Wextra -Werror
	-ffreestanding -fno-builtin -nostdlib -nostdinc
	-fno-pic -fno-pie -mcmodel=small -m64
	-mno-red-zone -mgeneral-regs-only -mno-sse -mno-mmx -mno-80387
	-fno-stack-protector -fno-tree-loop-distribute-patterns
	-mstringop-strategy=loop -fcf-protection=none
	-fno-asynchronous-unwind-tables -fno-unwind-tables
	-fno-jump-tables
	-I "$SRC"
)
ASFLAGS=(-m64 -fno-pic -fno-pie -I "$SRC")

"$CC" "${CFLAGS[@]}" -c "$SRC/main.c" -o "$TMP/main.o"
"$CC" "${CFLAGS[@]}" -c "$SRC/virtio_blk.c" -o "$TMP/virtio_blk.o"
"$CC" "${CFLAGS[@]}" -c "$SRC/virtio_net.c" -o "$TMP/virtio_net.o"
"$CC" "${CFLAGS[@]}" -c "$SRC/virtio_vsock.c" -o "$TMP/virtio_vsock.o"
"$CC" "${CFLAGS[@]}" -c "$SRC/virtio_rng.c" -o "$TMP/virtio_rng.o"
"$CC" "${CFLAGS[@]}" -c "$SRC/xsave.c" -o "$TMP/xsave.o"
"$CC" "${CFLAGS[@]}" -c "$SRC/snap.c" -o "$TMP/snap.o"
"$CC" "${ASFLAGS[@]}" -c "$SRC/entry.S" -o "$TMP/entry.o"
"$CC" "${ASFLAGS[@]}" -c "$SRC/xsave.S" -o "$TMP/xsave_s.o"
"$LD" -m elf_x86_64 -static -nostdlib --build-id=none -z noexecstack \
	--no-warn-rwx-segments -z max-page-size=0x1000 \
	-T "$SRC/linker.ld" -o "$TMP/testguest.elf" "$TMP/entry.o" "$TMP/main.o" "$TMP/virtio_blk.o" "$TMP/virtio_net.o" "$TMP/virtio_vsock.o" \
	"$TMP/virtio_rng.o" "$TMP/xsave.o" "$TMP/xsave_s.o" "$TMP/snap.o"

# Flat image of everything loadable except .bss/.stack (NOLOAD): this is the
# bzImage payload, loaded at 0x100000.
"$OBJCOPY" -O binary "$TMP/testguest.elf" "$TMP/testguest.bin"

sym() { "$NM" "$TMP/testguest.elf" | awk -v s="$1" '$3 == s { print "0x" $1 }'; }
image_start=$(sym _image_start)
linux32=$(sym linux32_entry)
linux64=$(sym linux64_entry)
end=$(sym _end)
kinfo=$(sym kernel_info)
if (( image_start != 0x100000 || linux32 != 0x100000 || linux64 != 0x100200 )); then
	echo "build.sh: bad entry layout: image=$image_start linux32=$linux32 linux64=$linux64" >&2
	exit 1
fi

# Refuse instructions KVM's emulator cannot handle (and CET/FP/SIMD in
# general).  The real-mode/32-bit bits are in entry.S and checked by eye.
# XSAVE/XRSTOR are allowed only in xsave.S's xs_* functions (the xsave=1
# test, whose instructions the VMM completes on kvm-pvm hosts); symbol names
# in operands (<xsave_test+0x10>) are not instructions.
if "$OBJDUMP" -d --no-show-raw-insn "$TMP/testguest.elf" |
	awk '/^[0-9a-f]+ <[^>]*>:$/ { xs = ($2 ~ /^<xs_/); next } { gsub(/<[^>]*>/, "") } !(xs && /xsave|xrstor/)' |
	grep -Ei '%[xy]mm|endbr|popcnt|lzcnt|tzcnt|xsave|xrstor|fwait|cmpxchg16b|\brep[a-z]* |\bf[a-z]+ +%st|\bmovs[bwlq]?\b|\bstos[bwlq]?\b'; then
	echo "build.sh: forbidden instruction in testguest.elf (see above)" >&2
	exit 1
fi

init_size=$(( end - image_start ))
kinfo_off=$(( kinfo - image_start ))
"$CC" -m64 -I "$SRC" -Wa,-I,"$TMP" \
	-DINIT_SIZE="$init_size" -DKERNEL_INFO_OFFSET="$kinfo_off" \
	-c "$SRC/bzimage.S" -o "$TMP/bzimage.o"
"$LD" -m elf_x86_64 -static -nostdlib --build-id=none -z noexecstack \
	-Ttext=0 -e 0 -o "$TMP/bzimage.elf" "$TMP/bzimage.o"
"$OBJCOPY" -O binary -j .text "$TMP/bzimage.elf" "$TMP/testguest.bzimage"

# Sanity-check the header: boot_flag, "HdrS", version, and that the payload
# is the flat image.
hdr() { od -An -t x"$2" -j "$1" -N "$2" "$TMP/testguest.bzimage" | tr -d ' '; }
if [[ $(hdr 0x1fe 2) != aa55 || $(hdr 0x202 4) != 53726448 || $(hdr 0x206 2) != 020f ]]; then
	echo "build.sh: bad bzImage header" >&2
	exit 1
fi
setup_sects=$(( 0x$(hdr 0x1f1 1) ))
if ! cmp -s -n "$(stat -c %s "$TMP/testguest.bin")" \
	<(tail -c +$(( (setup_sects + 1) * 512 + 1 )) "$TMP/testguest.bzimage") "$TMP/testguest.bin"; then
	echo "build.sh: bzImage payload does not match testguest.bin" >&2
	exit 1
fi

mv -f "$TMP/testguest.elf" "$OUT/testguest.elf"
mv -f "$TMP/testguest.bzimage" "$OUT/testguest.bzimage"
