#!/bin/sh
# Prints the Debian mirror this machine's apt already uses (never a hard-coded host):
# the first `URIs:` of /etc/apt/sources.list.d/*.sources, else the first `deb` line of
# /etc/apt/sources.list (security mirrors skipped). Exit 1 when there is none.
# Used by check-portable.sh and bake/mmdebstrap.sh.
set -eu
for file in /etc/apt/sources.list.d/*.sources; do
	[ -r "$file" ] || continue
	url=$(awk 'tolower($1) == "uris:" && $2 !~ /security/ { print $2; exit }' "$file")
	if [ -n "$url" ]; then
		echo "$url"
		exit 0
	fi
done
if [ -r /etc/apt/sources.list ]; then
	url=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) { print $i; exit } break } }' /etc/apt/sources.list)
	if [ -n "$url" ]; then
		echo "$url"
		exit 0
	fi
fi
echo "mirror.sh: no Debian mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list" >&2
exit 1
