# shellcheck shell=bash
# shellcheck disable=SC2154 # root and dest are set by the sourcing script
# Sourced by scripts/kernel.sh, kmod.sh and deps.sh (which set root, the
# checkout, and dest, the kernel cache): apt access to another Debian
# release's packages without touching the system's apt configuration.
#
# PTVMM_KERNEL_RELEASE=trixie (or bookworm-backports, ...) makes a private apt
# directory .cache/apt/<release> (its own sources.list, package lists, state
# and download cache; the system's keyring) and points APT_CONFIG at it, so
# `apt-get update` and `apt-get download` work there without root and never
# see or change the system's lists. A user's own APT_CONFIG is used as given.
# Nothing from such a release is ever installed: see safe_install.

# release_apt sets APT_CONFIG to the private configuration of release $1,
# writing it first if needed.
release_apt() {
	local rel=$1 dir mirror=${PTVMM_DEBIAN_MIRROR:-http://deb.debian.org}
	[[ $rel =~ ^[a-z][a-z0-9-]*$ ]] || { echo "release: bad release name '$rel'" >&2; return 1; }
	dir=$root/.cache/apt/$rel
	if [[ ! -s $dir/apt.conf ]]; then
		mkdir -p "$dir"/etc/sources.list.d "$dir"/etc/preferences.d "$dir"/lists/partial "$dir"/archives/partial
		: >"$dir/status"
		local key=/usr/share/keyrings/debian-archive-keyring.gpg
		{
			echo "deb [signed-by=$key] $mirror/debian $rel main"
			# A stable release's kernels come through -updates and -security too.
			if [[ $rel != *-* ]]; then
				echo "deb [signed-by=$key] $mirror/debian $rel-updates main"
				echo "deb [signed-by=$key] $mirror/debian-security $rel-security main"
			fi
		} >"$dir/etc/sources.list"
		# An empty dpkg status: apt resolves as if nothing were installed,
		# and only downloads.
		cat >"$dir/apt.conf" <<-EOF
			Dir::Etc::sourcelist "$dir/etc/sources.list";
			Dir::Etc::sourceparts "$dir/etc/sources.list.d";
			Dir::Etc::preferences "$dir/etc/preferences";
			Dir::Etc::preferencesparts "$dir/etc/preferences.d";
			Dir::State "$dir";
			Dir::State::lists "$dir/lists";
			Dir::State::status "$dir/status";
			Dir::Cache "$dir";
			Dir::Cache::archives "$dir/archives";
			APT::Sandbox::User "root";
			Acquire::Languages "none";
		EOF
	fi
	export APT_CONFIG=$dir/apt.conf
	# First use: no package lists yet.
	if ! compgen -G "$dir/lists/*_Packages*" >/dev/null; then
		echo "release: apt-get update for $rel (APT_CONFIG=$APT_CONFIG)" >&2
		apt-get update -qq </dev/null || return 1
	fi
}

# kernel_source prints key=value lines of the kernel cache's SOURCE file
# (package=, release=, apt-config=user), empty for a cache made before it.
kernel_source() { if [[ -f $dest/SOURCE ]]; then cat "$dest/SOURCE"; fi; }

# source_get KEY prints that key's value from the kernel cache's SOURCE.
source_get() { kernel_source | sed -n "s/^$1=//p" | head -n1; }

# default_kernel says whether the cache holds the repository's default kernel
# (the system release's linux-image-cloud-amd64), the one CI is strict about.
default_kernel() {
	[[ -z $(source_get release) && -z $(source_get apt-config) ]] || return 1
	local p
	p=$(source_get package)
	[[ -z $p || $p == linux-image-cloud-amd64 ]]
}

# safe_install PKG... says whether `apt-get install` of PKG from the system's
# own sources would only add packages or upgrade them within the system's
# release: never libc or anything else from another release. Prints why not.
safe_install() {
	local sim sysver bad
	sysver=$(. /etc/os-release 2>/dev/null && echo "${VERSION_ID%%.*}")
	if ! sim=$(env -u APT_CONFIG apt-get install -s -q --no-install-recommends "$@" 2>&1 </dev/null); then
		grep -m1 '^E:' <<<"$sim" || echo "apt-get install -s $* failed"
		return 1
	fi
	# "Inst libc6 [2.36-9] (2.41-12 Debian:13.2/stable [amd64])": a package
	# (new, or upgraded from the version in brackets) from the release whose
	# number follows the colon; ours is VERSION_ID.
	bad=$(awk -v sys="$sysver" '
		$1 == "Remv" { print $2 " removed"; next }
		$1 == "Inst" {
			rel = $0; sub(/^[^(]*\([^ ]* /, "", rel); sub(/(,| \[).*/, "", rel)
			n = rel; sub(/^.*:/, "", n); sub(/[^0-9].*/, "", n)
			if (sys == "" || n != sys) print $2 " from " rel
		}' <<<"$sim" | head -n3 | paste -sd, -)
	if [[ -n $bad ]]; then
		echo "installing $* would change the system: $bad"
		return 1
	fi
}
