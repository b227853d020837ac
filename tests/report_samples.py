"""A small hand-made graded batch for the report tests (no grading needed to build it)."""

from __future__ import annotations

import base64
import io

from tensorgrade.results import SubmissionResult, TestResult, write_results_json

# a value only a hidden test's message knows: it must never reach a student page
SECRET = "31.4159265-SECRET"
PUBLIC_EXPECTED = "expected 42.125"
XSS = "<script>alert('pwned')</script>"


def reconstruction_png() -> str:
    """A figure like Assignment 3's: the truth next to the student's reconstruction (base64)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    truth = ((x**2 + y**2) < 0.5).astype(float) + 0.5 * (abs(x - 0.2) < 0.15)
    recon = truth + 0.15 * np.random.default_rng(0).standard_normal(truth.shape)
    fig = Figure(figsize=(5, 2.5), dpi=80)
    FigureCanvasAgg(fig)
    for k, (img, title) in enumerate([(truth, "truth"), (recon, "your reconstruction")]):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.imshow(img, cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def batch() -> list[SubmissionResult]:
    """Five submissions: full marks, partial, a timeout with hostile text, a crash, ungradable."""
    A = "03_inverse_problems"

    def test(q: str, name: str, points: float, ok: int, failure: str, hidden: bool):
        msg = "passed" if ok else failure
        return TestResult(q, name, points * ok, points, bool(ok), msg, hidden)

    def tests(q1a, q1b, q2a, q2b, q10):
        accuracy = "the blur is not accurate enough: relative error 4.4e-01 at index (1,), "
        return [
            test("q1", "test_forward_shape", 2.0, q1a, PUBLIC_EXPECTED, False),
            test("q1", "test_forward_hidden", 3.0, q1b, f"{accuracy}allowed 1e-10 {SECRET}", True),
            test("q2", "test_tsvd_public", 1.0, q2a, "x has shape (3,), expected (4,)", False),
            test("q2", "test_tsvd_hidden", 4.0, q2b, f"x has shape (3,), expected {SECRET}", True),
            test("q10", "test_tikhonov", 5.0, q10, "tikhonov raised ValueError", True),
        ]

    ada = SubmissionResult(A, "ada", "trusted", "graded", tests(1, 1, 1, 1, 1))
    ada.execution_time, ada.timings = 3.5, {"startup": 0.5, "cells": 2.0, "tests": 1.0}
    ada.student_output = "[cell 3]\nloss 0.0100\n"
    ada.figures = [{"cell": 7, "png": reconstruction_png()}]

    bob = SubmissionResult(A, "bob", "trusted", "graded", tests(0, 0, 1, 0, 1))
    bob.execution_time, bob.timings = 5.25, {"startup": 0.5, "cells": 3.0, "tests": 1.75}
    bob.student_output = "[cell 3]\nloss 0.2\n"

    mal = SubmissionResult(A, "mal", "trusted", "graded", tests(1, 0, 1, 0, 0))
    mal.tests[1].output = "forward did not return within 30 s"
    mal.tests[0].output = f"passed {XSS}"
    mal.reason = "cell 4 did not finish within 60 s"
    mal.student_output = f"[cell 1]\n{XSS}\n<img src=x onerror=alert(1)>\n"
    mal.figures = [{"cell": 2, "png": 'AAAA" onerror="alert(1)'}]  # not a PNG: dropped
    mal.execution_time, mal.timings = 95.0, {"startup": 0.5, "cells": 60.5, "tests": 34.0}

    cat = SubmissionResult(A, "cat", "trusted", "graded", tests(1, 1, 0, 0, 0))
    cat.reason = "cell 2 ended the process (the process was killed by signal SIGKILL)"
    cat.tests[3].output = "not run: the sandbox failed (the process exited with code 1)"
    cat.execution_time, cat.timings = 12.0, {"startup": 0.5, "cells": 9.0, "tests": 2.5}

    eve = SubmissionResult(A, "eve", "trusted", "ungradable", tests(0, 0, 0, 0, 0))
    eve.reason = "eve.ipynb is truncated or not valid notebook JSON"
    for t in eve.tests:
        t.output = eve.reason
    eve.execution_time = 0.01
    return [ada, bob, mal, cat, eve]


def write_batch(folder) -> list[SubmissionResult]:
    """The batch as `tensorgrade grade` would leave it: ``folder/<submission>/results.json``."""
    results = batch()
    for r in results:
        write_results_json(r, folder / r.submission / "results.json")
    return results
