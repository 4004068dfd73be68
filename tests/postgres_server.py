"""A real PostgreSQL server for the tests: Debian's postgresql binaries, a cluster made by initdb in a temporary
folder, listening on loopback on a free port, stopped (and the folder removed) at the end of the session.

Each test gets a database of its own, copied from a template that was migrated once (CREATE DATABASE ... TEMPLATE
is a file copy: far faster than running the migrations per test).
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user the Debian package creates.
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

TEMPLATE = "lab_template"
INSTALL_HINT = ("PostgreSQL's server binaries were not found (/usr/lib/postgresql/*/bin/pg_ctl). `make test` installs "
                "Debian's postgresql package; by hand: apt-get install postgresql")


def server_bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError(INSTALL_HINT)
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        self.bin = server_bin_dir()
        self.folder = Path(tempfile.mkdtemp(prefix="lab-pg-"))
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._names = itertools.count(1)

    def start(self) -> "PostgresServer":
        if self.as_user:  # the server's own user must own its folder
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        data = self.folder / "data"
        self._run("initdb", "-D", data, "-U", "lab", "--auth=trust", "-E", "UTF8", "--no-sync")
        # fsync off: a test server's data need not survive a power cut, and it makes each test's commits cheap
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", data, "-o", options, "-l", self.folder / "server.log", "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.folder / "data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://lab@127.0.0.1:{self.port}/{database}"

    def migrate_template(self, migrate) -> None:
        """Create the template database and bring it to the newest schema with `migrate(url)`."""
        self._sql(f"CREATE DATABASE {TEMPLATE}")
        migrate(self.url(TEMPLATE))

    def new_database(self) -> str:
        """A fresh, migrated database for one test; returns its URL."""
        name = f"lab_test_{next(self._names)}"
        self._sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a test's database (its workers may still hold connections: FORCE ends them)."""
        self._sql(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def _sql(self, statement: str) -> None:
        import psycopg
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=lab dbname=postgres", autocommit=True) as c:
            c.execute(statement)

    def _run(self, tool: str, *args) -> None:
        cmd = [*self.as_user, str(self.bin / tool), *map(str, args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}\n{tail}")
