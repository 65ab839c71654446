"""The run's web page (`tools.serve`) through its API: every control, bad inputs, streaming, queueing, closed pages."""

import base64
import contextlib
import http.client
import io
import json
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from stage2_prior.checkpoint import load_prior
from tests.tiny_run import make_tiny_run, one_thread  # noqa: F401 (autouse)
from tools.common.drawing import choose_labels, draw_samples
from tools.serve import draws
from tools.serve.app import make_server
from tools.serve.command import main as serve_main
from tools.serve.session import open_session

CLASSES = 6  # the tiny run's shapes
ROWS = 8  # 32 px images, downsample 4: 8x8 code maps


@contextlib.contextmanager
def served(run_dir, running=2, waiting=8):
    """A server for `run_dir` on a free port, serving from a thread."""
    server = make_server(open_session(run_dir, torch.device("cpu")), "127.0.0.1", 0, running, waiting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A class-conditional one-level run and an unconditional two-level run."""
    root = tmp_path_factory.mktemp("runs")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return {"guided": make_tiny_run(root / "guided", recon_loss="l1", class_conditional=True),
                "two_levels": make_tiny_run(root / "two_levels", recon_loss="l1", levels=2)}


@pytest.fixture(scope="module")
def server(runs):
    with served(runs["guided"]) as server:
        yield server


def request(server, method, path, body=None):
    """(status, the JSON answer, or the list of streamed events)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    connection.request(method, path, data, {"Content-Type": "application/json"})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    if response.getheader("Content-Type") == "application/x-ndjson":
        return response.status, [json.loads(line) for line in text.splitlines()]
    return response.status, json.loads(text) if "json" in response.getheader("Content-Type") else text


def picture(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2])))


def code_maps(data_url: str) -> dict:
    return dict(np.load(io.BytesIO(base64.b64decode(data_url.partition(",")[2]))))


def png_bytes(size, image_format="PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=image_format)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def check_stream(events, total: int) -> dict:
    """Start, a row event per row (done counting up), then done; returns the done event."""
    assert [e["event"] for e in events] == ["start"] + ["row"] * total + ["done"], [e["event"] for e in events]
    assert [e["done"] for e in events[1:-1]] == list(range(1, total + 1))
    assert all(e["total"] == total for e in events[:-1])
    assert all("image" in e for e in events[1:-1] if e["level"] == events[-2]["level"])  # every row of the last level
    return events[-1]


def test_the_page_and_its_files_are_served_with_nothing_from_elsewhere(server):
    for path in ("/", "/page.js", "/run_tab.js", "/page.css"):
        status, text = request(server, "GET", path)
        assert status == 200 and len(text) > 500
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, path
    assert "<script src=\"page.js\"" in request(server, "GET", "/")[1]


def test_the_summary_describes_the_run_and_its_controls(server):
    status, run = request(server, "GET", "/api/run")
    assert status == 200 and run["missing"] == [] and run["can_draw"]
    assert len(run["class_names"]) == CLASSES and run["class_conditional"] and run["guidable"]
    assert run["rows"] == [ROWS] and run["image_size"] == 32 and run["levels"] == 1


@pytest.mark.parametrize("controls", [{"n": 4}, {"n": 5, "class": 2, "guidance": 2.5, "temperature": 0.5, "top_k": 3,
                                                   "seed": 7}, {"n": "3", "temperature": "0", "guidance": 0}])
def test_a_draw_streams_its_rows_and_ends_with_the_samples_the_commands_draw(server, runs, controls):
    status, events = request(server, "POST", "/api/sample", controls)
    assert status == 200
    done = check_stream(events, ROWS)
    n = int(controls["n"])
    assert picture(done["image"]).size == picture(events[-2]["image"]).size
    prior = load_prior(runs["guided"] / "prior" / "ckpt.pt")
    labels = choose_labels(prior, controls.get("class"), n, "cpu")
    guidance = controls.get("guidance")
    expected = draw_samples(prior, labels, n, 256, controls.get("seed", 0), "cpu", float(controls.get("temperature", 1)),
                            controls.get("top_k"), None if guidance is None else float(guidance))
    maps = code_maps(done["codes"])
    assert np.array_equal(maps["samples"], expected[0].numpy()) and np.array_equal(maps["samples_labels"], labels)


def test_a_row_per_class_is_one_labelled_row_of_samples_per_class(server):
    status, events = request(server, "POST", "/api/classes", {"per_class": 3, "guidance": 1})
    done = check_stream(events, ROWS)
    assert status == 200 and code_maps(done["codes"])["classes_labels"].tolist() == [c for c in range(CLASSES)
                                                                                      for _ in range(3)]
    assert picture(done["image"]).height > CLASSES * 32 and picture(done["image"]).width > 3 * 32


@pytest.mark.parametrize("source", ["test", "upload"])
def test_a_completion_keeps_the_rows_asked_for_and_draws_the_rest(server, source):
    status, image = request(server, "GET", "/api/test-image?index=3")
    assert status == 200 and image["count"] == 12 and 0 <= image["label"] < CLASSES
    controls = {"index": 3} if source == "test" else {"upload": image_at_run_size(image["image"]), "class": 1}
    status, events = request(server, "POST", "/api/complete", {**controls, "keep_rows": 3, "n_completions": 5})
    done = check_stream(events, ROWS)  # kept rows are reported too, at once
    assert status == 200 and picture(done["image"]).size == ((2 + 5) * 34 + 2, 36)  # original, kept, completions
    maps = code_maps(done["codes"])["completions"]
    assert maps.shape == (5, ROWS, ROWS) and (maps[:, :3] == maps[:1, :3]).all()


def image_at_run_size(preview_url: str) -> str:
    """The test image preview (shown larger) back at the run's 32 px, as a PNG data URL."""
    buffer = io.BytesIO()
    picture(preview_url).resize((32, 32), Image.NEAREST).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


BAD = [("/api/sample", {"n": 0}, "--n must be at least 1"),
       ("/api/sample", {"n": 100000}, "--n must be at most 256"),
       ("/api/sample", {"n": "many"}, "n must be a whole number"),
       ("/api/sample", {"n": 2.5}, "n must be a whole number"),
       ("/api/sample", {"temperature": -1}, "--temperature must be >= 0"),
       ("/api/sample", {"temperature": "nan"}, "temperature must be a number"),
       ("/api/sample", {"top_k": 0}, "--top-k must be at least 1"),
       ("/api/sample", {"class": CLASSES}, f"--class must be in [0, {CLASSES})"),
       ("/api/sample", {"class": "circle"}, "class must be a whole number"),
       ("/api/classes", {"per_class": 0}, "per class must be at least 1"),
       ("/api/classes", {"per_class": 17}, "per class must be at most 16"),
       ("/api/complete", {"keep_rows": ROWS}, f"--keep-rows must be in [0, {ROWS - 1}]"),
       ("/api/complete", {"n_completions": 0}, "--n-completions must be at least 1"),
       ("/api/complete", {"n_completions": 99}, "--n-completions must be at most 16"),
       ("/api/complete", {"index": 12}, "test image index must be in [0, 11]"),
       ("/api/complete", {"upload": "bm90IGFuIGltYWdl", "class": 0}, "not an image"),
       ("/api/complete", {"upload": "%%%", "class": 0}, "not an image"),
       ("/api/complete", {"upload": png_bytes((16, 16)), "class": 0}, "16x16 pixels; this run's images are 32x32"),
       ("/api/complete", {"upload": png_bytes((32, 32), "GIF"), "class": 0}, "GIF image: send a PNG or JPEG"),
       ("/api/complete", {"upload": png_bytes((32, 32))}, "choose a class for an uploaded image"),
       ("/api/sample", b"{not json", "not JSON"),
       ("/api/sample", b"[1, 2]", "must be a JSON object")]


@pytest.mark.parametrize("path, body, message", BAD, ids=[m for _, _, m in BAD])
def test_a_bad_control_gets_one_clear_line_and_the_server_keeps_serving(server, path, body, message):
    status, answer = request(server, "POST", path, body)
    assert status == 400 and message in answer["error"] and "\n" not in answer["error"]
    assert request(server, "GET", "/api/run")[0] == 200


def test_unknown_pages_and_oversized_requests_are_refused(server):
    assert request(server, "GET", "/etc/passwd") == (404, {"error": "no such page: /etc/passwd"})
    assert request(server, "POST", "/api/nothing", {})[0] == 404
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    connection.putrequest("POST", "/api/complete")
    connection.putheader("Content-Length", str(100 << 20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "MiB" in json.loads(response.read())["error"]
    connection.close()
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    connection.request("POST", "/api/sample", b"{}", {"Content-Length": "-5"})
    assert connection.getresponse().status == 411
    connection.close()


def test_two_levels_draw_the_top_rows_as_progress_then_show_the_bottom_rows(runs):
    with served(runs["two_levels"]) as server:
        run = request(server, "GET", "/api/run")[1]
        assert run["rows"] == [4, ROWS] and not run["class_conditional"] and not run["guidable"]
        status, events = request(server, "POST", "/api/sample", {"n": 3})
        done = check_stream(events, 4 + ROWS)
        assert all("image" not in e for e in events[1:5]) and {e["level"] for e in events[1:-1]} == {0, 1}
        assert set(code_maps(done["codes"])) == {"samples_top", "samples_bottom"}
        status, events = request(server, "POST", "/api/complete", {"index": 0, "keep_rows": 2, "n_completions": 2})
        assert set(code_maps(check_stream(events, ROWS)["codes"])) == {"completions_top", "completions"}
        for path, body, message in [("/api/sample", {"guidance": 2}, "not class-conditional"),
                                    ("/api/sample", {"class": 0}, "--class needs a class-conditional prior"),
                                    ("/api/classes", {}, "needs a class-conditional prior")]:
            status, answer = request(server, "POST", path, body)
            assert status == 400 and message in answer["error"]


def test_a_run_without_a_prior_shows_what_is_missing_and_the_rest(runs, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(runs["guided"], partial)
    (partial / "prior" / "ckpt.pt").unlink()
    with served(partial) as server:
        run = request(server, "GET", "/api/run")[1]
        assert not run["can_draw"] and "make train-prior" in run["missing"][0] and run["image_size"] == 32
        status, answer = request(server, "POST", "/api/sample", {"n": 2})
        assert status == 400 and "make train-prior" in answer["error"]
        status, info = request(server, "GET", "/api/info")
        assert status == 200 and info["stages"]["vqvae"]["config"]["levels"] == 1 and info["codes"]["num_classes"]
        assert request(server, "GET", "/api/recon")[0] == 200 and request(server, "GET", "/api/test-image")[0] == 200
    shutil.rmtree(partial / "vqvae")
    with served(partial) as server:
        assert [line.split("`")[1] for line in request(server, "GET", "/api/run")[1]["missing"]] == [
            f"make {target} RUN_DIR={partial}" for target in ("train-vqvae", "train-prior")]
        status, answer = request(server, "GET", "/api/recon")
        assert status == 400 and "make train-vqvae" in answer["error"]
        assert request(server, "GET", "/api/info")[1]["stages"]["vqvae"]["config"] is None


def test_the_run_tab_shows_configs_figures_and_curves(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["guided"], run_dir)
    (run_dir / "prior" / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "val_bits_per_code": 4.0 - e,
                                                                             "note": "x"}) for e in (1, 2)) + "\nbad\n")
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "eval.json").write_text(json.dumps({"psnr": 21.5}))
    with served(run_dir) as server:
        info = request(server, "GET", "/api/info")[1]
        assert info["stages"]["prior"]["curves"] == [{"epoch": 1, "val_bits_per_code": 3.0},
                                                     {"epoch": 2, "val_bits_per_code": 2.0}]
        assert list(info["figures"].values()) == [{"psnr": 21.5}]
        assert picture(request(server, "GET", "/api/recon")[1]["image"]).width > 32


@pytest.fixture
def slow_rows(monkeypatch):
    """Each row takes at least 50 ms more: long enough for draws to overlap. Returns the rows drawn."""
    drawn, on_row = [], draws.LiveDraw.on_row

    def slowed(self, level, i, codes):
        drawn.append(i)
        time.sleep(0.05)
        on_row(self, level, i, codes)

    monkeypatch.setattr(draws.LiveDraw, "on_row", slowed)
    return drawn


@pytest.mark.parametrize("flags, message", [(["--max-draws", "0"], "--max-draws must be at least 1"),
                                            (["--run-dir", "/no/such/run"], "no such run folder")])
def test_the_command_refuses_bad_flags_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        serve_main(flags)
    assert stopped.value.code == 1 and message in capsys.readouterr().err
