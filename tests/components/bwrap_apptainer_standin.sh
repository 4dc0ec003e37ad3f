#!/bin/bash
# STAND-IN for apptainer/singularity (they cannot be installed here), built on
# bubblewrap. It honours the command line glidewms uses:
#   apptainer --version
#   apptainer exec [--contain] [--cleanenv] [--ipc] [--pid] [--no-home] [--nv]
#                  [--bind SRC[:DST[:ro|rw]][,...]]... [--pwd DIR] IMAGE CMD [ARGS...]
#   apptainer run [the same options] IMAGE [ARGS...]   (the image's runscript,
#                  /.singularity.d/runscript, as Apptainer runs a sandbox image)
# IMAGE is a directory (a sandbox image); "/" is the host. With --cleanenv only
# APPTAINERENV_X / SINGULARITYENV_X reach the command, as X. Every call is
# appended to $APPTAINER_STANDIN_LOG when set, so tests can see it was used.
set -u
name=$(basename "$0")
[ "${1:-}" = --version ] && { echo "$name version 1.3.0-standin"; exit 0; }
verb=${1:-}
[ "$verb" = exec ] || [ "$verb" = run ] || { echo "$name stand-in: only 'exec', 'run' and '--version'" >&2; exit 255; }
shift
[ -n "${APPTAINER_STANDIN_LOG:-}" ] && echo "$name $verb $*" >> "$APPTAINER_STANDIN_LOG"
binds=() pwd_dir=/ cleanenv=0
while [ $# -gt 0 ]; do
  case "$1" in
    --contain|--ipc|--pid|--no-home|--nv) shift ;;
    --cleanenv) cleanenv=1; shift ;;
    --bind|-B) IFS=, read -ra specs <<< "$2"
      for spec in "${specs[@]}"; do
        IFS=: read -r src dst mode <<< "$spec"
        dst=${dst:-$src}
        if [ "${mode:-rw}" = ro ]; then binds+=(--ro-bind "$src" "$dst"); else binds+=(--bind "$src" "$dst"); fi
      done
      shift 2 ;;
    --pwd) pwd_dir=$2; shift 2 ;;
    -*) echo "$name stand-in: unknown option $1" >&2; exit 255 ;;
    *) break ;;
  esac
done
if [ "$verb" = run ]; then
  [ $# -ge 1 ] || { echo "$name stand-in: need IMAGE" >&2; exit 255; }
  image=$1; shift
  [ -x "$image/.singularity.d/runscript" ] || { echo "FATAL: no runscript in $image" >&2; exit 255; }
  set -- /.singularity.d/runscript "$@"
else
  [ $# -ge 2 ] || { echo "$name stand-in: need IMAGE and a command" >&2; exit 255; }
  image=$1; shift
fi
[ -d "$image" ] || { echo "FATAL: could not open image $image: not a sandbox directory" >&2; exit 255; }
if [ "$image" = / ]; then
  root=(--ro-bind /usr /usr --ro-bind /etc /etc --symlink usr/bin /bin --symlink usr/lib /lib
        --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin)
else
  root=(--ro-bind "$image" /)
fi
bwrap=$(command -v bwrap) || { echo "$name stand-in: needs bwrap" >&2; exit 255; }
if [ $cleanenv = 1 ]; then
  keep=()
  for var in $(compgen -e); do
    case "$var" in
      APPTAINERENV_*) keep+=("${var#APPTAINERENV_}=${!var}") ;;
      SINGULARITYENV_*) keep+=("${var#SINGULARITYENV_}=${!var}") ;;
    esac
  done
  for var in $(compgen -e); do unset "$var" 2>/dev/null; done
  export PATH=/usr/local/bin:/usr/bin:/bin
  for kv in ${keep[@]+"${keep[@]}"}; do export "${kv%%=*}=${kv#*=}"; done
fi
exec "$bwrap" "${root[@]}" --proc /proc --dev /dev --tmpfs /tmp ${binds[@]+"${binds[@]}"} \
  --chdir "$pwd_dir" --unshare-all --share-net --die-with-parent -- "$@"
