#!/usr/bin/env bash
# Build guest/kmod (ptvmm_testdev.ko, the MSI-X driver for the PCI test
# device, and ptvmm_ptnet.ko, the netmap passthrough driver for guest/ptnet)
# against the headers of the kernel `scripts/kernel.sh` provisioned, into
# .cache/kernel/modules/ (or $PTVMM_KERNEL_DIR/modules/).
#
# Headers, in this order:
#   - installed: /lib/modules/<version>/build or /usr/src/linux-headers-<version>;
#   - a kernel from the system's own sources: as root (or in CI with
#     passwordless sudo) it installs linux-headers-<version>, but only when
#     that adds or upgrades nothing from another release (scripts/release.sh:
#     safe_install); otherwise it names the package and builds nothing;
#   - a kernel from another release (SOURCE: release= or apt-config=): never
#     installed. It downloads linux-headers-<version> and its linux-headers-*
#     and linux-kbuild-* dependencies with that release's APT_CONFIG and
#     unpacks them into .cache/kbuild/<version>; when the headers want a
#     compiler this machine lacks (trixie's gcc-14), that release's gcc is
#     unpacked there too; when that release's libc is newer than ours (its
#     modpost, objtool and cc1 need glibc 2.38+), its libc6 is, and those
#     programs run through its own dynamic loader. No root needed.
# When the modules cannot be built it says why in one line (also in
# <kernel dir>/KMOD_MISSING, which the tests' skip messages quote) and exits 0,
# and the tests that need them skip; in CI that is a failure for the
# default kernel only.
# Idempotent: does nothing when every module is newer than the sources and
# built for the cached kernel.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${PTVMM_KERNEL_DIR:-$root/.cache/kernel}
src=$root/guest/kmod
names=(ptvmm_testdev ptvmm_ptnet)
# shellcheck source=scripts/release.sh
. "$root/scripts/release.sh"

[[ -s $dest/VERSION ]] || { echo "kmod: no kernel in ${dest#"$root"/}; run scripts/kernel.sh first" >&2; exit 1; }
version=$(tr -d '[:space:]' <"$dest/VERSION")
release=$(source_get release)
pkg=linux-headers-$version
private=$root/.cache/kbuild/$version

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

# skip ends the script without the modules: one line saying why.
skip() {
	[[ -f $private/ready ]] || rm -rf "$private"
	echo "kmod: ${names[*]/%/.ko} not built for $version: $*"
	echo "$*" >"$dest/KMOD_MISSING"
	# CI must run the tests that need them, with the kernel it is meant for.
	if [[ ${CI:-} == true ]] && default_kernel; then exit 1; fi
	exit 0
}

headers() {
	local d
	for d in "/lib/modules/$version/build" "/usr/src/$pkg"; do
		[[ -f $d/Makefile ]] && { echo "$d"; return 0; }
	done
	return 1
}

cc= # the compiler, when the headers' own is not on PATH

# private_kbuild unpacks the headers of another release's kernel (and the
# compiler and libc they need) into $private; sets kdir and cc.
private_kbuild() {
	local r=$private/root work
	kdir=$r/usr/src/$pkg
	if [[ ! -f $private/ready ]]; then
		if [[ -n $release ]]; then
			release_apt "$release" || skip "no package lists for $release (apt-get update failed)"
		elif [[ -z ${APT_CONFIG:-} ]]; then
			skip "the kernel came through an APT_CONFIG of yours; run make kernel with it set"
		fi
		echo "kmod: unpacking $pkg${release:+ from $release} into ${private#"$root"/} (not installed)"
		rm -rf "$private"
		mkdir -p "$private/debs" "$r"
		work=$private/debs
		get() {
			dl() { (cd "$work" && apt-get download -q "$@" </dev/null >/dev/null 2>"$work/err"); }
			dl "$@" && return 0
			apt-get update -qq </dev/null >/dev/null 2>&1 || true
			# The archive keeps a release's newest kernel only.
			dl "$@" || skip "apt-get download $*: $(grep -m1 '^E:' "$work/err" || echo failed) (an older kernel than the archive's? remove ${dest#"$root"/} and run make kernel again)"
		}
		get "$pkg"
		# linux-headers-<version>-common and linux-kbuild-<...>: the rest of kbuild.
		local deps
		deps=$(dpkg-deb -f "$work/${pkg}"_*.deb Depends | tr ',|' '\n\n' | sed -n 's/^ *\(linux-\(headers\|kbuild\)-[^ ]*\).*/\1/p' | sort -u)
		# shellcheck disable=SC2086
		get $deps
		local gcc f
		for f in "$work"/*.deb; do dpkg-deb -x "$f" "$r"; done
		[[ -f $kdir/Makefile ]] || skip "$pkg has no usr/src/$pkg/Makefile"
		# The headers include their -common half by absolute path.
		sed -i "s#^include /usr/src/#include $r/usr/src/#" "$kdir/Makefile"
		# Module BTF needs pahole; without vmlinux kbuild skips it, as with
		# Debian 12's headers.
		rm -f "$kdir/vmlinux"

		# The compiler the headers name (.kernelvariables: CC = ... gcc-14).
		gcc=$(sed -n 's/^CC *=.*)\(gcc-[0-9.]*\) *$/\1/p' "$kdir/.kernelvariables" 2>/dev/null | head -n1)
		local want=() libc sys
		if [[ -n $gcc ]] && ! command -v "x86_64-linux-gnu-$gcc" >/dev/null; then
			# Its driver, cc1 and their libraries; the system's binutils assemble.
			mapfile -t want < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
				--no-breaks --no-replaces --no-enhances "$gcc" 2>/dev/null | grep -v '^ ' | sort -u |
				grep -Ev '^(binutils|lib(binutils|ctf|sframe|gprofng|jansson|[a-z]*san[0-9]|gomp|itm|quadmath|atomic|cc1))')
			((${#want[@]})) || skip "$gcc is not in ${release:-the sources of your APT_CONFIG}"
		fi
		libc=$(apt-cache policy libc6 2>/dev/null | sed -n 's/^ *Candidate: //p')
		sys=$(dpkg-query -W -f '${Version}' libc6 2>/dev/null || true)
		local wrap=0
		if [[ -n $libc && $libc != "(none)" && -n $sys ]] && dpkg --compare-versions "$libc" gt "$sys"; then
			wrap=1
			[[ " ${want[*]} " == *" libc6 "* ]] || want+=(libc6)
		fi
		if ((${#want[@]})); then
			rm -f "$work"/*.deb
			get "${want[@]}"
			for f in "$work"/*.deb; do dpkg-deb -x "$f" "$r"; done
		fi
		rm -rf "$work"
		# Documentation and gcc's LTO programs: not needed to build modules.
		rm -rf "${r:?}/usr/share"
		find "$r/usr" \( -name '*lto-dump*' -o -name lto1 \) -type f -delete
		if ((wrap)); then
			# Their programs need this libc: run them through its loader.
			local ld lib p progs
			ld=$(compgen -G "$r/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" || compgen -G "$r/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2") ||
				skip "libc6 of $release has no ld-linux-x86-64.so.2"
			lib=$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
			# Listed first: the loop renames files.
			mapfile -d '' progs < <(find "$r/usr/lib" -path '*linux-kbuild-*' -type f -perm -u+x -print0
				find "$r/usr/bin" "$r/usr/libexec" -type f -perm -u+x -print0 2>/dev/null)
			for p in "${progs[@]}"; do
				[[ $(head -c4 "$p" | od -An -c | tr -d ' ') == 177ELF ]] || continue
				# Only dynamically linked programs (those with an interpreter).
				LC_ALL=C readelf -l "$p" 2>/dev/null | grep -q 'program interpreter' || continue
				mv "$p" "$p.bin"
				# shellcheck disable=SC2016 # $0 and $@ are the wrapper's
				printf '#!/bin/sh\nexec %s --library-path %s --argv0 "$0" "$0.bin" "$@"\n' "$ld" "$lib" >"$p"
				chmod 755 "$p"
			done
		fi
		touch "$private/ready"
	fi
	gcc=$(sed -n 's/^CC *=.*)\(gcc-[0-9.]*\) *$/\1/p' "$kdir/.kernelvariables" 2>/dev/null | head -n1)
	if [[ -n $gcc ]] && ! command -v "x86_64-linux-gnu-$gcc" >/dev/null; then
		cc=$r/usr/bin/x86_64-linux-gnu-$gcc
		[[ -x $cc ]] || skip "no $gcc here or in ${private#"$root"/}"
	fi
}

if kdir=$(headers); then
	:
elif [[ -n $release || -n $(source_get apt-config) ]]; then
	private_kbuild
else
	sudo=
	if [[ $(id -u) != 0 ]]; then
		# Only CI may use sudo unasked; a developer installs by hand.
		if [[ ${CI:-} == true ]] && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=no; fi
	fi
	if [[ $sudo == no ]] || ! command -v apt-get >/dev/null; then
		skip "install $pkg (apt-get install --no-install-recommends $pkg), then run make kernel"
	fi
	export DEBIAN_FRONTEND=noninteractive
	# Never pull another release into the system (trixie's headers want its libc).
	if ! why=$(safe_install "$pkg"); then
		$sudo apt-get update -qq </dev/null
		why=$(safe_install "$pkg") || skip "$why"
	fi
	echo "kmod: installing $pkg"
	env -u APT_CONFIG $sudo apt-get install -y -qq --no-install-recommends "$pkg" </dev/null
	kdir=$(headers) || { echo "kmod: $pkg installed but no kernel build directory found" >&2; exit 1; }
fi

# Build in a copy: kbuild writes its objects next to the sources.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$src"/Kbuild "$src"/*.c "$work"/
# Without the kernel's vmlinux kbuild skips BTF for the module and says so.
if ! make -s -C "$kdir" M="$work" ${cc:+CC="$cc"} modules >"$work/log" 2>&1; then
	cat "$work/log" >&2
	skip "the build against ${kdir#"$root"/} failed: $(grep -m1 -E 'error|Error' "$work/log" || tail -n1 "$work/log")"
fi
grep -v '^Skipping BTF generation' "$work/log" || true
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
rm -f "$dest/KMOD_MISSING"
echo "kmod: ${names[*]/%/.ko} for $version in ${dest#"$root"/}/modules${cc:+ (with ${cc#"$root"/})}"
