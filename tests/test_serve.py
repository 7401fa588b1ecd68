"""`gpq serve` end to end: the server in a subprocess on 127.0.0.1, a real HTTP client (httpx), and
its answers against `gpq search --json` on the same files."""

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import keras
import numpy as np
import pytest
import tensorflow as tf
from test_cli_images import CONFIG, write_images  # the tiny model and the folders of photos

from gpq_keras import GPQ, cli

pytestmark = pytest.mark.large  # end to end through the CLI (TensorFlow models): in `make test`

K = 5
MAX_UPLOAD_BYTES = 200_000
MAX_PIXELS = 250_000
START_TIMEOUT = 180


def start_server(model, index, log_path, *flags):
    """`gpq serve` on a free port of 127.0.0.1 -> (process, base URL), once it answers."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    log = open(log_path, "w")
    argv = ["serve", "--model", str(model), "--index", str(index), "--port", "0", "-k", str(K)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpq_keras.cli", *argv, *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    deadline = time.time() + START_TIMEOUT
    while time.time() < deadline:
        found = re.search(r"on (http://127\.0\.0\.1:\d+) ", open(log_path).read())
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"gpq serve ended: {proc.returncode} {open(log_path).read()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"gpq serve did not start in time: {open(log_path).read()}")


def stop_server(proc, log_path, sig):
    """Send `sig`, wait for the process -> its exit status; it must say it stopped."""
    proc.send_signal(sig)
    try:
        returncode = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("gpq serve did not stop in time") from None
    assert f"gpq serve: stopped ({signal.Signals(sig).name})" in open(log_path).read()
    return returncode


def make_files(root):
    """In `root`: a folder of 12 photos in 3 classes (and one of 6 more), a tiny model, an index
    of the 12 (index.npz) and one of the 6 (more.npz) -> root."""
    rng = np.random.default_rng(0)
    write_images(root / "photos", 4, rng)
    write_images(root / "more", 2, rng)
    keras.utils.set_random_seed(0)
    GPQ(CONFIG).save(root / "model.keras")
    for folder, name in (("photos", "index.npz"), ("more", "more.npz")):
        argv = ["index", "build", "--model", str(root / "model.keras")]
        argv += ["--images", str(root / folder), "--output", str(root / name)]
        assert cli.main(argv) == 0
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(files):
    """The base URL of `gpq serve` over index.npz (bounds: 200,000 bytes, 250,000 pixels); stopped
    by SIGTERM at the end, which must end it cleanly (status 0)."""
    log = files / "serve.log"
    proc, url = start_server(
        files / "model.keras",
        files / "index.npz",
        log,
        "--max-upload-bytes",
        str(MAX_UPLOAD_BYTES),
        "--max-pixels",
        str(MAX_PIXELS),
    )
    yield url
    assert stop_server(proc, log, signal.SIGTERM) == 0


def gpq_search(files, image, index="index.npz", k=K):
    """The record of `image` in `gpq search --image IMAGE --json` (one image per call)."""
    out = files / "search.json"
    argv = ["search", "--model", str(files / "model.keras"), "--index", str(files / index)]
    assert cli.main([*argv, "--image", str(image), "-k", str(k), "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())["queries"]
    return record


def queries(files):
    """Three query files: a JPEG, a PNG, and a file of the other folder (not indexed)."""
    return [
        files / "photos" / "red" / "photos_0.jpg",
        files / "photos" / "green" / "photos_1.png",
        files / "more" / "blue" / "more_1.png",
    ]


@pytest.fixture(scope="module")
def expected(files):
    """{path: gpq search's record} of the three queries."""
    return {str(path): gpq_search(files, path) for path in queries(files)}


def post(client, url, path, k=K):
    """POST /search with the file's bytes as the body, named by the file's path."""
    return client.post(
        f"{url}/search", params={"k": k, "name": str(path)}, content=path.read_bytes()
    )


def test_healthz_and_the_page(server):
    with httpx.Client(timeout=30) as client:
        health = client.get(f"{server}/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok", "items": 12}
        page = client.get(f"{server}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert 'type="file"' in html and 'id="results"' in html and "items/" in html
    assert "<script src" not in html and "https://" not in html  # nothing from elsewhere


def test_search_equals_gpq_search_for_three_images(server, files, expected):
    with httpx.Client(timeout=60) as client:
        for path in queries(files):
            got = post(client, server, path)
            assert got.status_code == 200, got.text
            assert got.json() == expected[str(path)]  # ranks, ids, distances, sources, classes
            # the same file as a multipart upload, as the page sends it
            multipart = client.post(
                f"{server}/search",
                params={"k": K},
                files={"image": (path.name, path.read_bytes(), "application/octet-stream")},
            )
            assert multipart.status_code == 200, multipart.text
            assert multipart.json() == {**expected[str(path)], "query": path.name}
    record = expected[str(queries(files)[0])]
    assert [hit["rank"] for hit in record["results"]] == list(range(1, K + 1))
    assert all(os.path.isabs(hit["source"]) and "class" in hit for hit in record["results"])


def test_k_is_capped_at_the_index_size_and_defaults_to_the_flag(server, files):
    path = queries(files)[0]
    with httpx.Client(timeout=60) as client:
        everything = post(client, server, path, k=1000).json()["results"]
        default = client.post(f"{server}/search", content=path.read_bytes()).json()
    assert len(everything) == 12 and len(default["results"]) == K
    assert default["query"] == "upload"
    assert [hit["id"] for hit in everything[:K]] == [hit["id"] for hit in default["results"]]


def test_eight_concurrent_clients_of_twenty_requests_are_all_answered_correctly(
    server, files, expected
):
    paths = queries(files)

    def client_run(c):
        answers = []
        with httpx.Client(timeout=120) as client:
            for r in range(20):
                path = paths[(c + r) % len(paths)]
                answers.append((path, post(client, server, path)))
        return answers

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = [a for run in pool.map(client_run, range(8)) for a in run]
    assert len(answers) == 160
    sizes = [int(response.headers["x-gpq-batch"]) for _, response in answers]
    assert max(sizes) > 1  # concurrent queries were encoded together
    for path, response in answers:
        assert response.status_code == 200, response.text
        got, want = response.json(), expected[str(path)]
        assert got["query"] == want["query"]
        # a batch of several may change the last float32 bits of features and distances
        assert [(h["rank"], h["id"], h["source"], h["class"]) for h in got["results"]] == [
            (h["rank"], h["id"], h["source"], h["class"]) for h in want["results"]
        ]
        np.testing.assert_allclose(
            [h["distance"] for h in got["results"]],
            [h["distance"] for h in want["results"]],
            rtol=1e-5,
            atol=1e-6,
        )


def _png(height, width):
    return tf.io.encode_png(np.full((height, width, 3), 128, np.uint8)).numpy()


def test_bad_uploads_get_a_4xx_json_error_and_the_server_goes_on(server, files, expected):
    good = queries(files)[1]
    rng = np.random.default_rng(1)
    jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)).numpy()
    noise_png = tf.io.encode_png(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).numpy()
    assert len(noise_png) > MAX_UPLOAD_BYTES
    cases = [
        ("a text file", {"content": b"just some text, not an image\n" * 20}, 400, "decodable"),
        ("a truncated JPEG", {"content": jpeg[: len(jpeg) // 2]}, 400, "not a decodable image"),
        ("a PNG of too many pixels", {"content": _png(600, 600)}, 413, "exceed --max-pixels"),
        ("a PNG of too many bytes", {"content": noise_png}, 413, "--max-upload-bytes"),
        ("no body", {"content": b""}, 400, "no image"),
        ("a multipart without image", {"files": {"photo": ("a.png", _png(8, 8))}}, 400, "image"),
        ("a bad k", {"content": good.read_bytes(), "params": {"k": "-3"}}, 400, "k must be"),
        ("a k of no ASCII", {"content": good.read_bytes(), "params": {"k": "²"}}, 400, "k must"),
    ]
    with httpx.Client(timeout=60) as client:
        for what, request, status, message in cases:
            response = client.post(f"{server}/search", **request)
            assert response.status_code == status, (what, response.text)
            body = response.json()
            assert set(body) == {"error"} and message in body["error"], (what, body)
            assert "\n" not in body["error"]
            after = post(client, server, good)  # and the next request still works
            assert after.status_code == 200 and after.json() == expected[str(good)], what
        assert client.get(f"{server}/healthz").json()["items"] == 12


def _raw_get(url, target):
    """The whole answer of a GET of `target` as sent (no client normalises its dots)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode("latin-1")


def test_path_traversal_and_unknown_items_are_refused(server, files):
    for target in (
        "/items/../../etc/passwd",
        "/items/../../etc/passwd/image",
        "/items/%2e%2e/%2e%2e/etc/passwd",
        "/items/..%2F..%2Fetc%2Fpasswd/image",
        "/items//etc/passwd/image",
        "/items/1/image/../../../../etc/passwd",
    ):
        answer = _raw_get(server, target)
        status = int(answer.split(" ", 2)[1])
        assert 400 <= status < 500, (target, answer[:200])
        assert "root:" not in answer and '{"error":' in answer, target
    with httpx.Client(timeout=30) as client:
        for path in (
            "/items/12/image",
            "/items/-1/image",
            "/items/99999999/similar",
            "/items/99999999999999999999999/image",
            "/nope",
        ):
            response = client.get(f"{server}{path}")
            assert response.status_code == 404 and "error" in response.json(), path
        method = client.get(f"{server}/search")
        assert method.status_code == 405 and "GET /search" in method.json()["error"]
        # a page elsewhere reaching 127.0.0.1 through DNS rebinding names its own host
        rebound = client.get(f"{server}/healthz", headers={"Host": "evil.example:80"})
        assert rebound.status_code == 400 and "evil.example" in rebound.json()["error"]


def test_items_similar_and_image(server, files):
    with httpx.Client(timeout=60) as client:
        record = post(client, server, queries(files)[0]).json()
        for hit in record["results"][:3]:
            image = client.get(f"{server}/items/{hit['id']}/image")
            assert image.status_code == 200
            assert image.content == open(hit["source"], "rb").read()
            want_type = "image/png" if hit["source"].endswith(".png") else "image/jpeg"
            assert image.headers["content-type"] == want_type
            similar = client.get(f"{server}/items/{hit['id']}/similar", params={"k": 4})
            assert similar.status_code == 200, similar.text
            # the item's file, re-encoded: what `gpq search --image` gives on that file
            assert similar.json() == gpq_search(files, hit["source"], k=4)
            assert hit["id"] in [h["id"] for h in similar.json()["results"]]


def test_the_index_reloads_without_dropping_requests(files, tmp_path):
    index = tmp_path / "live.npz"
    shutil.copy(files / "index.npz", index)
    log = tmp_path / "serve.log"
    proc, url = start_server(files / "model.keras", index, log, "--reload-interval", "0.2")
    path = queries(files)[2]
    try:
        stop, answers = threading.Event(), []

        def hammer():
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    answers.append(post(client, url, path))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for thread in threads:
            thread.start()
        while len(answers) < 6:
            time.sleep(0.05)
        replacement = tmp_path / "next.npz.tmp"
        shutil.copy(files / "more.npz", replacement)
        os.replace(replacement, index)  # as gpq index add/build replace a file: atomically
        deadline = time.time() + 60
        with httpx.Client(timeout=30) as client:
            while client.get(f"{url}/healthz").json()["items"] != 6:
                assert time.time() < deadline, open(log).read()
                time.sleep(0.1)
            count = len(answers)
            while len(answers) < count + 6:  # requests go on after the swap
                time.sleep(0.05)
            stop.set()
            for thread in threads:
                thread.join()
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers][:3]
            sources = {h["source"] for a in answers for h in a.json()["results"]}
            assert any("photos" in s for s in sources) and any("more" in s for s in sources)
            after = post(client, url, path)
            assert after.json() == gpq_search(files, path, index=str(index))
            # SIGHUP reloads even an unchanged file; a damaged file leaves the index served
            proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 30
            while open(log).read().count("reloaded") < 2:
                assert time.time() < deadline, open(log).read()
                time.sleep(0.1)
            damaged = tmp_path / "damaged.tmp"
            damaged.write_bytes(index.read_bytes()[:1000])
            os.replace(damaged, index)
            deadline = time.time() + 30
            while "kept the served index" not in open(log).read():
                assert time.time() < deadline, open(log).read()
                time.sleep(0.1)
            assert client.get(f"{url}/healthz").json()["items"] == 6
            assert post(client, url, path).status_code == 200
    finally:
        stopped = stop_server(proc, log, signal.SIGINT) if proc.poll() is None else None
    assert stopped == 0 and proc.returncode == 0  # Ctrl-C stops it cleanly too
    assert open(log).read().count("reloaded") == 2


def test_help_and_flag_errors_import_no_tensorflow():
    for argv, status in (
        (["serve", "--help"], 0),
        (["serve", "--model", "m.keras", "--index", "i.npz", "--port", "70000"], 2),
    ):
        code = (
            f"import sys\nfrom gpq_keras import cli\ntry:\n    cli.main({argv!r})\n"
            "except SystemExit as exc:\n    code = exc.code\n"
            "print('status', code, 'tensorflow' in sys.modules, 'starlette' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert f"status {status} False False" in result.stdout, result.stdout + result.stderr


def test_the_flags_defaults_are_the_apps():
    """cli/serve.py writes the upload bound out (parsing imports no Starlette): the same number."""
    from gpq_keras.cli import build_parser
    from gpq_keras.server import app

    args = build_parser().parse_args(["serve", "--model", "m.keras", "--index", "i.npz"])
    assert args.max_upload_bytes == app.MAX_UPLOAD_BYTES == 20 * 2**20


def test_a_taken_port_and_a_faiss_file_are_one_line_errors(files, capsys, tmp_path):
    argv = ["serve", "--model", str(files / "model.keras"), "--index", str(files / "index.npz")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main([*argv, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"gpq serve: error: cannot listen on 127.0.0.1:{port}"
    )
    faiss_file = tmp_path / "index.faiss"
    build = ["index", "build", "--model", str(files / "model.keras"), "--faiss"]
    assert cli.main([*build, "--images", str(files / "more"), "--output", str(faiss_file)]) == 0
    capsys.readouterr()
    assert cli.main([*argv[:3], "--index", str(faiss_file), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a faiss file; gpq serve needs a PQIndex .npz" in err[0], err
