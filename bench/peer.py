"""`--peer ducto`: the seed library ducto's one-shot charge on the same PostgreSQL.

ducto (https://github.com/apoorwv/ducto, its Python package in `python/`) is installed by the
bench into its own virtualenv (`--peer-env`, default .creditd/bench/peer-venv) with pip, from
`--peer-source`: any pip requirement (a name, a local directory or checkout, an sdist or wheel,
or a URL). The default is its public source, the GitHub archive of `main` (ducto is not on PyPI:
`pip install ducto` finds no distribution), which needs a machine that reaches GitHub; elsewhere
give a checkout or an archive: `--peer-source /path/to/ducto` (its root or its `python/`). The
environment is reused while its recorded source is unchanged. The driver (bench/peer_ducto.py)
runs under that environment's python against a database of its own (`bench_ducto`) on the same
server, with the same clients, users, warm-up and duration as creditd's one-shot `usage` phase.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

from bench.cpu import CpuSample
from bench.postgres import Postgres
from bench.stats import OpStats, PhaseResult

DRIVER = Path(__file__).parent / "peer_ducto.py"
PEER_DB = "bench_ducto"
DEFAULT_SOURCE = {
    "ducto": "ducto @ https://github.com/apoorwv/ducto/archive/refs/heads/main.zip"
    "#subdirectory=python"
}
# ducto's PostgresStore needs psycopg2 (its `postgres` extra).
EXTRA_REQUIREMENTS = {"ducto": ["psycopg2-binary"]}


# ducto's PostgresStore.setup() bootstraps Supabase's `auth` schema on plain PostgreSQL with an
# unguarded CREATE ROLE anon / authenticated, which fails once an earlier run created those
# (cluster-wide) roles. The same bootstrap, roles guarded, so ducto's own is skipped.
AUTH_BOOTSTRAP = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated;
    END IF;
    CREATE SCHEMA IF NOT EXISTS auth;
    CREATE FUNCTION auth.role() RETURNS text
        LANGUAGE SQL IMMUTABLE AS $f$ SELECT 'service_role'::text $f$;
    CREATE TABLE IF NOT EXISTS auth.users (id uuid PRIMARY KEY);
    CREATE FUNCTION auth.uid() RETURNS uuid
        LANGUAGE SQL IMMUTABLE AS $f$ SELECT '00000000-0000-0000-0000-000000000000'::uuid $f$;
END
$$
"""


class PeerUnavailable(RuntimeError):
    """The peer could not be installed from its source."""


def _source_requirement(source: str) -> str:
    """A pip requirement for `source`: a ducto checkout's root means its `python/` package."""
    path = Path(source)
    if path.is_dir() and not (path / "pyproject.toml").exists() and (path / "python").is_dir():
        return str((path / "python").resolve())
    if path.exists():
        return str(path.resolve())
    return source


def ensure_env(peer: str, source: str | None, env_dir: Path) -> Path:
    """The peer environment's python, installed from `source` (or the default) if needed."""
    requirement = _source_requirement(source or DEFAULT_SOURCE[peer])
    python = env_dir / "bin" / "python"
    marker = env_dir / ".bench-peer-source"
    if python.exists() and marker.exists() and marker.read_text() == requirement:
        return python
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    argv = [str(python), "-m", "pip", "install", "--quiet", "--timeout", "30", requirement]
    argv += EXTRA_REQUIREMENTS.get(peer, [])
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-4:])
        raise PeerUnavailable(
            f"cannot install {peer} from {requirement!r} (pip exit {result.returncode}):\n{tail}\n"
            "Give it a source the machine can reach with --peer-source (a checkout, an sdist "
            "or a URL); see bench/peer.py."
        )
    marker.write_text(requirement)
    return python


def run_peer(
    python: Path, pg: Postgres, *, users: int, clients: int, duration: float, warmup: float
) -> PhaseResult:
    """Run the driver once (on a fresh `bench_ducto`); its deduct stats and the CPU split
    (`service` = the ducto process: library, driver threads and psycopg2)."""
    pg.recreate_database(PEER_DB)
    pg.psql(AUTH_BOOTSTRAP, PEER_DB)
    spec = {
        "url": pg.url(PEER_DB),
        "users": users,
        "clients": clients,
        "duration": duration,
        "warmup": warmup,
    }
    process = subprocess.Popen(
        [str(python), str(DRIVER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(json.dumps(spec))
    process.stdin.close()
    before: CpuSample | None = None
    cpu: dict[str, float] = {}
    last = ""
    for raw in process.stdout:
        line = raw.strip()
        if line == "WINDOW_START":
            before = CpuSample.take(process.pid, pg.postmaster_pid())
        elif line == "WINDOW_END" and before is not None:
            cpu = CpuSample.take(process.pid, pg.postmaster_pid()).percent_since(before)
        elif line:
            last = line
    if process.wait() != 0 or not last.startswith("{"):
        raise RuntimeError(f"the {python} peer driver failed (exit {process.returncode})")
    data = json.loads(last)
    if data["first_error"]:
        print(f"  peer errors: {data['errors']}, first: {data['first_error']}", file=sys.stderr)
    stats = OpStats.from_samples(
        [ms / 1000 for ms in data["latencies_ms"]], data["errors"], duration
    )
    name = f"ducto deduct/many/{clients}"
    return PhaseResult(name, clients, users, duration, {"deduct": stats}, cpu)
