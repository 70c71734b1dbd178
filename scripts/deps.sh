#!/usr/bin/env bash
# Install the Debian packages `make demo` or `make test` needs, after
# scripts/kernel.sh (the headers package is named after its kernel).
#   scripts/deps.sh demo|test
# Needed: qemu-system-x86 (the QEMU test host; optional where the host has
# VT-x/AMD-V and a usable /dev/kvm) and the cached kernel's linux-headers
# package while guest/kmod is not built (scripts/kmod.sh), when the kernel
# came from the system's own sources and installing its headers pulls
# nothing from another release (for another release's kernel kmod.sh
# unpacks the headers privately instead). `test` also wants
# tshark, tcpdump, iproute2 and acpica-tools: without them some checks skip.
# As root (or in CI with passwordless sudo) it installs what is missing and
# says so in one line; otherwise it prints the apt-get command and stops
# when something needed is missing (exit 1), or goes on when only the
# optional packages are.
set -euo pipefail

what=${1:-}
[[ $what == demo || $what == test ]] || { echo "usage: $0 demo|test" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${PTVMM_KERNEL_DIR:-$root/.cache/kernel}
# shellcheck source=scripts/release.sh
. "$root/scripts/release.sh"

need=()
optional=()
if ! command -v qemu-system-x86_64 >/dev/null; then
	if grep -qwE 'vmx|svm' /proc/cpuinfo 2>/dev/null && [[ -r /dev/kvm && -w /dev/kvm ]]; then
		optional+=(qemu-system-x86) # only the boot tests use it here
	else
		need+=(qemu-system-x86)
	fi
fi
if [[ -s $dest/VERSION && ! -s $dest/modules/ptvmm_testdev.ko ]]; then
	version=$(tr -d '[:space:]' <"$dest/VERSION")
	if [[ ! -f /lib/modules/$version/build/Makefile && ! -f /usr/src/linux-headers-$version/Makefile &&
		-z $(source_get release) && -z $(source_get apt-config) ]]; then
		# Not when it would pull another release in (no package lists yet is fine).
		why=
		if command -v apt-get >/dev/null && why=$(safe_install "linux-headers-$version"); then
			need+=("linux-headers-$version")
		elif [[ $why == *"would change the system"* ]]; then
			echo "deps: not installing linux-headers-$version: $why"
		else
			need+=("linux-headers-$version")
		fi
	fi
fi
if [[ $what == test ]]; then
	command -v tshark >/dev/null || optional+=(tshark)
	command -v tcpdump >/dev/null || optional+=(tcpdump)
	command -v ip >/dev/null || optional+=(iproute2)
	command -v iasl >/dev/null || optional+=(acpica-tools)
fi
pkgs=("${need[@]}" "${optional[@]}")
((${#pkgs[@]})) || exit 0

sudo=
if [[ $(id -u) != 0 ]]; then
	# Only CI may use sudo unasked; a developer installs by hand.
	if [[ ${CI:-} == true ]] && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=no; fi
fi
cmd="apt-get install --no-install-recommends ${pkgs[*]}"
if [[ $sudo == no ]] || ! command -v apt-get >/dev/null; then
	if ((${#need[@]})); then
		echo "deps: make $what needs ${need[*]}; install as root: $cmd" >&2
		exit 1
	fi
	echo "deps: some tests skip without ${optional[*]}; install as root: $cmd"
	exit 0
fi

echo "deps: installing ${pkgs[*]} ($cmd)"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
install() { $sudo apt-get install -y -q --no-install-recommends "${pkgs[@]}" </dev/null >"$log" 2>&1; }
# A fresh machine may have no package lists yet.
if ! install && ! { $sudo apt-get update -q </dev/null >>"$log" 2>&1 && install; }; then
	tail -n 20 "$log" >&2
	echo "deps: apt-get failed" >&2
	exit 1
fi
