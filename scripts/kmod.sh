#!/usr/bin/env bash
# Build guest/kmod (ptvmm_testdev.ko, the MSI-X driver for the PCI test
# device, and ptvmm_ptnet.ko, the netmap passthrough driver for guest/ptnet)
# against the headers of the kernel `scripts/kernel.sh` provisioned, into
# .cache/kernel/modules/ (or $PTVMM_KERNEL_DIR/modules/).
# Needs Debian's linux-headers-<version> package. As root (or in CI with
# passwordless sudo) it installs that package; otherwise it says which
# package to install and exits 0, and the tests that need the modules skip.
# Idempotent: does nothing when every module is newer than the sources and
# built for the cached kernel.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${PTVMM_KERNEL_DIR:-$root/.cache/kernel}
src=$root/guest/kmod
names=(ptvmm_testdev ptvmm_ptnet)

[[ -s $dest/VERSION ]] || { echo "kmod: no kernel in ${dest#"$root"/}; run scripts/kernel.sh first" >&2; exit 1; }
version=$(tr -d '[:space:]' <"$dest/VERSION")

# The version a module was built for, from its .modinfo strings.
vermagic() { tr '\0' '\n' <"$1" | sed -n 's/^vermagic=\([^ ]*\).*/\1/p' | head -n1; }

uptodate() {
	local ko=$dest/modules/$1.ko f
	[[ -s $ko && $(vermagic "$ko") == "$version" ]] || return 1
	for f in "$src"/Kbuild "$src"/*.c; do
		[[ $f -nt $ko ]] && return 1
	done
	return 0
}
stale=0
for name in "${names[@]}"; do uptodate "$name" || stale=1; done
if [[ $stale == 0 ]]; then
	echo "kmod: ${names[*]/%/.ko} for $version already in ${dest#"$root"/}/modules"
	exit 0
fi

pkg=linux-headers-$version
headers() {
	local d
	for d in "/lib/modules/$version/build" "/usr/src/$pkg"; do
		[[ -f $d/Makefile ]] && { echo "$d"; return 0; }
	done
	return 1
}

if ! kdir=$(headers); then
	sudo=
	if [[ $(id -u) != 0 ]]; then
		# Only CI may use sudo unasked; a developer installs by hand.
		if [[ ${CI:-} == true ]] && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=no; fi
	fi
	if [[ $sudo == no ]] || ! command -v apt-get >/dev/null; then
		echo "kmod: ${names[*]/%/.ko} not built: install $pkg (apt-get install --no-install-recommends $pkg), then run make kernel"
		# CI must run the test that needs it, not skip it.
		[[ ${CI:-} == true ]] && exit 1
		exit 0
	fi
	echo "kmod: installing $pkg"
	export DEBIAN_FRONTEND=noninteractive
	if ! $sudo apt-get install -y -qq --no-install-recommends "$pkg" </dev/null; then
		$sudo apt-get update -qq </dev/null
		$sudo apt-get install -y -qq --no-install-recommends "$pkg" </dev/null
	fi
	kdir=$(headers) || { echo "kmod: $pkg installed but no kernel build directory found" >&2; exit 1; }
fi

# Build in a copy: kbuild writes its objects next to the sources.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$src"/Kbuild "$src"/*.c "$work"/
# Without the kernel's vmlinux kbuild skips BTF for the module and says so.
make -s -C "$kdir" M="$work" modules 2>&1 | { grep -v '^Skipping BTF generation' || true; }
mkdir -p "$dest/modules"
for name in "${names[@]}"; do
	ko=$dest/modules/$name.ko
	# Debian strips its modules too; the debug info would only bloat the guest image.
	strip --strip-debug "$work/$name.ko"
	got=$(vermagic "$work/$name.ko")
	[[ $got == "$version" ]] || { echo "kmod: $name.ko built for $got, expected $version" >&2; exit 1; }
	cp "$work/$name.ko" "$ko.new"
	mv "$ko.new" "$ko"
done
echo "kmod: ${names[*]/%/.ko} for $version in ${dest#"$root"/}/modules"
