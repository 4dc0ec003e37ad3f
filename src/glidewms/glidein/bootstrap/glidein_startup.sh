#!/bin/bash
# glidein_startup.sh: the pilot bootstrap (see docs/protocol.md, "Pilot start").
# Fetch the stage manifest, refuse it unless its sha256 is the one the factory
# submitted, fetch and check every listed file, write glidein_config, run the
# agent. With --manifest-key (the factory's Ed25519 stage key, base64 DER) the
# manifest's signature is verified too, with `openssl pkeyutl -verify -rawin`
# (OpenSSL >= 3.0; without openssl only the sha256 is checked, and said so).
# The pilot token is read from $GLIDEIN_TOKEN_FILE and only ever handed
# to curl in a 0600 header file (-H @file) or read by python itself: never argv.
# https services are verified against the CA bundle of --ca-cert (base64 of the
# PEM text, from the factory) or --ca-file, else the node's system store; the
# bundle is kept as $work/ca.pem and named to the agent (GLIDEIN_CA_File).
set -u
EXIT_USAGE=2 EXIT_ERROR=1 EXIT_CORRUPT=3 EXIT_INVALID=4

log() { printf '%(%Y-%m-%dT%H:%M:%SZ)T glidein_startup: %s\n' -1 "$*" >&2; }
usage() {
  echo "glidein_startup: $*" >&2
  echo "usage: glidein_startup.sh --factory URL --manifest-sha256 HEX --pool URL --glidein-id ID" \
       "--entry NAME --site NAME [--idle-timeout S] [--lifetime S] [--cpus N|auto]" \
       "[--memory MB|auto] [--work-dir DIR|auto|TMPDIR] [--min-disk MB] [--heartbeat S]" \
       "[--manifest-key B64] [--attr NAME=VALUE ...] [--set KEY=VALUE ...]" \
       "[--vo-stage URL --vo-manifest-sha256 HEX [--vo-manifest-key B64]] [--multi N]" \
       "[--multi-launch auto|srun|local] [--ca-cert B64 | --ca-file PEM]" \
       "[--outage-tolerance S] [--also-pool URL ... [--pool-shares N,N,...]]" >&2
  echo "   or: glidein_startup.sh --no-factory --pool URL (--stage-dir DIR | --stage-url URL" \
       "--manifest-sha256 HEX) [--site NAME] [--entry NAME] [--glidein-id ID] [...]" >&2
  exit $EXIT_USAGE
}

factory='' manifest_sha='' pool='' gid='' entry='' site='' idle=1200 lifetime=86400
cpus=auto memory=auto parent=auto heartbeat='' attrs=() settings=() manifest_key='' min_disk=50
no_factory='' stage_base='' vo_stage='' vo_sha='' vo_key='' multi=1 multi_launch=auto
ca_b64='' ca_src='' outage=900 also_pools=() pool_shares=''
reserved=" GLIDEIN_Factory_URL GLIDEIN_Pool_URL GLIDEIN_Id GLIDEIN_Entry_Name GLIDEIN_Site \
GLIDEIN_Idle_Timeout GLIDEIN_Lifetime GLIDEIN_Cpus GLIDEIN_Memory GLIDEIN_Heartbeat GLIDEIN_Work_Dir \
GLIDEIN_Token_File GLIDEIN_Attrs GLIDEIN_Manifest_Signature GLIDEIN_VO_Scripts \
GLIDEIN_VO_Manifest_Signature GLIDEIN_Multi_Count GLIDEIN_Multi_Index GLIDEIN_Manual \
GLIDEIN_Multi_Local_Count GLIDEIN_Multi_Local_Index GLIDEIN_Multi_Launcher GLIDEIN_CA_File \
GLIDEIN_Outage_Tolerance GLIDEIN_Also_Pools GLIDEIN_Pool_Shares "
while [ $# -gt 0 ]; do
  if [ "$1" = --no-factory ]; then no_factory=1; shift; continue; fi
  [ $# -ge 2 ] || usage "$1 needs a value"
  case "$1" in
    --factory) factory=${2%/} ;;         --manifest-sha256) manifest_sha=$2 ;;
    --pool) pool=${2%/} ;;               --glidein-id) gid=$2 ;;
    --entry) entry=$2 ;;                 --site) site=$2 ;;
    --idle-timeout) idle=$2 ;;           --lifetime) lifetime=$2 ;;
    --cpus) cpus=$2 ;;                   --memory) memory=$2 ;;
    --work-dir) parent=$2 ;;             --heartbeat) heartbeat=$2 ;;
    --manifest-key) manifest_key=$2 ;;   --min-disk) min_disk=$2 ;;
    --stage-dir) stage_base=$(cd "$2" 2>/dev/null && pwd) || usage "--stage-dir $2: no such directory" ;;
    --stage-url) stage_base=${2%/} ;;    --vo-stage) vo_stage=${2%/} ;;
    --vo-manifest-sha256) vo_sha=$2 ;;   --vo-manifest-key) vo_key=$2 ;;
    --multi) multi=$2 ;;                 --multi-launch) multi_launch=$2 ;;
    --ca-cert) ca_b64=$2 ;;              --ca-file) ca_src=$2 ;;
    --outage-tolerance) outage=$2 ;;
    --also-pool) also_pools+=("${2%/}") ;; --pool-shares) pool_shares=$2 ;;
    --set) [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*=[^$'\n']*$ ]] || usage "bad --set '$2'"
           [[ $reserved == *" ${2%%=*} "* ]] && usage "--set cannot set ${2%%=*}"
           settings+=("$2") ;;
    --attr) [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage "bad --attr '$2'"
            [[ $reserved == *" ${2%%=*} "* ]] && usage "--attr cannot set ${2%%=*}"
            attrs+=("$2") ;;
    *) usage "unknown option $1" ;;
  esac
  shift 2
done
if [ -n "$no_factory" ]; then  # manual start by a site admin: no factory to fetch from or report to
  [ -z "$factory" ] || usage "--no-factory and --factory exclude each other"
  [ -n "$stage_base" ] || usage "--no-factory needs --stage-dir DIR or --stage-url URL"
  [[ $stage_base == /* || -n $manifest_sha ]] || usage "--stage-url needs --manifest-sha256"
  host=$(hostname 2>/dev/null || echo node); host=${host%%.*}
  : "${gid:=manual-$host-$$}" "${entry:=manual}" "${site:=$host}"
  required="pool:pool"
else
  stage_base=${stage_base:-$factory/api/v1/stage}
  required="factory:factory manifest_sha:manifest-sha256 pool:pool gid:glidein-id entry:entry site:site"
fi
for req in $required; do
  var=${req%%:*}; [ -n "${!var}" ] || usage "--${req#*:} is required"
done

# Values that reach glidein_config, a URL or a command line: checked here too, behind
# the factory's own checks (defence in depth). A control character (C0, DEL; in UTF-8
# the C1 range and U+2028/U+2029, which Python's splitlines also ends lines at) would
# add glidein_config lines of its own: a newline in --pool once turned off black-hole
# protection. URLs: http(s)://host[:port][/path], no blank. The glidein id is part of
# report URLs: a word. Refused with exit code 4 (validation failure), reported to the
# factory when its URL, the work dir, the token file and the id are themselves sound.
has_control() {
  local LC_ALL=C
  [[ $1 == *[$'\001'-$'\037'$'\177']* || $1 == *$'\302'[$'\200'-$'\237']* \
     || $1 == *$'\342\200'[$'\250'$'\251']* ]]
}
is_http_url() {
  local LC_ALL=C
  [[ $1 =~ ^https?://[^/[:space:]]+(/[^[:space:]]*)?$ ]] && ! has_control "$1"
}
invalid_value() {  # prints "OPTION: why" for the first unusable value, else nothing
  local pair var value a
  for pair in factory:--factory pool:--pool vo_stage:--vo-stage; do
    var=${pair%%:*}; value=${!var}
    [ -z "$value" ] || is_http_url "$value" \
      || { printf '%s: not an http(s) URL on one line: %q' "${pair#*:}" "$value"; return; }
  done
  [[ -z $stage_base || $stage_base == /* ]] || is_http_url "$stage_base" \
    || { printf -- '--stage-url: not an http(s) URL on one line: %q' "$stage_base"; return; }
  [[ -z $gid || $gid =~ ^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,254}$ ]] \
    || { printf -- '--glidein-id: expected a word (letters, digits, _.@+-): %q' "$gid"; return; }
  for pair in entry:--entry site:--site parent:--work-dir stage_base:--stage-dir \
      token_file:GLIDEIN_TOKEN_FILE PY:GLIDEIN_PYTHON; do
    var=${pair%%:*}
    ! has_control "${!var}" \
      || { printf '%s: control character in %q' "${pair#*:}" "${!var}"; return; }
  done
  for a in ${attrs[@]+"${attrs[@]}"} ${settings[@]+"${settings[@]}"}; do
    ! has_control "$a" || { printf -- '--attr/--set: control character in %q' "$a"; return; }
  done
  for a in ${also_pools[@]+"${also_pools[@]}"}; do
    is_http_url "$a" || { printf -- '--also-pool: not an http(s) URL on one line: %q' "$a"; return; }
  done
}
for sum in "$manifest_sha" "$vo_sha"; do
  [ -z "$sum" ] || [[ $sum =~ ^[0-9a-fA-F]{64}$ ]] || usage "--manifest-sha256 and --vo-manifest-sha256 must be 64 hex digits"
done
for key in "$manifest_key" "$vo_key"; do
  [ -z "$key" ] || [[ $key =~ ^[A-Za-z0-9+/]{40,200}={0,2}$ ]] \
    || usage "--manifest-key and --vo-manifest-key must be a base64 public key"
done
[ -z "$vo_stage" ] || [ -n "$vo_sha" ] || usage "--vo-stage needs --vo-manifest-sha256"
[ -n "$vo_stage" ] || [ -z "$vo_sha$vo_key" ] || usage "--vo-manifest-sha256/-key need --vo-stage"
[[ $multi =~ ^[1-9][0-9]{0,2}$ ]] || usage "--multi takes a number of pilots (1-999)"
[ -z "$ca_b64" ] || [ -z "$ca_src" ] || usage "--ca-cert and --ca-file exclude each other"
[ -z "$ca_b64" ] || [[ ${#ca_b64} -le 262144 && $ca_b64 =~ ^[A-Za-z0-9+/]+={0,2}$ ]] \
  || usage "--ca-cert takes the base64 of a PEM bundle"
[ -z "$ca_src" ] || [ -r "$ca_src" ] || usage "--ca-file $ca_src: not a readable file"
[[ $multi_launch =~ ^(auto|srun|local)$ ]] || usage "--multi-launch: auto, srun or local"
# a pilot serving several pools (agent/pools.py): at most 8 in all, one share each
[ "${#also_pools[@]}" -le 7 ] || usage "--also-pool: at most 7 (8 pools in all)"
commas=${pool_shares//[^,]/}  # bash only: the pilot's PATH may lack tr and wc
[ -z "$pool_shares" ] || [[ $pool_shares =~ ^[1-9][0-9]{0,2}(,[1-9][0-9]{0,2}){0,7}$ \
  && ${#commas} -eq ${#also_pools[@]} ]] \
  || usage "--pool-shares: one integer 1-999 per pool (--pool, then each --also-pool), commas"
[[ $idle$lifetime$heartbeat$min_disk =~ ^[0-9]+$ && $outage =~ ^[0-9]{1,6}$ ]] \
  || usage "--idle-timeout, --lifetime, --heartbeat, --outage-tolerance take a number of seconds, --min-disk of MB"
[[ $cpus =~ ^([0-9]+|auto)$ && $memory =~ ^([0-9]+|auto)$ ]] || usage "--cpus/--memory: N or auto"
[ -r "${GLIDEIN_TOKEN_FILE:-}" ] || usage "GLIDEIN_TOKEN_FILE must name a readable token file"
token_file=$GLIDEIN_TOKEN_FILE; [[ $token_file == /* ]] || token_file=$PWD/$token_file
PY=${GLIDEIN_PYTHON:-python3}
CURL=$(command -v curl || true)
invalid=$(invalid_value)
if [ -n "$invalid" ]; then  # reported below if it can be, once the header file exists
  if ! is_http_url "$factory" || ! [[ $gid =~ ^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,254}$ ]] \
       || has_control "$parent$token_file"; then
    log "validation_failed: $invalid"; exit $EXIT_INVALID
  fi
fi

# Work dir policy: auto = the batch system's scratch (HTCondor's, then $TMPDIR), else /tmp.
case "$parent" in
  auto) parent=${_CONDOR_SCRATCH_DIR:-${TMPDIR:-/tmp}} ;;
  TMPDIR) parent=${TMPDIR:-/tmp} ;;
esac
work=$(mktemp -d "$parent/glidein_XXXXXX") || { log "cannot create a work dir in $parent"; exit $EXIT_ERROR; }
agent_pids=()
unmount_under() {  # FUSE mounts the pilot made under $1 (CVMFS), deepest first
  local _d point _r
  while read -r _d point _r; do
    point=$(printf '%b' "${point//\\/\\0}")   # the table escapes blanks in octal
    case "$point" in
      "$1"/*) fusermount3 -u "$point" 2>/dev/null || fusermount -u "$point" 2>/dev/null \
                || umount "$point" 2>/dev/null || umount -l "$point" 2>/dev/null \
                || log "could not unmount $point" ;;
    esac
  done < <(tac /proc/self/mounts 2>/dev/null)
}
wait_agents() {  # wait for every agent; the first non-zero exit code is the pilot's
  local p r rc=0
  for p in ${agent_pids[@]+"${agent_pids[@]}"}; do
    wait "$p"; r=$?; [ $rc -ne 0 ] || rc=$r
  done
  return $rc
}
cleanup() { unmount_under "$work"; rm -rf --one-file-system -- "$work"; }
srun_pid=''
on_signal() {  # forward to the agent and let it drain and report; EXIT cleans up
  log "got SIG$1"
  if [ -n "$srun_pid" ]; then
    # Not a signal to srun: it turns SIGTERM/SIGHUP into a SIGKILL of every task, and
    # passes other signals to every process of the step, jobs included (srun(1)). A
    # "drain" line on srun's stdin reaches each task, which sends its pilot SIGTERM.
    (trap '' PIPE; printf 'drain\n' >&7) 2>/dev/null; wait_agents; exit $?
  elif [ ${#agent_pids[@]} -gt 0 ]; then
    kill -"$1" "${agent_pids[@]}" 2>/dev/null; wait_agents; exit $?
  fi
  exit "$2"
}
trap cleanup EXIT
trap 'on_signal TERM 143' TERM
trap 'on_signal INT 130' INT
meta=$work/.bootstrap hdr=$work/.bootstrap/auth_header
mkdir -p "$meta"
(umask 077; IFS= read -r token < "$token_file"; printf 'Authorization: Bearer %s\n' "$token" > "$hdr")
ca='' ca_opt=()
if [ -n "$ca_b64$ca_src" ]; then
  ca=$work/ca.pem ca_opt=(--cacert "$ca")
  if [ -z "$ca_b64" ]; then cp "$ca_src" "$ca"
  elif command -v base64 >/dev/null 2>&1; then printf '%s' "$ca_b64" | base64 -d > "$ca" 2>/dev/null
  else printf '%s' "$ca_b64" | "$PY" -c 'import base64, sys
sys.stdout.buffer.write(base64.b64decode(sys.stdin.read()))' > "$ca" 2>/dev/null; fi
  [[ $(< "$ca") == *"-----BEGIN CERTIFICATE-----"* ]] 2>/dev/null \
    || { log "--ca-cert/--ca-file: no PEM certificate in the CA bundle"; exit $EXIT_USAGE; }
fi

# Outages. A transfer that gets no answer, or 429/5xx, is tried again with capped
# exponential back-off and jitter (a server's Retry-After is honoured, within limits)
# until --outage-tolerance seconds have passed since its first try; any other answer
# is final at once. A factory restarting or a site's network blip then costs a pilot
# time, not its life. retry_after is set by each try (empty: the server named none).
retry_cap=60 retry_after=''
backoff_wait() {  # backoff_wait TRY: seconds to wait before the next try
  local d=$(( 1 << ($1 < 6 ? $1 : 6) ))
  (( d > retry_cap )) && d=$retry_cap
  d=$(( d / 2 + RANDOM % (d / 2 + 1) ))
  if [[ $retry_after =~ ^[0-9]{1,6}$ ]] && (( retry_after > d )); then
    d=$(( retry_after < 5 * retry_cap ? retry_after : 5 * retry_cap ))
  fi
  echo "$d"
}
retryable() { [[ $1 == 000 || $1 == 429 || $1 == 5?? ]]; }
# curl's exit codes for a network that may come back (resolve, connect, timeout, TLS
# handshake, a broken transfer); anything else, a certificate that does not verify
# above all, is final: waiting would not change it.
transient_curl() { case $1 in 5|6|7|16|18|28|35|52|55|56|92) return 0 ;; *) return 1 ;; esac; }
ecode_w=7  # each transfer's exit code in fetch_all: %{exitcode} from curl 7.75 on, else "7"
[ -n "$CURL" ] && [ "$("$CURL" -s -o /dev/null -w '%{exitcode}' file:///dev/null 2>/dev/null)" = 0 ] \
  && ecode_w='%{exitcode}'
# again WHAT TRY START STATUS: wait before the next try, or say why not (status 1)
again() {
  local wait; wait=$(backoff_wait "$2")
  if (( SECONDS - $3 + wait > outage )); then
    log "$1: giving up after $2 tries in $((SECONDS - $3)) s (last: ${4/#000/no answer})"
    return 1
  fi
  log "$1: ${4/#000/no answer}; try $(($2 + 1)) in ${wait}s"
  sleep "$wait"
}

# http METHOD URL OUT [JSON]: curl if present, else python urllib; retried as above.
http() {
  if [ -z "$CURL" ]; then python_get "$@"; return; fi
  local start=$SECONDS try=0 status rc heads=$meta/headers
  while :; do
    try=$((try + 1))
    status=$(curl -sS --connect-timeout 20 --max-time 600 -X "$1" ${ca_opt[@]+"${ca_opt[@]}"} \
      -H @"$hdr" ${4:+-H 'Content-Type: application/json' --data-binary "$4"} \
      -D "$heads" -o "$3" -w '%{http_code}' "$2"); rc=$?
    [[ $status =~ ^[0-9]{3}$ ]] || status=000
    # a 2xx cut short (the server died mid-answer: curl 18, 56...) is no answer, not a file
    [[ $status == 2?? ]] && [ "$rc" != 0 ] && status=000
    if [ "$status" = 000 ] && ! transient_curl "$rc"; then log "$1 $2: curl error $rc"; return 1; fi
    [[ $status == 2?? ]] && return 0
    retryable "$status" || { log "$1 $2: HTTP $status"; return 1; }
    retry_after=$(sed -n 's/^[Rr][Ee][Tt][Rr][Yy]-[Aa][Ff][Tt][Ee][Rr]:[[:space:]]*\([0-9]\{1,6\}\)[[:space:]]*$/\1/p' \
      "$heads" 2>/dev/null | tail -n 1)
    again "$1 $2" "$try" "$start" "$( [ "$status" = 000 ] && echo 000 || echo "HTTP $status")" || return 1
  done
}

python_get() {  # the same without curl: one interpreter for one request or for MANY
  GLIDEIN_TOKEN_FILE=$token_file GLIDEIN_CA_FILE=$ca OUTAGE=$outage RETRY_CAP=$retry_cap \
    "$PY" - "$@" <<'EOF'
import http.client, os, random, ssl, sys, time, urllib.error, urllib.request
# METHOD URL OUT [JSON], or MANY URL OUT [URL OUT ...]: GETs in one interpreter
method, args = sys.argv[1], sys.argv[2:]
if method == "MANY":
    method, jobs, data = "GET", list(zip(args[::2], args[1::2])), None
else:
    jobs, data = [(args[0], args[1])], args[2].encode() if len(args) > 2 else None
with open(os.environ["GLIDEIN_TOKEN_FILE"]) as f:
    headers = {"Authorization": "Bearer " + f.readline().strip(), "Content-Type": "application/json"}
context = ssl.create_default_context(cafile=os.environ.get("GLIDEIN_CA_FILE") or None)
outage, cap = int(os.environ["OUTAGE"]), int(os.environ["RETRY_CAP"])
def log(text):
    sys.stderr.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + " glidein_startup: " + text + "\n")
for url, out in jobs:
    start, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        retry_after = None
        try:
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            with urllib.request.urlopen(req, timeout=60, context=context) as resp, open(out, "wb") as f:
                f.write(resp.read())
            break
        except urllib.error.HTTPError as e:
            if e.code != 429 and e.code < 500:
                sys.exit("%s %s: HTTP %d" % (method, url, e.code))
            problem, value = "HTTP %d" % e.code, (e.headers.get("Retry-After") or "").strip()
            retry_after = int(value) if value.isdigit() and len(value) <= 6 else None
        except OSError as e:
            reason = getattr(e, "reason", None) or e
            if isinstance(reason, (ssl.SSLCertVerificationError, ssl.CertificateError)):
                sys.exit("%s %s: %s" % (method, url, reason))  # waiting would not change it
            problem = "no answer (%s)" % reason
        except http.client.HTTPException as e:  # an answer cut short: the server died mid-body
            problem = "no answer (%s)" % type(e).__name__
        delay = min(cap, 2 ** min(attempt, 6))
        delay = random.uniform(delay / 2, delay)
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, 5 * cap)
        if time.monotonic() - start + delay > outage:
            sys.exit("%s %s: giving up after %d tries in %d s (last: %s)"
                     % (method, url, attempt, time.monotonic() - start, problem))
        log("%s %s: %s; try %d in %.0fs" % (method, url, problem, attempt + 1, delay))
        time.sleep(delay)
EOF
}

# Several files: one curl, transfers in parallel (curl >= 7.66) on fresh connections:
# re-using one keep-alive connection for many small files costs a delayed-ACK stall
# (~40 ms) per file with some servers. Without curl: one python for all of them.
# Retried as http() is; a try fetches again only the files that did not arrive.
parallel=()
[ -n "$CURL" ] && "$CURL" -Z --no-progress-meter --version >/dev/null 2>&1 \
  && parallel=(-Z --parallel-max 8 --no-progress-meter -H 'Connection: close')
fetch_all() {  # fetch_all URL OUT [URL OUT ...]
  if [ -z "$CURL" ]; then [ $# -eq 0 ] || python_get MANY "$@"; return; fi
  local start=$SECONDS try=0 todo=("$@") args left i code ecode out worst
  local -A got
  while [ ${#todo[@]} -gt 0 ]; do
    try=$((try + 1)) args=() left=() worst='' got=()
    for ((i = 0; i < ${#todo[@]}; i += 2)); do args+=(-o "${todo[i+1]}" "${todo[i]}"); done
    while read -r code ecode out; do got[$out]="$code $ecode"; done < <(
      curl -sS --connect-timeout 20 --max-time 600 -H @"$hdr" ${ca_opt[@]+"${ca_opt[@]}"} \
        ${parallel[@]+"${parallel[@]}"} \
        -w "%{http_code} $ecode_w %{filename_effective}\n" \
        "${args[@]}")
    for ((i = 0; i < ${#todo[@]}; i += 2)); do
      read -r code ecode <<< "${got[${todo[i+1]}]:-000 7}"
      [[ $code =~ ^[0-9]{3}$ ]] || code=000
      # a 2xx cut short is no answer (as in http()); an old curl reports no per-transfer code
      [[ $code == 2?? ]] && [ "$ecode_w" != 7 ] && [ "$ecode" != 0 ] && code=000
      if [ "$code" = 000 ] && ! transient_curl "$ecode"; then
        log "GET ${todo[i]}: curl error $ecode"; return 1
      fi
      [[ $code == 2?? ]] && continue
      retryable "$code" || { log "GET ${todo[i]}: HTTP $code"; return 1; }
      left+=("${todo[i]}" "${todo[i+1]}"); worst=$code
    done
    todo=(${left[@]+"${left[@]}"})
    [ ${#todo[@]} -eq 0 ] && return 0
    retry_after=''
    again "GET of $(( ${#todo[@]} / 2 )) stage files" "$try" "$start" \
      "$( [ "$worst" = 000 ] && echo 000 || echo "HTTP $worst")" || return 1
  done
}

json_str() {  # a bash string as a JSON string literal
  local s=${1//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/ }
  printf '"%s"' "${s//[[:cntrl:]]/ }"
}
fail() {  # fail REASON CODE DETAIL: trail + report to the factory (best effort), exit
  log "$1: $3"
  local outage=$(( outage < 120 ? outage : 120 ))  # a report is worth a short wait, not a long one
  [ -n "$factory" ] || exit "$2"   # manual start: nobody to report to
  http POST "$factory/api/v1/glideins/$gid/log" /dev/null \
    "{\"records\":[{\"time\":$(printf "%(%s)T" -1),\"invoker\":\"glidein_startup\",\"pid\":$$,\"severity\":\"ERROR\",\"type\":\"startup\",\"content\":$(json_str "$1: $3")}],\"final\":true}" \
    2>/dev/null || true
  http POST "$factory/api/v1/glideins/$gid/report" /dev/null \
    "{\"exit_reason\":\"$1\",\"exit_code\":$2,\"jobs_run\":0,\"jobs_failed\":0,\"detail\":$(json_str "$3")}" \
    || log "final report not delivered"
  exit "$2"
}

[ -z "$invalid" ] || fail validation_failed $EXIT_INVALID "$invalid"
free_kb=$(df -Pk "$work" 2>/dev/null | awk 'NR == 2 { print $4 }')
[ -z "$free_kb" ] || [ "$free_kb" -ge $((min_disk * 1024)) ] \
  || fail validation_failed $EXIT_ERROR "WN_Resource: $((free_kb / 1024)) MB free in $parent, need $min_disk"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null \
  || fail validation_failed $EXIT_ERROR "no python3 >= 3.9 ($PY) on $(hostname 2>/dev/null)"
# get_stage LABEL BASE SHA KEY DEST: the manifest at BASE/manifest must hash to SHA
# (and verify with KEY when given), then every file BASE/files/PATH is fetched into
# DEST/PATH and checked. BASE is a URL, or a local directory (manual start) holding
# manifest, manifest.sig and the files; a local directory without a manifest is
# copied as it is (agent/, validation/: an installed package). Sets $signature.
get_stage() {
  local label=$1 base=$2 sha=$3 key=$4 dest=$5 m=$meta/$1.manifest line path got _ pre=''
  [ "$label" = factory ] || pre="$label stage: "
  local local_dir=''; [[ $base == /* ]] && local_dir=$base
  signature=absent
  if [ -n "$local_dir" ] && [ ! -f "$local_dir/manifest" ]; then
    [ -z "$sha" ] || fail corruption $EXIT_CORRUPT "${pre}$local_dir has no manifest to check"
    for d in agent validation; do
      [ ! -d "$local_dir/$d" ] || cp -R "$local_dir/$d" "$dest/" \
        || fail error $EXIT_ERROR "${pre}cannot copy $local_dir/$d"
    done
    [ -d "$dest/agent" ] || fail error $EXIT_ERROR "${pre}$local_dir has no agent/ directory"
    signature=local; return 0
  fi
  if [ -n "$local_dir" ]; then cp "$local_dir/manifest" "$m" 2>/dev/null
  else http GET "$base/manifest" "$m"; fi || fail error $EXIT_ERROR "${pre}manifest download failed"
  read -r got _ < <(sha256sum "$m")
  if [ -n "$sha" ]; then
    [ "$got" = "${sha,,}" ] || fail corruption $EXIT_CORRUPT "${pre}manifest sha256 $got, expected $sha"
  else
    log "${pre}$local_dir/manifest: no --manifest-sha256, files checked against it only"
  fi
  if [ -n "$key" ]; then
    if [ -n "$local_dir" ]; then cp "$local_dir/manifest.sig" "$m.sig" 2>/dev/null
    else http GET "$base/files/manifest.sig" "$m.sig"; fi \
      || fail error $EXIT_ERROR "${pre}the manifest signature could not be fetched (see the log above)"
    if command -v openssl >/dev/null 2>&1; then
      printf -- '-----BEGIN PUBLIC KEY-----\n%s\n-----END PUBLIC KEY-----\n' "$key" > "$m.pub"
      openssl pkeyutl -verify -pubin -inkey "$m.pub" -rawin -in "$m" -sigfile "$m.sig" \
        >/dev/null 2>&1 \
        || fail corruption $EXIT_CORRUPT "${pre}the manifest signature does not verify with the $label key"
      signature=verified
    else
      log "${pre}no openssl: the manifest signature is not checked (its sha256 is)"; signature=unchecked
    fi
  fi
  local downloads=()
  while IFS= read -r line || [ -n "$line" ]; do
    [ -z "$line" ] && continue
    [[ $line =~ ^[0-9a-fA-F]{64}\ [\ *](.+)$ ]] || fail corruption $EXIT_CORRUPT "${pre}bad manifest line: $line"
    path=${BASH_REMATCH[1]}
    [[ $path != /* && /$path/ != */../* ]] || fail corruption $EXIT_CORRUPT "${pre}unsafe path in manifest: $path"
    [[ $path == */* ]] && mkdir -p "$dest/${path%/*}"
    if [ -n "$local_dir" ]; then
      cp "$local_dir/$path" "$dest/$path" || fail corruption $EXIT_CORRUPT "${pre}$local_dir/$path missing"
    else
      downloads+=("$base/files/$path" "$dest/$path")
    fi
  done < "$m"
  [ ${#downloads[@]} -eq 0 ] || fetch_all "${downloads[@]}" \
    || fail error $EXIT_ERROR "${pre}download of the stage files failed"
  bad=$(cd "$dest" && sha256sum -c --quiet --strict "$m" 2>&1) \
    || fail corruption $EXIT_CORRUPT "${pre}stage file check failed: $bad"
}
log "work dir $work; fetching the stage from $stage_base"
get_stage factory "$stage_base" "$manifest_sha" "$manifest_key" "$work"
factory_signature=$signature vo_signature=''
if [ -n "$vo_stage" ]; then
  mkdir -p "$work/vo"
  log "fetching the VO stage from $vo_stage"
  get_stage VO "$vo_stage" "$vo_sha" "$vo_key" "$work/vo"
  vo_signature=$signature
  [ -f "$work/vo/scripts.list" ] || fail corruption $EXIT_CORRUPT "VO stage: no scripts.list in it"
fi
rm -f "$hdr"   # jobs run under this dir: leave no copy of the token behind

{
  names=()  # ${a[@]+"${a[@]}"}: an empty array under set -u on bash < 4.4
  for a in ${attrs[@]+"${attrs[@]}"}; do
    printf '%s %s\n' "${a%%=*}" "${a#*=}"; names+=("${a%%=*}")
  done
  printf 'GLIDEIN_Attrs %s\n' "$(IFS=,; echo "${names[*]}")"
  for a in ${settings[@]+"${settings[@]}"}; do printf '%s %s\n' "${a%%=*}" "${a#*=}"; done
  printf '%s %s\n' GLIDEIN_Factory_URL "$factory" GLIDEIN_Pool_URL "$pool" GLIDEIN_Id "$gid" \
    GLIDEIN_Entry_Name "$entry" GLIDEIN_Site "$site" GLIDEIN_Idle_Timeout "$idle" \
    GLIDEIN_Lifetime "$lifetime" GLIDEIN_Cpus "$cpus" GLIDEIN_Memory "$memory" \
    GLIDEIN_Work_Dir "$work" GLIDEIN_Token_File "$token_file" \
    GLIDEIN_Manifest_Signature "$factory_signature"
  [ -n "$ca" ] && printf 'GLIDEIN_CA_File %s\n' "$ca"
  [ -n "$vo_signature" ] && printf '%s %s\n' GLIDEIN_VO_Scripts vo/scripts.list \
    GLIDEIN_VO_Manifest_Signature "$vo_signature"
  [ -n "$no_factory" ] && printf 'GLIDEIN_Manual true\n'
  [ -n "$heartbeat" ] && printf 'GLIDEIN_Heartbeat %s\n' "$heartbeat"
  printf 'GLIDEIN_Outage_Tolerance %s\n' "$outage"
  if [ "${#also_pools[@]}" -gt 0 ]; then
    printf 'GLIDEIN_Also_Pools %s\n' "${also_pools[*]}"
    [ -z "$pool_shares" ] || printf 'GLIDEIN_Pool_Shares %s\n' "$pool_shares"
  fi
} > "$work/glidein_config"
# Jobs of another account (agent/isolation.py) pass through the work dir to their sandbox.
for a in ${settings[@]+"${settings[@]}"}; do
  [ "$a" != GLIDEIN_Job_Isolation=account ] || chmod 711 "$work"
done

slurm_total_cpus() {  # SLURM_JOB_CPUS_PER_NODE ("4(x2),2") -> 10
  local part n r total=0
  IFS=, read -ra parts <<< "$1"
  for part in ${parts[@]+"${parts[@]}"}; do
    [[ $part =~ ^([0-9]+)(\(x([0-9]+)\))?$ ]] || continue
    n=${BASH_REMATCH[1]} r=${BASH_REMATCH[3]:-1}; total=$((total + n * r))
  done
  echo "$total"
}
# One srun task = one pilot: $1 work dir, $2 glidein id, $3 pilots, $4 python, $5 the
# token file (read where it is: a path every node of the job shares). The
# stage arrives as a tar on stdin; the pilot's share of the node is split among
# the tasks Slurm placed on the same node (SLURM_STEP_TASKS_PER_NODE, SLURM_LOCALID).
srun_task='
set -u
work=$1 gid=$2 count=$3 PY=$4 token_file=$5 i=${SLURM_PROCID:?} local_i=${SLURM_LOCALID:-0} local_n=1
IFS=, read -ra per_node <<< "${SLURM_STEP_TASKS_PER_NODE:-$count}"
node=0
for part in "${per_node[@]}"; do  # "2(x3),1": this node is SLURM_NODEID
  [[ $part =~ ^([0-9]+)(\(x([0-9]+)\))?$ ]] || continue
  if [ "${SLURM_NODEID:-0}" -lt $((node + ${BASH_REMATCH[3]:-1})) ]; then
    local_n=${BASH_REMATCH[1]}; break
  fi
  node=$((node + ${BASH_REMATCH[3]:-1}))
done
sub=$work/pilot_$i own=""
[ -d "$work" ] || own=1   # another node than the bootstrap: this task cleans up after itself
IFS= read -r size && [[ $size =~ ^[0-9]+$ ]] || { log "task $i: no stage header on stdin"; exit 1; }
mkdir -p "$sub" && head -c "$size" | tar -xf - -C "$sub" \
  || { log "task $i: cannot unpack the stage in $sub"; exit 1; }
watcher=""
cleanup_task() {
  [ -z "$watcher" ] || kill "$watcher" 2>/dev/null
  [ -z "$own" ] || { unmount_under "$sub"; rm -rf --one-file-system -- "$sub"; rmdir "$work" 2>/dev/null; }
}
trap cleanup_task EXIT
printf "%s %s\n" GLIDEIN_Id "$gid-$i" GLIDEIN_Work_Dir "$sub" GLIDEIN_Multi_Count "$count" \
  GLIDEIN_Multi_Index "$i" GLIDEIN_Multi_Local_Count "$local_n" \
  GLIDEIN_Multi_Local_Index "$local_i" GLIDEIN_Multi_Launcher srun >> "$sub/glidein_config"
[ ! -f "$sub/ca.pem" ] || printf "GLIDEIN_CA_File %s\n" "$sub/ca.pem" >> "$sub/glidein_config"
cd "$sub" || exit 1
[ -r "$token_file" ] || { log "task $i on $(hostname): no token file $token_file here (it must be on a path every node of the job shares)"; exit 1; }
namespace_prefix glidein_config
PYTHONPATH=$sub ${ns[@]+"${ns[@]}"} "$PY" -m agent --config glidein_config < /dev/null &
pid=$!
trap "kill -TERM $pid 2>/dev/null" TERM INT
# The rest of stdin carries the bootstrap'"'"'s requests: "drain" when it got a signal.
{ while IFS= read -r request; do
    [ "$request" != drain ] || kill -TERM $pid 2>/dev/null
  done; } <&0 &
watcher=$!
wait $pid; rc=$?
while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done
exit $rc
'
cd "$work" || exit $EXIT_ERROR
export PYTHONPATH=$work${PYTHONPATH:+:$PYTHONPATH}
# cvmfsexec mode (GLIDEIN_CVMFS_Mount namespace): the agents run in a user + mount
# namespace whose /cvmfs holds the repositories (agent/cvmfsexec.py), and in a pid
# namespace that dies with the helper. namespace_prefix CONFIG sets ns=(the command
# prefix) when CONFIG asks for it; when the node refuses the namespace the agent runs
# anyway and its cvmfs check fails, with a report. Also run by every srun task.
namespace_prefix() {
  ns=()
  [ "$(awk '$1 == "GLIDEIN_CVMFS_Mount" { v = tolower($2) } END { print v }' "$1")" \
    = namespace ] || return 0
  local ns_cmd=(unshare --user --map-root-user --mount --propagation private) why
  if why=$("${ns_cmd[@]}" true 2>&1); then
    ns=("${ns_cmd[@]}" "$PY" -m agent.cvmfsexec --config "$1" --uid "$(id -u)" \
        --gid "$(id -g)" --)
    log "the pilot runs in a user + mount namespace with its own /cvmfs"
  else
    printf '%s %s\n' GLIDEIN_CVMFS_Namespace failed GLIDEIN_CVMFS_Namespace_Problem \
      "$(echo "unshare --user --map-root-user --mount: ${why:-not available}" | tr '\n' ' ')" \
      >> "$1"
  fi
}
# local_agents WORK GID N PY: N pilots on this node, each in WORK/pilot_I with its own
# glidein id suffix and glidein_config (the agent splits the node's resources N ways).
# Runs as one process (inside the namespace when there is one, so that the pilots of
# a node share one /cvmfs mount), forwards SIGTERM/SIGINT, returns the first non-zero code.
local_agents() {
  local work=$1 gid=$2 n=$3 PY=$4 i sub pids=() p r rc=0
  for ((i = 0; i < n; i++)); do
    sub=$work/pilot_$i
    mkdir -p "$sub"
    for d in agent validation vo; do [ ! -e "$work/$d" ] || ln -s "../$d" "$sub/$d"; done
    { cat "$work/glidein_config"
      printf '%s %s\n' GLIDEIN_Id "$gid-$i" GLIDEIN_Work_Dir "$sub" GLIDEIN_Multi_Count "$n" \
        GLIDEIN_Multi_Index "$i" GLIDEIN_Multi_Launcher local
    } > "$sub/glidein_config"
    (cd "$sub" && exec "$PY" -m agent --config glidein_config) &
    pids+=($!)
  done
  trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
  trap 'kill -INT "${pids[@]}" 2>/dev/null' INT
  for p in "${pids[@]}"; do
    wait "$p"; r=$?
    while kill -0 "$p" 2>/dev/null; do wait "$p"; r=$?; done  # a trap interrupted the wait
    [ $rc -ne 0 ] || rc=$r
  done
  return $rc
}
if [ "$multi" -eq 1 ]; then
  namespace_prefix glidein_config
  log "starting the agent"
  ${ns[@]+"${ns[@]}"} "$PY" -m agent --config glidein_config &
  agent_pids+=($!)
elif [ "$multi_launch" = srun ] || { [ "$multi_launch" = auto ] && [ -n "${SLURM_JOB_ID:-}" ] \
       && command -v srun >/dev/null 2>&1; }; then
  # Inside a Slurm allocation: one srun task per pilot, placed by Slurm on the
  # allocation's nodes. srun broadcasts its stdin to every task, so each task
  # unpacks its own copy of the checked stage (the work dir is node-local).
  command -v srun >/dev/null 2>&1 || fail error $EXIT_ERROR "--multi-launch srun: no srun on PATH"
  [ -n "${SLURM_JOB_ID:-}" ] || fail error $EXIT_ERROR "--multi-launch srun: not in a Slurm job"
  job_cpus=$(slurm_total_cpus "${SLURM_JOB_CPUS_PER_NODE:-}")
  [ "$cpus" = auto ] || job_cpus=$cpus
  per_task=$(( ${job_cpus:-0} / multi )); [ "$per_task" -ge 1 ] || per_task=1
  log "starting $multi agents with srun ($per_task cpus per task)"
  shipped=(agent validation glidein_config); [ -d vo ] && shipped+=(vo); [ -n "$ca" ] && shipped+=(ca.pem)
  # srun broadcasts its stdin to every task: a size line, the stage as a tar, then
  # requests (see on_signal). The bootstrap holds the FIFO open for the pilots' life.
  tar -cf "$meta/stage.tar" "${shipped[@]}" || fail error $EXIT_ERROR "cannot pack the stage for srun"
  mkfifo -m 600 "$meta/srun_stdin" || fail error $EXIT_ERROR "cannot make a FIFO in $meta"
  srun --ntasks="$multi" --cpus-per-task="$per_task" --overlap \
    --kill-on-bad-exit=0 --mpi=none --input=all --job-name=glidein \
    bash -c "$(declare -f unmount_under log namespace_prefix); $srun_task" glidein_task \
    "$work" "$gid" "$multi" "$PY" "$token_file" < "$meta/srun_stdin" &
  srun_pid=$!
  agent_pids+=($!)
  exec 7> "$meta/srun_stdin"
  (trap '' PIPE; printf '%s\n' "$(( $(wc -c < "$meta/stage.tar") ))"; cat "$meta/stage.tar") >&7 \
    2>/dev/null || log "srun did not take the stage on its stdin"
else
  namespace_prefix glidein_config
  log "starting $multi agents"
  ${ns[@]+"${ns[@]}"} bash -c "$(declare -f local_agents log); local_agents \"\$@\"" \
    local_agents "$work" "$gid" "$multi" "$PY" &
  agent_pids+=($!)
fi
wait_agents; rc=$?
log "agent exited with $rc"
exit $rc
