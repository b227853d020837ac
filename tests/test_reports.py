"""HTML feedback reports: student pages (content, hidden-test policy, escaping), summary, CLI."""

from __future__ import annotations

import base64
import json
import re
import struct

import pytest
from report_samples import PUBLIC_EXPECTED, SECRET, XSS, batch, write_batch

from tensorgrade.cli import main
from tensorgrade.reports import page_names, student_report, summary_report, write_reports
from tensorgrade.reports.html import PNG_SIGNATURE, png_data_uri
from tensorgrade.reports.incidents import incidents
from tensorgrade.reports.student import OTHER_FAILURE, failure_kind
from tensorgrade.reports.summary import pass_rates, slowest
from tensorgrade.results import SubmissionResult, TestResult


@pytest.fixture(scope="module")
def results() -> dict[str, SubmissionResult]:
    return {r.submission: r for r in batch()}


def _text(page: str) -> str:
    """The page's visible text, roughly: tags dropped (entities kept)."""
    return re.sub(r"<[^>]+>", " ", page)


# --- the student page -------------------------------------------------------------------------


def test_student_page_has_scores_per_question_in_natural_order(results):
    page = student_report(results["bob"])
    assert "6 / 15" in page  # the total
    rows = re.findall(r'<a href="#q-(\w+)">', page)
    assert rows == ["q1", "q2", "q10"]  # q10 after q2, as in grades.csv
    q = re.search(r"<table class=\"questions.*?</table>", page, re.S).group(0)
    assert re.search(r"q1</a></td><td class=\"num\">0 / 5", q)
    assert re.search(r"q2</a></td><td class=\"num\">1 / 5", q)
    assert re.search(r"q10</a></td><td class=\"num\">5 / 5", q)
    assert 'aria-label="1 of 5 points"' in q and "width:20.0%" in q  # the score bar
    assert "1 of 2" in q  # tests passed in q2


def test_pass_and_fail_read_without_colour(results):
    page = student_report(results["bob"])
    assert page.count('class="mark pass">&#10003; passed</span>') == 2  # a symbol and a word
    assert page.count('class="mark fail">&#10007; failed</span>') == 3


def test_student_page_embeds_figures_and_printed_output(results):
    ada = results["ada"]
    page = student_report(ada)
    png = ada.figures[0]["png"]
    assert f'src="data:image/png;base64,{png}"' in page
    assert "Drawn by cell 7" in page
    assert "loss 0.0100" in page
    assert "Your figures" not in student_report(results["bob"])  # no empty sections


def test_public_messages_are_shown_hidden_failures_only_as_a_label(results):
    page = student_report(results["bob"])
    assert PUBLIC_EXPECTED in page  # public tests teach: their message is shown as is
    assert "x has shape (3,), expected (4,)" not in page  # (bob passed that public test)
    assert SECRET not in page
    assert "relative error 4.4e-01" not in page  # no part of a hidden message
    text = _text(page)
    assert "not accurate enough" in text and "wrong shape" in text
    assert "test_forward_hidden" in page and "test_tsvd_hidden" in page  # names are shown


@pytest.mark.parametrize("name", ["ada", "bob", "mal", "cat", "eve"])
@pytest.mark.parametrize("before", [False, True])
def test_no_student_page_leaks_a_hidden_expected_value(results, name, before):
    page = student_report(results[name], before_publication=before)
    assert SECRET not in page
    assert "31.41" not in page


@pytest.mark.parametrize(
    "message, label",
    [
        ("the blur is not accurate enough: relative error 4.4e-01 at index (1,)", "accurate"),
        ("x has shape (3,), expected (4,)", "wrong shape"),
        ("x has dtype torch.float32, expected torch.float64", "wrong dtype"),
        ("x is on device 'cpu', expected 'cuda' (keep the device of the inputs)", "wrong device"),
        ("x contains 3 NaN or infinite value(s)", "NaN"),
        ("solve raised ValueError", "exception"),
        ("solve did not return within 30 s", "timed out"),
        ("not run: the submission ran out of time", "timed out"),
        ("the process ended while running solve: killed by signal SIGSEGV", "crashed"),
        ("not run: your code ended the sandbox 9 times", "crashed"),
        ("x is None: did you forget to `return` it?", "nothing was returned"),
        ("x should be a torch.Tensor, got list", "wrong type"),
        (f"assert 2 == {SECRET}", OTHER_FAILURE),
    ],
)
def test_failure_kind_is_a_fixed_label(message, label):
    kind = failure_kind(message)
    assert label in kind
    assert not set(kind.split()) & {"2", "30", "SIGSEGV", SECRET, "x", "solve"}


def test_before_publication_leaves_hidden_tests_out(results):
    full = student_report(results["bob"])
    page = student_report(results["bob"], before_publication=True)
    for name in ("test_forward_hidden", "test_tsvd_hidden", "test_tikhonov"):
        assert name in full and name not in page
    assert "1 / 3" in page  # public tests only: 0/2 + 1/1
    assert 'href="#q-q10"' not in page  # q10 has hidden tests only
    assert "3 hidden test(s) will appear here" in page
    assert "hidden test(s) will appear" not in full


def test_student_strings_are_escaped(results):
    mal = results["mal"]
    page = student_report(mal)
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page  # output and message
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "1 figure(s) could not be shown" in page  # the fake PNG was not pasted in

    evil = SubmissionResult(
        f"a1{XSS}", f'x"><b>{XSS}', "trusted", "graded", reason=XSS, student_output="ok"
    )
    evil.tests = [TestResult(f"q{XSS}", f"t{XSS}", 1, 1, True, "passed", False)]
    evil.figures = [{"cell": XSS, "png": base64.b64encode(_png(4, 3)).decode()}]
    page = student_report(evil)
    assert "<script" not in page.lower()
    assert '"><b>' not in page
    assert "Drawn by a cell of your notebook" in page  # a non-numeric cell number


def test_pages_allow_no_scripts_and_no_network(results):
    for page in (student_report(results["ada"]), summary_report(list(results.values()))):
        assert "Content-Security-Policy" in page and "default-src 'none'" in page
        assert not re.search(r"(src|href)=\"(https?:)?//", page)
        assert all(
            s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]*)"', page)
        )
        assert "<script" not in page.lower() and "<link" not in page.lower()


def test_ungradable_submission_says_why(results):
    page = student_report(results["eve"])
    assert "could not be graded" in page and "truncated or not valid notebook JSON" in page
    assert "0 / 15" in page


def _png(width: int, height: int) -> bytes:
    """The start of a PNG declaring ``width`` x ``height`` (all a size check reads)."""
    ihdr = struct.pack(">II", width, height) + b"\x08\x06\x00\x00\x00"
    return PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4 + b"rest"


def test_png_data_uri_refuses_images_declaring_huge_sizes():
    assert png_data_uri(_png(640, 480)) is not None
    assert png_data_uri(_png(40000, 40000)) is None  # 1.6 gigapixels: gigabytes in a browser
    assert png_data_uri(_png(5000, 10)) is None and png_data_uri(_png(0, 10)) is None
    assert png_data_uri(PNG_SIGNATURE + b"\x00\x01rest") is None  # no IHDR first


def test_png_data_uri_accepts_only_png_and_re_encodes():
    raw = _png(64, 48)
    b64 = base64.b64encode(raw).decode()
    wrapped = "\n".join(b64[i : i + 4] for i in range(0, len(b64), 4))  # as Jupyter stores it
    assert png_data_uri(wrapped) == f"data:image/png;base64,{b64}"
    assert png_data_uri(raw) == f"data:image/png;base64,{b64}"
    assert png_data_uri(base64.b64encode(b"GIF89a...").decode()) is None
    assert png_data_uri(b64 + '" onerror="alert(1)') is None
    assert png_data_uri(None) is None and png_data_uri(12) is None


# --- the summary --------------------------------------------------------------------------------


def test_pass_rates_of_a_hand_made_batch(results):
    rates = pass_rates(list(results.values()))
    got = [(x.question, x.name, x.passed, x.total) for x in rates]
    assert got == [  # lowest first; ties in question order; eve (ungradable) not counted
        ("q2", "test_tsvd_hidden", 1, 4),
        ("q1", "test_forward_hidden", 2, 4),
        ("q10", "test_tikhonov", 2, 4),
        ("q1", "test_forward_shape", 3, 4),
        ("q2", "test_tsvd_public", 3, 4),
    ]
    hardest = rates[0]
    assert hardest.hidden and hardest.rate == 0.25
    assert hardest.common_failure == f"x has shape (3,), expected {SECRET}"
    assert hardest.failures == 2  # bob and mal; cat's test was not run


def test_incidents_tell_timeouts_from_crashes(results):
    mal, cat = incidents(results["mal"]), incidents(results["cat"])
    assert mal.timed_out == [
        "cell 4 did not finish within 60 s",
        "forward did not return within 30 s",
    ]
    assert mal.crashed == []
    assert cat.timed_out == [] and len(cat.crashed) == 2
    assert incidents(results["ada"]).crashed == incidents(results["ada"]).timed_out == []
    r = SubmissionResult("a", "s", "trusted", "graded", reason="x")
    r.tests = [
        TestResult(
            "q1", "t", 0, 1, False, "not run: the sandbox failed (no answer within 30 s)", True
        )
    ]
    r.tests.append(
        TestResult(
            "q1", "u", 0, 1, False, "not run: the sandbox failed (no answer within 30 s)", True
        )
    )
    assert incidents(r).timed_out == ["not run: the sandbox failed (no answer within 30 s)"]
    assert incidents(r).crashed == []


def test_slowest_first():
    rs = batch()
    assert [r.submission for r in slowest(rs)] == ["mal", "cat", "bob", "ada", "eve"]
    assert [r.submission for r in slowest(rs, 2)] == ["mal", "cat"]


def _section(page: str, id_: str) -> str:
    return re.search(rf'<section id="{id_}">.*?</section>', page, re.S).group(0)


def test_summary_lists_problems_and_links_every_page(results):
    rs = list(results.values())
    page = summary_report(rs, page_names(rs))
    assert "Ungradable (1)" in page and "eve.ipynb is truncated" in _section(page, "ungradable")
    timed, crashed = _section(page, "timed_out"), _section(page, "crashed")
    assert "Timed out (1)" in timed and ">mal</a>" in timed and ">cat<" not in timed
    assert "Crashed (1)" in crashed and ">cat</a>" in crashed and "SIGKILL" in crashed
    slow = _section(page, "slowest")
    assert [m for m in re.findall(r">(\w+)</a>", slow)] == ["mal", "cat", "bob", "ada", "eve"]
    for name in results:
        assert f'href="{name}.html"' in page
    rates = re.search(r'<table class="rates.*?</table>', page, re.S).group(0)
    assert re.findall(r"<td>(test_\w+)</td>", rates)[0] == "test_tsvd_hidden"
    assert "1 of 4" in rates and "25%" in rates
    assert "<td>0 / 15" not in page and "0 / 15" in page  # eve listed with her score


def test_summary_has_a_histogram_png(results):
    page = summary_report(list(results.values()))
    uri = re.search(r'<img class="histogram" src="data:image/png;base64,([^"]+)"', page).group(1)
    raw = base64.b64decode(uri)
    assert raw.startswith(PNG_SIGNATURE)
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    assert width >= 400 and height >= 200
    assert "Histogram of 5 scores out of 15" in page
    assert re.search(r"<th>mean</th><td class=\"num\">5.8</td>", page)  # (15+6+3+5+0)/5


def test_summary_of_several_assignments_has_a_section_each():
    rs = batch()
    rs[0].assignment = "01_tensors"
    page = summary_report(rs)
    assert "<h2>01_tensors</h2>" in page and "<h2>03_inverse_problems</h2>" in page
    assert page.count('<img class="histogram"') == 2


# --- files and the command line -------------------------------------------------------------------


def test_page_names_are_safe_and_unique():
    rs = batch()
    rs[0].submission, rs[1].submission, rs[2].submission = "index", "../../etc/x", "a b"
    rs[3].submission = "a_b"
    names = page_names(rs)
    assert names["index"] != "index.html" and names["index"].endswith(".html")
    assert "/" not in names["../../etc/x"]
    assert len(set(names.values())) == len(rs)


def _cli(argv: list[str]) -> int:
    return main(argv)


def test_report_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "RESULTS" in out and "--before-publication" in out and "index.html" in out


def test_report_writes_every_page_and_the_summary(tmp_path, capsys):
    write_batch(tmp_path / "results")
    out = tmp_path / "site"
    assert _cli(["report", str(tmp_path / "results"), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "ada.html", "bob.html", "cat.html", "eve.html", "index.html", "mal.html"
    ]  # fmt: skip
    captured = capsys.readouterr()
    assert "reports" in captured.err and "5/5" in captured.err  # the progress bar
    assert "wrote 5 student page(s)" in captured.out
    assert "test_tsvd_hidden" in (out / "bob.html").read_text()
    assert (out / "bob.html").stat().st_mode & 0o777 == 0o644


def test_report_default_output_and_before_publication(tmp_path, capsys):
    write_batch(tmp_path)
    assert _cli(["report", str(tmp_path), "--before-publication", "-q"]) == 0
    bob = (tmp_path / "reports" / "bob.html").read_text()
    assert "test_tsvd_hidden" not in bob and "1 / 3" in bob
    assert "hidden tests left out" in capsys.readouterr().out
    # the summary stays complete for the instructor
    assert "test_tsvd_hidden" in (tmp_path / "reports" / "index.html").read_text()


def test_write_reports_reports_progress(tmp_path):
    seen = []
    written = write_reports(batch(), tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(k, 5) for k in range(1, 6)]
    assert written[-1].name == "index.html" and len(written) == 6


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "out_is_file"])
def test_report_bad_input_is_error_exit_2(tmp_path, capsys, case):
    results = tmp_path / "results"
    argv = ["report", str(results), "-q"]
    if case == "empty":
        results.mkdir()
    elif case in ("corrupt", "out_is_file"):
        write_batch(results)
    if case == "corrupt":
        (results / "bob" / "results.json").write_text(json.dumps({"tests": []}))
    if case == "out_is_file":
        (tmp_path / "file").write_text("x")
        argv += ["-o", str(tmp_path / "file")]
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    if case == "corrupt":
        assert "bob/results.json" in err
    assert not (results / "reports").exists()
