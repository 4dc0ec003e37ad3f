# gconfig.sh: helpers for validation scripts written in bash (source this file).
# The contract is the one of gconfig.py: read/append KEY VALUE lines in the
# glidein_config given as $1 and write one JSON result to $GLIDEIN_RESULT_FILE.
#   gconfig_get KEY             print the last value of KEY
#   gconfig_add KEY VALUE       append KEY VALUE (publish with publish_slot/publish_env)
#   publish_slot KEY / publish_env KEY
#   result_ok [DETAIL]; result_failed CATEGORY DETAIL (exits 1)
GCONFIG_FILE=${1:?usage: script GLIDEIN_CONFIG}
_gc_slot='' _gc_env=''
gconfig_get() { awk -v k="$1" '$1 == k { sub(/^[^ \t]+[ \t]*/, ""); v = $0 } END { print v }' \
  "$GCONFIG_FILE"; }
gconfig_add() {  # refuses (exit 1) a key that is not a name or a value with a control character
  local LC_ALL=C
  if [[ ! $1 =~ ^[A-Za-z_][A-Za-z0-9_]*$ || $2 == *[$'\001'-$'\010'$'\012'-$'\037'$'\177']* \
        || $2 == *$'\302'[$'\200'-$'\237']* || $2 == *$'\342\200'[$'\250'$'\251']* ]]; then
    printf 'gconfig_add: cannot write %q = %q to glidein_config\n' "$1" "$2" >&2; exit 1
  fi
  printf '%s %s\n' "$1" "$2" >> "$GCONFIG_FILE"
}
publish_slot() { _gc_slot="$_gc_slot${_gc_slot:+,}\"$1\""; }
publish_env() { _gc_env="$_gc_env${_gc_env:+,}\"$1\""; }
_gc_json() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "${s//[[:cntrl:]]/ }"; }
_gc_result() {
  local body
  body="{\"status\":\"$1\",\"category\":\"$2\",\"detail\":$(_gc_json "$3"),\"slot_attrs\":[$_gc_slot],\"job_env\":[$_gc_env]}"
  if [ -n "${GLIDEIN_RESULT_FILE:-}" ]; then printf '%s\n' "$body" > "$GLIDEIN_RESULT_FILE"
  else printf '%s\n' "$body"; fi
}
result_ok() { _gc_result ok '' "${1:-}"; }
result_failed() { _gc_result failed "$1" "$2"; exit 1; }
