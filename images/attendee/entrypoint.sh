#!/bin/bash
# Attendee container entrypoint (runs under tini, as an arbitrary uid, with
# no capabilities). Steps:
#   1. give the uid a passwd/group entry via nss_wrapper if it has none;
#   2. make sure $HOME exists;
#   3. size BLAS/OpenMP thread pools to the container's CPU limit;
#   4. seed a writable Theano compile cache from the image's pre-warmed one;
#   5. exec the command.
set -euo pipefail

log() { echo "workshop-entrypoint: $*" >&2; }

uid=$(id -u)
gid=$(id -g)

# --- 1. passwd entry ---------------------------------------------------------
if ! getent passwd "$uid" >/dev/null 2>&1; then
    name=${NB_USER:-user$uid}
    # keep it a valid login name; anything odd becomes user<uid>
    if ! [[ $name =~ ^[a-z_][a-z0-9_.-]{0,31}$ ]]; then name="user$uid"; fi
    home=${HOME:-/home/$name}
    nss_lib=""
    for f in /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so /usr/lib64/libnss_wrapper.so; do
        if [ -e "$f" ]; then nss_lib=$f; break; fi
    done
    if [ -n "$nss_lib" ]; then
        nss_dir=$(mktemp -d "${TMPDIR:-/tmp}/nss_wrapper.XXXXXX")
        # drop any existing entry with the same name (e.g. NB_USER=jovyan)
        awk -F: -v n="$name" '$1 != n' /etc/passwd >"$nss_dir/passwd"
        printf '%s:x:%s:%s:%s:%s:/bin/bash\n' "$name" "$uid" "$gid" "$name" "$home" >>"$nss_dir/passwd"
        cp /etc/group "$nss_dir/group"
        if ! getent group "$gid" >/dev/null 2>&1; then
            if getent group "$name" >/dev/null 2>&1; then gname="$name-$gid"; else gname=$name; fi
            printf '%s:x:%s:\n' "$gname" "$gid" >>"$nss_dir/group"
        fi
        chmod 0755 "$nss_dir"; chmod 0644 "$nss_dir/passwd" "$nss_dir/group"
        export NSS_WRAPPER_PASSWD="$nss_dir/passwd" NSS_WRAPPER_GROUP="$nss_dir/group"
        export LD_PRELOAD="$nss_lib${LD_PRELOAD:+ $LD_PRELOAD}"
    else
        log "uid $uid has no passwd entry and libnss_wrapper is missing"
    fi
    export USER="$name" LOGNAME="$name"
fi

# --- 2. home -----------------------------------------------------------------
if [ -n "${HOME:-}" ] && [ ! -d "$HOME" ]; then
    mkdir -p "$HOME" 2>/dev/null || log "cannot create HOME=$HOME"
fi

# --- 3. thread pools -----------------------------------------------------------
cpu_limit() {
    local quota period line
    if [ -r /sys/fs/cgroup/cpu.max ]; then                       # cgroup v2
        read -r quota period </sys/fs/cgroup/cpu.max || true
    elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then        # cgroup v1
        quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
        period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
    elif [ -r /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us ]; then
        quota=$(cat /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us)
        period=$(cat /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us)
    fi
    local n ncpu
    ncpu=$(nproc 2>/dev/null || echo 1)
    if [[ ${quota:-} =~ ^[0-9]+$ ]] && [[ ${period:-} =~ ^[0-9]+$ ]] && [ "$quota" -gt 0 ] && [ "$period" -gt 0 ]; then
        n=$(( (quota + period - 1) / period ))
        [ "$n" -lt 1 ] && n=1
        [ "$n" -gt "$ncpu" ] && n=$ncpu
    else
        n=$ncpu
    fi
    echo "$n"
}
threads=$(cpu_limit)
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$threads}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$threads}"

# --- 4. Theano compile cache ---------------------------------------------------
# theanorc fixes the compiledir name; base_compiledir defaults to ~/.theano.
# Copy the image's seed there once per image version (stamp file), merging
# without overwriting anything the user compiled. Plain cp: fresh atimes, so
# Theano's age check does not discard the seeded modules.
seed=${WORKSHOP_THEANO_SEED:-/opt/theano-cache}
if [ -d "$seed" ] && [ "${WORKSHOP_THEANO_SEED_COPY:-1}" != 0 ]; then
    if [ -n "${HOME:-}" ] && [ -w "$HOME" ]; then
        base="$HOME/.theano"
    else
        base="${TMPDIR:-/tmp}/theano-$uid"
        export THEANO_FLAGS="base_compiledir=$base${THEANO_FLAGS:+,$THEANO_FLAGS}"
    fi
    stamp="$base/.workshop-seed"
    want=$(cat "$seed/.seed-id" 2>/dev/null || echo none)
    have=$(cat "$stamp" 2>/dev/null || echo "")
    if [ "$want" != "$have" ]; then
        if mkdir -p "$base" 2>/dev/null && cp -R --no-preserve=all -n "$seed/." "$base/" 2>/dev/null; then
            rm -f "$base/.seed-id"
            echo "$want" >"$stamp"
        else
            log "could not seed Theano cache into $base (continuing cold)"
        fi
    fi
fi

exec "$@"
