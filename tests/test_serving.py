"""Serving the explorer: it listens on loopback unless told otherwise, refuses `panel serve`
without an address (which would listen on every interface), and Panel's basic auth keeps out a
wrong password. The bind is read from the server process's listening sockets (psutil); test
traffic goes to loopback only. No page is requested without a login, so no run is computed."""

import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from http.client import HTTPConnection

import psutil
import pytest

from explorer.app_hooks import REFUSAL, served_address
from tests.explorer_runs import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], tmp_path) -> subprocess.Popen:
    env = {**os.environ, "VIT_VA_RUNS": str(tmp_path / "runs"), "VIT_VA_RUN": "demo",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _listening(process: subprocess.Popen, port: int, timeout: float = 120) -> list[str]:
    """The addresses `process` listens on at `port`, once it does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        found = [c.laddr.ip for c in psutil.Process(process.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_the_address_is_read_from_the_command_line():
    assert served_address(["explorer", "--port", "5006"]) is None
    assert served_address(["explorer", "--address", "127.0.0.1", "--show"]) == "127.0.0.1"
    assert served_address(["explorer", "--address=0.0.0.0"]) == "0.0.0.0"


def test_panel_serve_without_an_address_refuses_to_serve(tmp_path):
    port = _free_port()
    process = _start(["-m", "panel", "serve", "explorer", "--port", str(port)], tmp_path)
    try:
        out, _ = process.communicate(timeout=120)
    finally:
        _stop(process)
    assert process.returncode == 2, out
    assert REFUSAL in out


@pytest.mark.parametrize("command", ["panel serve explorer --address localhost", "vit-va explore"])
def test_the_documented_commands_listen_on_loopback_only(command, tmp_path):
    port = _free_port()
    args = (["-m", "panel", "serve", "explorer", "--address", "localhost", "--port", str(port)]
            if command.startswith("panel") else
            ["-m", "vit_jax_va.cli", "explore", str(tmp_path / "runs" / "demo"), "--port", str(port)])
    process = _start(args, tmp_path)
    try:
        addresses = _listening(process, port)
    finally:
        _stop(process)
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses


def test_basic_auth_refuses_a_wrong_password(tmp_path):
    port = _free_port()
    process = _start(["-m", "panel", "serve", "explorer", "--address", "127.0.0.1", "--port", str(port),
                      "--allow-websocket-origin", f"127.0.0.1:{port}", "--basic-auth", "right-password",
                      "--cookie-secret", "a-test-secret"], tmp_path)
    try:
        _listening(process, port)

        def request(method: str, path: str, form: dict | None = None):
            connection = HTTPConnection("127.0.0.1", port, timeout=30)
            body = urllib.parse.urlencode(form) if form else None
            headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            connection.close()
            return response

        page = request("GET", "/explorer")
        assert page.status == 302 and "/login" in page.getheader("Location"), (page.status, page.getheaders())
        wrong = request("POST", "/login", {"username": "lab", "password": "wrong-password"})
        assert wrong.status == 302 and "error=" in wrong.getheader("Location")
        assert "user=" not in (wrong.getheader("Set-Cookie") or "")
        right = request("POST", "/login", {"username": "lab", "password": "right-password"})
        assert right.status == 302 and "error=" not in right.getheader("Location")
        assert "user=" in (right.getheader("Set-Cookie") or "")
    finally:
        _stop(process)
