"""Serving under load: the requests `make serve-bench` sends to TorchServe, and what it measures.

As TorchServe's own benchmark (``benchmarks/benchmark-ab.py``, Apache Bench) but from Python: a pool
of ``concurrency`` threads, each with its own ``requests.Session`` (keep-alive), sends the bodies of
:func:`schedule` and times each request from send to the answer's last byte. Every answer is
checked: a good image must get 200 and the model's format, a bad body its 4xx. Bad bodies (a share
``BAD=f``): not an image, a truncated JPEG, an empty body, a PNG whose header says more pixels than
the handler's ``max_image_pixels`` (400 from the handler); a body over the server's
``max_request_size`` (413 from TorchServe's frontend).
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from training.meter import percentile

#: Where the good images come from, per task: the evaluation split of the embedded datasets.
IMAGES = {
    "detection": ("data/bccd", "ImageSets/Main/test.txt", "JPEGImages/{}.jpg"),
    "classification": ("data/bccd_cells/test", None, None),
}


@dataclass(frozen=True)
class Body:
    """One request body.

    Attributes:
        data: the bytes sent.
        content_type: the ``Content-Type`` header.
        kind: ``good``, or which bad body (``not an image``, ``truncated``, ``empty``, ``too many
            pixels``, ``too large``).
        expected: the HTTP status it must get.
    """

    data: bytes
    content_type: str
    kind: str
    expected: int


@dataclass(frozen=True)
class Sample:
    """One request's outcome: ``status`` (0: none), ``latency_s`` (send to last byte), ``wrong``."""

    kind: str
    expected: int
    status: int
    latency_s: float
    wrong: str


def good_bodies(task: str, root: Path = Path(".")) -> list[Body]:
    """The evaluation split's images of the embedded dataset for ``task`` (sorted).

    Raises:
        FileNotFoundError: the images are not there (classification: ``make cells`` makes them).
    """
    base, split_file, pattern = IMAGES[task]
    folder = root / base
    if split_file:
        ids = (folder / split_file).read_text().split()
        paths = [folder / pattern.format(i) for i in ids]
    else:
        paths = sorted(folder.rglob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no images in {folder} (make cells makes the cell crops)")
    return [Body(p.read_bytes(), "image/jpeg", "good", 200) for p in paths]


def bad_bodies(jpeg: bytes, max_image_pixels: int, max_request_size: int) -> list[Body]:
    """One of each bad body (see the module doc), from a good ``jpeg``."""
    from PIL import Image

    side = math.isqrt(max_image_pixels) + 1  # a 1-bit PNG: its header says too many pixels
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, "PNG")
    return [
        Body(b"this is not an image\n" * 10, "application/octet-stream", "not an image", 400),
        Body(jpeg[: len(jpeg) // 3], "image/jpeg", "truncated", 400),
        Body(b"", "image/jpeg", "empty", 400),
        Body(buffer.getvalue(), "image/png", "too many pixels", 400),
        Body(b"\xff" * (max_request_size + 1), "image/jpeg", "too large", 413),
    ]


def schedule(goods: list[Body], bads: list[Body], count: int, bad_share: float) -> list[Body]:
    """``count`` bodies, ``floor(count f)`` of them bad, evenly spread (``f``: ``bad_share``).

    Request ``i`` is bad when ``floor((i + 1) f) > floor(i f)``; the bad kinds and the good images
    each come in turn.
    """
    out, good, bad = [], 0, 0
    for i in range(count):
        if bads and math.floor((i + 1) * bad_share) > math.floor(i * bad_share):
            out.append(bads[bad % len(bads)])
            bad += 1
        else:
            out.append(goods[good % len(goods)])
            good += 1
    return out


def answer_problem(task: str, body: Body, status: int, text: str) -> str:
    """Why an answer is wrong, or ``""``: not the expected status, or a 200 not in the format.

    Formats: detection, a list of ``{label: [x1, y1, x2, y2], "score": s}``; classification, a dict
    of class probabilities summing to at most 1.
    """
    if status != body.expected:
        return f"{body.kind}: HTTP {status}, expected {body.expected}"
    if status != 200:
        return ""
    try:
        answer = json.loads(text)
    except ValueError:
        return "good: the 200 answer is not JSON"
    if task == "detection":
        ok = isinstance(answer, list) and all(
            isinstance(d, dict) and "score" in d and len(d) == 2 for d in answer
        )
    else:
        ok = (
            isinstance(answer, dict)
            and answer
            and all(isinstance(v, int | float) for v in answer.values())
            and sum(answer.values()) <= 1.001
        )
    return "" if ok else f"good: the answer is not the {task} format: {text[:80]}"


def send_all(task: str, url: str, bodies: list[Body], concurrency: int, timeout_s: float = 120):
    """Send ``bodies`` with ``concurrency`` threads; the samples in order and the wall time.

    Returns:
        ``(samples, wall seconds from the first send to the last answer)``.
    """
    local = threading.local()

    def one(body: Body) -> Sample:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.trust_env = False  # loopback: no proxies
        start = time.perf_counter()
        try:
            response = session.post(
                url, data=body.data, headers={"Content-Type": body.content_type}, timeout=timeout_s
            )
            status, text = response.status_code, response.text
        except requests.RequestException as exc:
            status, text = 0, str(exc)
        latency = time.perf_counter() - start
        problem = answer_problem(task, body, status, text)
        return Sample(body.kind, body.expected, status, latency, problem)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        samples = list(pool.map(one, bodies))
    return samples, time.perf_counter() - start


def summarize(samples: list[Sample], wall_s: float) -> dict:
    """Requests/s, good images/s, latency p50/p90/p99/max (ms), statuses, wrong answers.

    Statuses as ``"200:900 400:80 413:20"``; latency over all requests; the first wrong answer too.
    """
    latencies = [s.latency_s * 1e3 for s in samples]
    statuses: dict[int, int] = {}
    for s in samples:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    wrong = [s.wrong for s in samples if s.wrong]
    good = sum(1 for s in samples if s.kind == "good" and s.status == 200)
    return {
        "requests": len(samples),
        "wall_s": wall_s,
        "requests_per_s": len(samples) / wall_s if wall_s > 0 else math.nan,
        "images_per_s": good / wall_s if wall_s > 0 else math.nan,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p90_ms": percentile(latencies, 90),
        "latency_p99_ms": percentile(latencies, 99),
        "latency_max_ms": max(latencies, default=math.nan),
        "statuses": " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())),
        "wrong": len(wrong),
        "first_wrong": wrong[0] if wrong else "",
    }


_METRIC = re.compile(r"^(\w+)\{([^}]*)\}\s+([-+0-9.eE]+|NaN)$")


def server_metrics(metrics_url: str) -> dict[str, dict[str, float]]:
    """TorchServe's Prometheus metrics per model.

    ``requests`` (``ts_inference_requests_total``), ``inference_us`` and ``queue_us`` (cumulative
    ``ts_inference_latency_microseconds`` and ``ts_queue_latency_microseconds``), and the last
    ``HandlerTime`` / ``PredictionTime`` (ms).
    """
    names = {
        "ts_inference_requests_total": "requests",
        "ts_inference_latency_microseconds": "inference_us",
        "ts_queue_latency_microseconds": "queue_us",
        "HandlerTime": "handler_ms",
        "PredictionTime": "prediction_ms",
    }
    found: dict[str, dict[str, float]] = {}
    text = requests.get(f"{metrics_url}/metrics", timeout=30).text
    for line in text.splitlines():
        match = _METRIC.match(line.strip())
        if not match or match.group(1) not in names:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        model = labels.get("model_name") or labels.get("ModelName")
        if model:
            found.setdefault(model, {})[names[match.group(1)]] = float(match.group(3))
    return found


def worker_ids(management_url: str, model: str) -> list[str]:
    """The ids and start times of the model's workers (a restarted worker changes them)."""
    info = requests.get(f"{management_url}/models/{model}", timeout=30).json()
    return sorted(f"{w.get('id')}@{w.get('startTime')}" for w in info[0].get("workers", []))


class InProcess:
    """The archived model run in this process on ``images``, prepared as the handler does.

    Decoded, and for classification resized to the model's ``image_size``; torch's default thread
    count (as TorchServe's Python workers; the ``threads`` column says how many); the model built
    from the archive's own files as ``make predict`` builds it. Built once and timed as often as
    needed (:meth:`images_per_s`), right after each served run.
    """

    def __init__(self, archive: Path, task: str, images: list[bytes]):
        import tempfile
        import zipfile

        import torch
        from torchvision.io import decode_jpeg
        from torchvision.transforms.v2.functional import resize, to_dtype

        from training.predict import load_trained

        with tempfile.TemporaryDirectory() as folder:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(folder)
            self.model, _, spec = load_trained(Path(folder))
        self.task = task
        self.tensors = []
        for data in images:
            image = to_dtype(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)),
                             torch.float32, scale=True)  # fmt: skip
            if task == "classification":
                size = int(spec["image_size"])
                image = resize(image, [size, size], antialias=True).clamp_(0, 1)
            self.tensors.append(image)

    def images_per_s(self, batch: int, rounds: int = 1) -> float:
        """Images/s over ``rounds`` passes of the images in batches of ``batch``."""
        import torch

        start, done = time.perf_counter(), 0
        with torch.inference_mode():
            for _ in range(rounds):
                for i in range(0, len(self.tensors), batch):
                    chunk = self.tensors[i : i + batch]
                    if self.task == "classification":
                        self.model(torch.stack(chunk))
                    else:
                        self.model(chunk)
                    done += len(chunk)
        return done / (time.perf_counter() - start)


def in_process(archive: Path, task: str, images: list[bytes], batch: int, rounds: int = 1) -> float:
    """Images/s of the archived model run in this process (:class:`InProcess`), once."""
    return InProcess(archive, task, images).images_per_s(batch, rounds)
