"""The run's web page (`tools.serve`) under load: two pages at once, a full queue, a page closed mid-draw, Ctrl-C."""

import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT
from tests.test_serve import request, runs, served, slow_rows  # noqa: F401 (fixtures)
from tests.tiny_run import one_thread  # noqa: F401 (autouse)


def draw_in_threads(server, count: int) -> list:
    results = [None] * count

    def one(k):
        results[k] = request(server, "POST", "/api/sample", {"n": 2, "seed": k})[1]

    threads = [threading.Thread(target=one, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.parametrize("running", [2, 1])
def test_two_pages_drawing_at_once_both_finish(runs, slow_rows, running):
    with served(runs["guided"], running=running) as server:
        results = draw_in_threads(server, 2)
        assert [events[-1]["event"] for events in results] == ["done", "done"]
        queued = ["waiting" in [e["event"] for e in events] for events in results]
        assert sum(queued) == (running == 1)  # one slot: the later one queues
        assert server.slots.outcomes == {"finished": 2} and server.slots.inside == 0


def test_a_draw_beyond_the_queue_is_told_the_server_is_busy(runs, slow_rows):
    with served(runs["guided"], running=1, waiting=0) as server:
        first, second = draw_in_threads(server, 2)
        assert first[-1]["event"] == "done"
        assert second == [{"event": "error", "message": second[0]["message"]}] and "busy" in second[0]["message"]


def test_a_closed_page_stops_its_draw(runs, slow_rows):
    with served(runs["guided"]) as server:
        body = json.dumps({"n": 4}).encode()
        client = socket.create_connection(server.server_address[:2])
        client.sendall(b"POST /api/sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        seen = b""
        while b'"event": "row"' not in seen:
            seen += client.recv(65536)
        client.close()
        deadline = time.monotonic() + 20
        while server.slots.inside and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.slots.outcomes == {"cancelled": 1}
        assert len(slow_rows) < 4  # stopped within a row or two of the page going away, not after all 8


@pytest.mark.slow  # a fresh interpreter imports torch: seconds
def test_the_command_prints_its_address_serves_and_stops_on_ctrl_c(runs):
    command = [sys.executable, "-m", "tools.serve", "--run-dir", str(runs["guided"]), "--device", "cpu", "--port", "0"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving ") and "http://127.0.0.1:" in line
        host_port = line.split("http://")[1].split("/")[0]
        connection = http.client.HTTPConnection(host_port, timeout=30)
        connection.request("GET", "/api/run")
        assert json.loads(connection.getresponse().read())["can_draw"]
        process.send_signal(2)  # SIGINT, as Ctrl-C
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0 and "stopped" in out and err == ""
    finally:
        if process.poll() is None:
            process.kill()


