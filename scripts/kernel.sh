#!/usr/bin/env bash
# Provision Debian's cloud kernel and the modules the tests load into
# .cache/kernel (or $PTVMM_KERNEL_DIR):
#   vmlinuz, VERSION, config, SOURCE, modules/<file>.ko, <group>.order
# Each <group>.order lists module file names (without .ko), dependencies
# first, in the order they must be loaded; modules the kernel has built in
# (modules.builtin) are left out, so a group may be empty.
#   PTVMM_KERNEL_PACKAGE  the image package: a meta package (default
#                         linux-image-cloud-amd64; linux-image-amd64 is the
#                         standard kernel) or a versioned one
#   PTVMM_KERNEL_RELEASE  take it from another Debian release (trixie,
#                         bookworm-backports) through a private apt directory
#                         (scripts/release.sh); or give your own APT_CONFIG
# SOURCE records these, so that scripts/kmod.sh finds the headers there.
# Idempotent: does nothing when the cache is complete and holds what was
# asked for (works offline then).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${PTVMM_KERNEL_DIR:-$root/.cache/kernel}
meta=${PTVMM_KERNEL_PACKAGE:-linux-image-cloud-amd64}
release=${PTVMM_KERNEL_RELEASE:-}
# shellcheck source=scripts/release.sh
. "$root/scripts/release.sh"

# What SOURCE says for this request.
want_source() {
	echo "package=$meta"
	[[ -n $release ]] && echo "release=$release"
	[[ -z $release && -n ${APT_CONFIG:-} ]] && echo "apt-config=user"
	return 0
}

# Module groups: name -> modules wanted (dependencies are added).
# ccp is needed before kvm on Debian's standard (non-cloud) kernel only;
# it is taken when the package has it.
declare -A groups=(
	[kvm]="irqbypass kvm kvm-amd"
	[virtio-net]="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net"
	[uio]="uio uio_pci_generic"
	[tun]="tun"
)
optional="ccp"

complete() {
	[[ -s $dest/VERSION && -s $dest/vmlinuz ]] || return 1
	# A kernel asked for by name must be the one cached (a cache made
	# before SOURCE existed holds the default).
	if [[ -n ${PTVMM_KERNEL_PACKAGE:-}$release ]]; then
		[[ $(want_source) == "$(kernel_source)" ]] || return 1
	fi
	local g m
	for g in "${!groups[@]}"; do
		[[ -f $dest/$g.order ]] || return 1
		while read -r m; do
			[[ -s $dest/modules/$m.ko ]] || return 1
		done <"$dest/$g.order"
	done
}

if complete; then
	echo "kernel: $(cat "$dest/VERSION") already in ${dest#"$root"/}"
	exit 0
fi
[[ -n $release ]] && release_apt "$release"

for tool in apt-get dpkg-deb; do
	command -v "$tool" >/dev/null || {
		echo "kernel: $tool not found; run on Debian/Ubuntu or put a kernel in $dest by hand" >&2
		exit 1
	}
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# apt-get download as root warns that _apt cannot write here; harmless.
download() {
	apt-get download "$@" 2>&1 | grep -v 'unsandboxed as root' || true
	compgen -G "$1_*.deb" >/dev/null
}
fetch() {
	download "$@" && return 0
	echo "kernel: $1 not found; running apt-get update${APT_CONFIG:+ (APT_CONFIG=$APT_CONFIG)}" >&2
	apt-get update -qq
	download "$@"
}
cannot() {
	echo "kernel: cannot download $1" >&2
	if [[ -z $release && -z ${APT_CONFIG:-} ]]; then
		echo "kernel: from another release: PTVMM_KERNEL_RELEASE=trixie (or your own APT_CONFIG)" >&2
	fi
	exit 1
}

fetch "$meta" || cannot "$meta"
# A meta package depends on exactly one versioned image package, which
# holds boot/vmlinuz-<version>.
pkg=$meta
# (grep reads it all: with -q dpkg-deb would die of SIGPIPE under pipefail.)
if ! dpkg-deb -c "$pkg"_*.deb | grep '/boot/vmlinuz-' >/dev/null; then
	pkg=$(dpkg-deb -f "$meta"_*.deb Depends | tr ',|' '\n\n' | sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -n1)
	[[ -n $pkg ]] || { echo "kernel: $meta has no kernel and no linux-image dependency" >&2; exit 1; }
	fetch "$pkg" || cannot "$pkg"
fi
mkdir x
dpkg-deb -x "$pkg"_*.deb x
vmlinuz=$(compgen -G 'x/boot/vmlinuz-*' | head -n1) || { echo "kernel: $pkg has no boot/vmlinuz" >&2; exit 1; }
version=${vmlinuz#x/boot/vmlinuz-}
# Merged /usr (Debian 13) puts the modules under usr/lib.
moddir=
for d in "x/lib/modules/$version" "x/usr/lib/modules/$version"; do
	[[ -d $d ]] && moddir=$d
done
[[ -n $moddir ]] || { echo "kernel: $pkg has no lib/modules/$version" >&2; exit 1; }

# Modules built into the kernel: nothing to load, left out of the groups.
declare -A builtin=()
if [[ -f $moddir/modules.builtin ]]; then
	while IFS= read -r f; do
		b=${f##*/}
		b=${b%.ko}
		builtin[${b//-/_}]=1
	done <"$moddir/modules.builtin"
fi

# name (with _ for -) -> path of the module file, possibly compressed.
declare -A path=()
while IFS= read -r f; do
	b=${f##*/}
	b=${b%.ko*}
	path[${b//-/_}]=$f
done < <(find "$moddir" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

# Decompressed module into modules/, and prints its dependencies.
mkdir -p mods
declare -A file=()
extract() {
	local n=$1 src=${path[$1]} out
	out=mods/$(basename "${src%.ko*}").ko
	case $src in
	*.xz) xz -dc "$src" >"$out" ;;
	*.zst) zstd -qdc "$src" >"$out" ;;
	*.gz) gzip -dc "$src" >"$out" ;;
	*) cp "$src" "$out" ;;
	esac
	file[$n]=$(basename "${out%.ko}")
}
# .modinfo holds NUL-separated key=value strings; depends= names the modules.
deps() {
	tr '\0' '\n' <"mods/${file[$1]}.ko" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}

declare -A seen=()
order=()
inside=()
visit() {
	local n=${1//-/_} d
	[[ -n ${seen[$n]:-} ]] && return 0
	seen[$n]=1
	if [[ -z ${path[$n]:-} ]]; then
		[[ -n ${builtin[$n]:-} ]] && { inside+=("$n"); return 0; }
		echo "kernel: module $1 not in $pkg" >&2
		exit 1
	fi
	extract "$n"
	for d in $(deps "$n"); do visit "$d"; done
	order+=("${file[$n]}")
}

rm -rf "$dest.new"
mkdir -p "$dest.new/modules"
declare -A note=()
for g in "${!groups[@]}"; do
	seen=()
	order=()
	inside=()
	if [[ $g == kvm ]]; then
		for o in $optional; do
			[[ -n ${path[$o]:-} ]] && visit "$o"
		done
	fi
	for m in ${groups[$g]}; do visit "$m"; done
	: >"$dest.new/$g.order"
	((${#order[@]} == 0)) || printf '%s\n' "${order[@]}" >"$dest.new/$g.order"
	for m in "${order[@]}"; do cp "mods/$m.ko" "$dest.new/modules/"; done
	((${#inside[@]} == 0)) || note[$g]=" (built in: ${inside[*]})"
done

cp "$vmlinuz" "$dest.new/vmlinuz"
cp "x/boot/config-$version" "$dest.new/config"
echo "$version" >"$dest.new/VERSION"
want_source >"$dest.new/SOURCE"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "kernel: $version from $pkg${release:+ ($release)} in ${dest#"$root"/} ($(ls "$dest/modules" | wc -l) modules)"
for g in "${!groups[@]}"; do echo "  $g.order: $(paste -sd' ' "$dest/$g.order")${note[$g]:-}"; done
