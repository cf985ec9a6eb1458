"""A real nginx (the distribution's binary, e.g. Debian's /usr/sbin/nginx) as a foreground
process in a temp directory, running the shipped snippets from deploy/nginx/, for tests of
the edge config.

Everything nginx writes (pid, logs, temp files, the cache) is in that directory. The snippets
are linked in as they are, under the name deploy/nginx.conf includes them by
(`freshroots/…`, relative to the main config's directory); only a `proxy_cache_path` is
rewritten, from /var/cache/nginx/ to the temp directory.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.live_server import free_port

DEPLOY_SNIPPETS = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
PRODUCTION_CACHE_ROOT = "/var/cache/nginx/"

# $upstream_cache_status and $upstream_status: what the cache did and what the app answered.
ACCESS_LOG_FORMAT = (
    '"$request" $status $body_bytes_sent cache=$upstream_cache_status '
    'up=$upstream_status rt=$request_time ae="$http_accept_encoding"'
)


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


@dataclass
class Nginx:
    base_url: str
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"


def link_snippets(directory: Path) -> Path:
    """`directory`/freshroots: every deploy/nginx/*.conf, linked (or, for the one with the
    cache path, copied with that path moved to `directory`/cache)."""
    snippets = directory / "freshroots"
    snippets.mkdir()
    (directory / "cache").mkdir()
    for source in sorted(DEPLOY_SNIPPETS.glob("*.conf")):
        text = source.read_text()
        if "proxy_cache_path" in text:
            assert text.count(f"proxy_cache_path {PRODUCTION_CACHE_ROOT}") == 1, source
            text = text.replace(
                f"proxy_cache_path {PRODUCTION_CACHE_ROOT}",
                f"proxy_cache_path {directory / 'cache'}/",
            )
            (snippets / source.name).write_text(text)
        else:
            (snippets / source.name).symlink_to(source)
    return snippets


def main_config(directory: Path, port: int, http: str, server: str) -> str:
    """A small main config around `http` (http-level lines) and `server` (the lines of one
    plain-HTTP server on 127.0.0.1:`port`), with every path nginx writes in `directory`."""
    # Workers run as this user (as root: root, so they can write to the 0700 temp directory;
    # otherwise nginx ignores the directive).
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    temp = directory / "temp"
    return f"""
user {user} {group};
worker_processes 2;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 2048; }}
http {{
    log_format test '{ACCESS_LOG_FORMAT}';
    access_log {directory}/access.log test;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{http}
    server {{
        listen 127.0.0.1:{port};
{server}
    }}
}}
"""


@contextmanager
def running_nginx(directory: Path, http: str, server: str) -> Iterator[Nginx]:
    """Check the config (`nginx -t`), run nginx in the foreground until the block exits."""
    binary = nginx_binary()
    assert binary is not None, "nginx is not installed"
    (directory / "temp").mkdir(exist_ok=True)
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(main_config(directory, port, http, server))
    command = [binary, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
    process = subprocess.Popen(
        [*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    nginx = Nginx(f"http://127.0.0.1:{port}", directory, process)
    try:
        _wait_listening(nginx, port)
        yield nginx
    finally:
        process.send_signal(signal.SIGTERM)  # fast shutdown: workers and cache processes too
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_listening(nginx: Nginx, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if nginx.process.poll() is not None:
            raise RuntimeError(f"nginx exited:\n{nginx.error_log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not listen in 10 s")
