#!/usr/bin/env bash
# Build the torch Debian package with dpkg-deb, from a checkout (a fresh clone is enough).
#
#   packaging/deb/build.sh [OUTDIR]        OUTDIR defaults to dist/ in the checkout
#
# Prints the path of the .deb on stdout; progress and tool output go to stderr.
#
# Needs: Debian's python3 (3.11 or newer, with python3-venv), dpkg-deb, and access to the package
# registry: torch and its dependencies are installed into a private virtual environment, /opt/torch,
# while building. The environment is built in a staging tree and its build paths are rewritten to
# /opt/torch (script shebangs, pyvenv.cfg, activate scripts); byte-code is compiled with its final
# path. No root needed (dpkg-deb --root-owner-group makes every file root's).
#
# Environment: PYTHON (default /usr/bin/python3; must be Debian's interpreter, which the package
# depends on), DEB_REVISION (default 1), TMPDIR, TORCH_WHEELHOUSE (a directory of wheels to install
# from instead of the registry: offline builds; `python3 dev.py setup` fills .venv/wheelhouse).
set -euo pipefail
umask 022

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
outdir=${1:-$root/dist}
python=${PYTHON:-/usr/bin/python3}
revision=${DEB_REVISION:-1}
pkg=torch
prefix=/opt/torch

case "$python" in
	/usr/bin/python3*) ;;
	*) die "PYTHON must be Debian's interpreter (/usr/bin/python3...), not $python: the package's virtual environment links to it" ;;
esac
for tool in dpkg-deb dpkg "$python"; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found (install it, e.g. apt-get install dpkg-dev python3 python3-venv)"
done
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "torch needs Python 3.11 or newer; $python is older"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pynext=$("$python" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
version=$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
	"$root/pyproject.toml")
arch=$(dpkg --print-architecture)
debversion="$version-$revision"

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/torch-deb.XXXXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/stage
venv=$stage$prefix
# Nothing we run while building may leave byte-code with build paths in it; compileall does it below.
export PYTHONDONTWRITEBYTECODE=1

# --- torch and its dependencies in /opt/torch ------------------------------------------------------
# Build from a copy holding only what the wheel needs: never the checkout's .venv, and no build/ or
# egg-info left behind in the checkout.
mkdir -p "$work/src"
cp "$root/pyproject.toml" "$root/README.md" "$work/src/"
tar -C "$root" --exclude=__pycache__ -cf - gotorch | tar -C "$work/src" -xf -

log "creating the virtual environment with $python ($pyver)"
"$python" -m venv "$venv" >&2 || die "$python -m venv failed (on Debian: apt-get install python3-venv)"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input --quiet)
if [ -n "${TORCH_WHEELHOUSE:-}" ]; then
	[ -d "$TORCH_WHEELHOUSE" ] || die "TORCH_WHEELHOUSE=$TORCH_WHEELHOUSE is not a directory"
	# Environment rather than flags: pip's isolated build of the torch wheel must see them too.
	export PIP_NO_INDEX=1 PIP_FIND_LINKS="$TORCH_WHEELHOUSE"
	log "installing from the wheelhouse $TORCH_WHEELHOUSE (no registry)"
fi
log "building the torch $version wheel"
"${pip[@]}" wheel --no-deps --wheel-dir "$work/wheel" "$work/src" >&2
log "installing torch and its dependencies from the package registry"
"${pip[@]}" install --no-compile "$work/wheel"/gotorch-*.whl >&2
# pip and setuptools were needed only to build; the installed tree belongs to dpkg.
"${pip[@]}" uninstall --yes pip setuptools >&2
# A wheel installed from a file records that file's (temporary) URL; nothing needs it.
for f in "$venv"/lib/python*/site-packages/gotorch-*.dist-info/direct_url.json; do
	[ -e "$f" ] || continue
	rm -f "$f"
	sed -i '/\/direct_url\.json,/d' "$(dirname "$f")/RECORD"
done

# --- shell completion (click generates it; the scripts call `torch` at completion time) -----------
log "generating bash and zsh completion"
install -d "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions"
_TORCH_COMPLETE=bash_source "$venv/bin/python" -m gotorch >"$stage/usr/share/bash-completion/completions/torch"
_TORCH_COMPLETE=zsh_source "$venv/bin/python" -m gotorch >"$stage/usr/share/zsh/vendor-completions/_torch"
grep -q '_TORCH_COMPLETE' "$stage/usr/share/bash-completion/completions/torch" || die "bash completion is empty"
grep -q '^#compdef torch' "$stage/usr/share/zsh/vendor-completions/_torch" || die "zsh completion is empty"

# --- relocate the environment from the staging tree to /opt/torch ------------------------------------
log "relocating the environment to $prefix"
grep -rlIZF -- "$venv" "$venv" | xargs -0 -r sed -i "s|$venv|$prefix|g"
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
# Byte-code with its final path (tracebacks name /opt/torch/...), validated by source hash rather
# than mtime, so it stays valid whatever happens to timestamps.
PYTHONDONTWRITEBYTECODE='' "$venv/bin/python" -m compileall -q -f -j 0 --invalidation-mode checked-hash \
	-s "$stage" -p / "$venv/lib" >&2 || die "compiling the byte-code failed"
if leftovers=$(grep -rlaF -- "$work" "$stage"); then
	die "build paths left in the package: $leftovers"
fi

# --- everything else -----------------------------------------------------------------------------
log "assembling the package tree"
install -d "$stage/usr/bin"
ln -s "$prefix/bin/torch" "$stage/usr/bin/torch"
install -D -m 0644 "$root/packaging/systemd/torch.service" "$stage/lib/systemd/system/torch.service"
install -D -m 0644 "$root/packaging/systemd/torch-forking.service" "$stage/lib/systemd/system/torch-forking.service"
install -D -m 0644 "$root/packaging/logrotate/torch" "$stage/etc/logrotate.d/torch"
install -D -m 0644 "$here/tasks.yaml" "$stage/etc/torch/tasks.yaml"
install -D -m 0644 "$here/copyright" "$stage/usr/share/doc/$pkg/copyright"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/$pkg/README.md"
for hook in "$root"/packaging/hooks/*.sh; do
	install -D -m 0755 "$hook" "$stage/usr/share/torch/hooks/$(basename "$hook")"
done

install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
	install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
printf '%s\n' /etc/torch/tasks.yaml /etc/logrotate.d/torch >"$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum) \
	| sed 's|  \./|  |' >"$stage/DEBIAN/md5sums"
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: $pkg
Version: $debversion
Architecture: $arch
Maintainer: torch maintainers <torch@example.invalid>
Installed-Size: $installed_size
Depends: python3 (>= $pyver), python3 (<< $pynext)
Recommends: logrotate
Suggests: git
Section: admin
Priority: optional
Description: seconds-resolution cron daemon driven by one version-controlled task file
 torch runs the tasks of one YAML task file on a six-field, seconds-first cron schedule. Every host
 of a fleet can run the same file: each task's \`ips\` allow-list decides which hosts run it. The
 daemon validates every change, reloads it by itself when the file changes, and keeps the old
 configuration when a new one is invalid.
 .
 This package holds torch and its Python dependencies in a private virtual environment under
 /opt/torch, the systemd units torch.service (Type=notify) and torch-forking.service, a logrotate
 configuration, bash and zsh completion, and a harmless sample /etc/torch/tasks.yaml.
EOF

deb="$outdir/${pkg}_${debversion}_${arch}.deb"
log "building $deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >&2
echo "$deb"
