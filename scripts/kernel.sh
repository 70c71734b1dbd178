#!/usr/bin/env bash
# Provision Debian's cloud kernel and the modules the tests load into
# .cache/kernel (or $PTVMM_KERNEL_DIR):
#   vmlinuz, VERSION, config, modules/<file>.ko, <group>.order
# Each <group>.order lists module file names (without .ko), dependencies
# first, in the order they must be loaded.
# Idempotent: does nothing when the cache is complete (works offline then).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${PTVMM_KERNEL_DIR:-$root/.cache/kernel}
meta=${PTVMM_KERNEL_PACKAGE:-linux-image-cloud-amd64}

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
	local g m
	for g in "${!groups[@]}"; do
		[[ -s $dest/$g.order ]] || return 1
		while read -r m; do
			[[ -s $dest/modules/$m.ko ]] || return 1
		done <"$dest/$g.order"
	done
}

if complete; then
	echo "kernel: $(cat "$dest/VERSION") already in ${dest#"$root"/}"
	exit 0
fi

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
	echo "kernel: $1 not found; running apt-get update" >&2
	apt-get update -qq
	download "$@"
}

fetch "$meta" || { echo "kernel: cannot download $meta" >&2; exit 1; }
# The meta package depends on exactly one versioned image package.
pkg=$(dpkg-deb -f "$meta"_*.deb Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -n1)
[[ -n $pkg ]] || { echo "kernel: no linux-image dependency in $meta" >&2; exit 1; }
fetch "$pkg" || { echo "kernel: cannot download $pkg" >&2; exit 1; }
mkdir x
dpkg-deb -x "$pkg"_*.deb x
version=${pkg#linux-image-}
moddir=x/lib/modules/$version
[[ -d $moddir ]] || { echo "kernel: $pkg has no lib/modules/$version" >&2; exit 1; }

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
visit() {
	local n=${1//-/_} d
	[[ -n ${seen[$n]:-} ]] && return 0
	seen[$n]=1
	[[ -n ${path[$n]:-} ]] || { echo "kernel: module $1 not in $pkg" >&2; exit 1; }
	extract "$n"
	for d in $(deps "$n"); do visit "$d"; done
	order+=("${file[$n]}")
}

rm -rf "$dest.new"
mkdir -p "$dest.new/modules"
for g in "${!groups[@]}"; do
	seen=()
	order=()
	if [[ $g == kvm ]]; then
		for o in $optional; do
			[[ -n ${path[$o]:-} ]] && visit "$o"
		done
	fi
	for m in ${groups[$g]}; do visit "$m"; done
	printf '%s\n' "${order[@]}" >"$dest.new/$g.order"
	for m in "${order[@]}"; do cp "mods/$m.ko" "$dest.new/modules/"; done
done

cp "x/boot/vmlinuz-$version" "$dest.new/vmlinuz"
cp "x/boot/config-$version" "$dest.new/config"
echo "$version" >"$dest.new/VERSION"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "kernel: $version in ${dest#"$root"/} ($(ls "$dest/modules" | wc -l) modules)"
for g in "${!groups[@]}"; do echo "  $g.order: $(tr '\n' ' ' <"$dest/$g.order")"; done
