"""`tensorgrade lms canvas push` against a fake Canvas on 127.0.0.1 (tests/fake_canvas.py)."""

from __future__ import annotations

import re
import shutil
import time
from email.utils import formatdate

import pytest
from fake_canvas import FakeCanvas  # tests/ is on sys.path (pytest's rootdir conftest)

import tensorgrade.lms.canvas as canvas_mod
from tensorgrade.cli import main
from tensorgrade.lms.canvas import CanvasPushError, CanvasSession, RetryPolicy, normalise_url
from tensorgrade.results import SubmissionResult, TestResult, write_results_json

COURSE, ASSIGNMENT = 1234, 5678


def _t(q, name, score, max_score, hidden=False, output=""):
    return TestResult(q, name, score, max_score, score >= max_score, output, hidden)


def _result(sub, q1, q2):
    tests = [
        _t("q1", "test_shape", q1, 2),
        _t("q1", "test_hidden_values", 0, 1, hidden=True, output="expected 42.0"),
        _t("q2", "test_grad", q2, 3),
    ]
    return SubmissionResult("01_tensors", sub, "trusted", "graded", tests)


def _ungradable(sub, reason):
    return SubmissionResult("01_tensors", sub, "trusted", "ungradable", [], reason)


ROSTER = (
    "submission,name,canvas_user_id,sis_user_id,login_id\n"
    "alice,Alice Doe,101,,\n"
    "bob,Bob Roberts,,S2,\n"  # found through sis_user_id:S2
    "erin,Erin Eng,,,erin@uni\n"  # found through sis_login_id:erin@uni
    "carol,Carol Chu,103,,\n"  # ungradable
)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CANVAS_API_URL", raising=False)
    sleeps: list[float] = []
    monkeypatch.setattr(canvas_mod, "_sleep", sleeps.append)
    return sleeps


@pytest.fixture
def sleeps(_env):
    return _env


@pytest.fixture
def fake(monkeypatch):
    f = FakeCanvas()
    f.add_course(COURSE)
    f.add_assignment(COURSE, ASSIGNMENT, "Tensors", 5)
    f.add_student(COURSE, 101, "Alice Doe")
    f.add_student(COURSE, 102, "Bob Roberts", sis_user_id="S2")
    f.add_student(COURSE, 103, "Carol Chu")
    f.add_student(COURSE, 105, "Erin Eng", login_id="erin@uni")
    monkeypatch.setenv("CANVAS_API_TOKEN", f.token)
    with f:
        yield f


@pytest.fixture
def folder(tmp_path):
    for r in [
        _result("alice", 2, 1.5),
        _result("bob", 2, 3),
        _result("erin", 0, 0),
        _ungradable("carol", "not a notebook: invalid JSON"),
    ]:
        write_results_json(r, tmp_path / "results" / r.submission / "results.json")
    (tmp_path / "roster.csv").write_text(ROSTER)
    return tmp_path


def push(fake, folder, *extra, roster="roster.csv"):
    with_roster = ["--roster", str(folder / roster)] if roster else []
    return main(
        ["lms", "canvas", "push", str(folder / "results"), "--course", str(COURSE),
         "--assignment", str(ASSIGNMENT), *with_roster, "--url", fake.url, *extra]
    )  # fmt: skip


def test_first_push_sets_grades_and_comments(fake, folder, capsys):
    assert push(fake, folder) == 0
    out, err = capsys.readouterr()
    assert "3 updated, 0 already up to date, 0 failed" in out
    assert "[1/3] alice (Alice Doe): updated (score - -> 3.5, add feedback comment)" in err
    assert "carol (Carol Chu): ungradable, left alone (not a notebook: invalid JSON)" in err
    assert fake.state(COURSE, ASSIGNMENT, 101)[0] == 3.5
    assert fake.state(COURSE, ASSIGNMENT, 102)[0] == 5.0
    assert fake.state(COURSE, ASSIGNMENT, 105)[0] == 0.0
    assert fake.state(COURSE, ASSIGNMENT, 103) == (None, [])  # ungradable: left alone
    (comment,) = fake.state(COURSE, ASSIGNMENT, 101)[1]
    assert "tensorgrade, 01_tensors: 3.5 / 6" in comment
    assert "q1: 2 / 3" in comment and "q2: 1.5 / 3" in comment and "q2: test_grad" in comment
    assert "test_hidden_values" not in comment and "42" not in comment
    assert re.search(r"\n\[tensorgrade 01_tensors [0-9a-f]{12}\]$", comment)
    # the Canvas assignment is out of 5, the results out of 6: said, not silently rescaled
    assert "5 points possible, the results are out of 6" in err
    # one GET per user lookup by SIS id, then a GET and a PUT per student
    assert fake.puts == 3
    assert f"/api/v1/courses/{COURSE}/users/sis_user_id:S2" in fake.requests("GET")
    assert f"/api/v1/courses/{COURSE}/users/sis_login_id:erin%40uni" in fake.requests("GET")


def test_second_push_writes_nothing(fake, folder, capsys):
    assert push(fake, folder) == 0
    puts = fake.puts
    assert push(fake, folder) == 0
    assert fake.puts == puts == 3
    assert "0 updated, 3 already up to date, 0 failed" in capsys.readouterr().out
    assert len(fake.state(COURSE, ASSIGNMENT, 101)[1]) == 1


def test_regrade_posts_new_score_and_comment_once(fake, folder, capsys):
    assert push(fake, folder) == 0
    write_results_json(_result("alice", 2, 3), folder / "results" / "alice" / "results.json")
    assert push(fake, folder) == 0
    assert "1 updated, 2 already up to date" in capsys.readouterr().out
    score, comments = fake.state(COURSE, ASSIGNMENT, 101)
    assert score == 5.0 and len(comments) == 2 and "5 / 6" in comments[1]
    puts = fake.puts
    assert push(fake, folder) == 0 and fake.puts == puts


def test_dry_run_writes_nothing_and_shows_the_plan(fake, folder, capsys):
    fake.set_score(COURSE, ASSIGNMENT, 102, 4.0)  # changed by hand in Canvas
    assert push(fake, folder, "--dry-run") == 0
    out = capsys.readouterr().out
    assert fake.puts == 0 and fake.requests("PUT") == []
    assert fake.state(COURSE, ASSIGNMENT, 101) == (None, [])
    assert "alice (Alice Doe) [user 101]: would update: score - -> 3.5, add feedback comment" in out
    assert "bob (Bob Roberts) [sis_user_id S2]: would update: score 4 -> 5" in out
    assert "dry run, nothing written: 3 student(s) would change, 0 already up to date" in out


@pytest.mark.parametrize("status", [429, 403])
def test_throttling_is_retried_honouring_retry_after(fake, folder, sleeps, capsys, status):
    fake.fail(status, times=2, retry_after="7")
    assert push(fake, folder) == 0
    assert sleeps == [7.0, 7.0]
    assert fake.puts == 3 and fake.state(COURSE, ASSIGNMENT, 101)[0] == 3.5


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_then_succeed(fake, folder, sleeps, status):
    fake.fail(status, times=3)
    assert push(fake, folder) == 0
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2]  # exponential backoff
    assert all(fake.state(COURSE, ASSIGNMENT, u)[0] is not None for u in (101, 102, 105))


def test_write_applied_before_a_5xx_is_not_repeated(fake, folder):
    fake.fail(503, times=1, method="PUT", apply_first=True)
    assert push(fake, folder) == 0
    assert len(fake.state(COURSE, ASSIGNMENT, 101)[1]) == 1  # re-read, saw it, no second PUT


def test_persistent_5xx_stops_with_a_clear_error_and_says_who_is_done(fake, folder, capsys):
    (folder / "alice_only.csv").write_text(ROSTER.splitlines()[0] + "\n" + ROSTER.splitlines()[1])
    assert push(fake, folder, roster="alice_only.csv") == 1  # bob, carol, erin: no roster row
    capsys.readouterr()
    fake.fail(503, times=1000, method="PUT")
    assert push(fake, folder, "--retries", "2") == 1
    out, err = capsys.readouterr()
    assert "error: stopped: Canvas kept failing on the submission of bob (Bob Roberts): " in err
    assert "server error 503, 3 tries" in err
    assert "done before stopping (1): alice (Alice Doe)" in out
    assert "not done (2): bob (Bob Roberts), erin (Erin Eng)" in out
    assert fake.state(COURSE, ASSIGNMENT, 102) == (None, [])


def test_bad_token_gives_a_clear_message_and_never_prints_it(fake, folder, monkeypatch, capsys):
    monkeypatch.setenv("CANVAS_API_TOKEN", "wrong-token-9f8e7d")
    assert push(fake, folder) == 2
    out, err = capsys.readouterr()
    assert "error: Canvas rejected the API token (401: Invalid access token.)" in err
    assert "CANVAS_API_TOKEN" in err
    assert "wrong-token-9f8e7d" not in out + err and fake.token not in out + err
    assert fake.puts == 0


def test_token_file_is_used(fake, folder, monkeypatch, tmp_path):
    monkeypatch.delenv("CANVAS_API_TOKEN")
    (tmp_path / "token").write_text(fake.token + "\n")
    assert push(fake, folder, "--token-file", str(tmp_path / "token")) == 0
    assert fake.puts == 3


@pytest.mark.parametrize(
    "course, assignment, message",
    [
        (999, ASSIGNMENT, "course 999 not found (404): check --course"),
        (COURSE, 999, f"assignment 999 not found in course {COURSE} (404): check --assignment"),
    ],
)
def test_unknown_course_or_assignment(fake, folder, capsys, course, assignment, message):
    rc = main(
        ["lms", "canvas", "push", str(folder / "results"), "--course", str(course),
         "--assignment", str(assignment), "--roster", str(folder / "roster.csv"), "--url",
         fake.url]
    )  # fmt: skip
    assert rc == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert fake.puts == 0


def test_unmapped_and_unknown_students_are_reported(fake, folder, capsys):
    write_results_json(_result("zed", 1, 1), folder / "results" / "zed" / "results.json")
    (folder / "roster.csv").write_text(
        ROSTER + "dave,Dave Diaz,104,,\nfrank,Frank Fu,,,\nghost,Ghost,999,,\n"
    )
    for sub in ("frank", "ghost"):
        write_results_json(_result(sub, 2, 3), folder / "results" / sub / "results.json")
    assert push(fake, folder) == 1
    out, err = capsys.readouterr()
    assert "1 submission(s) have no roster row or student identity and are not pushed: zed" in err
    assert "1 roster row(s) have no result (nothing pushed for them): dave (Dave Diaz)" in err
    assert "not pushed: frank (Frank Fu): no canvas_user_id, sis_user_id or login_id" in err
    assert "FAILED ghost (Ghost) [user 999]: user 999 not found in course 1234 (404)" in out
    assert "3 updated, 0 already up to date, 1 failed, 2 not pushed" in out
    assert fake.state(COURSE, ASSIGNMENT, 101)[0] == 3.5  # the others were still pushed


def test_ungradable_zero_posts_zero_with_the_reason(fake, folder):
    assert push(fake, folder, "--ungradable", "zero") == 0
    score, (comment,) = fake.state(COURSE, ASSIGNMENT, 103)
    assert score == 0.0 and "Status: ungradable: not a notebook: invalid JSON" in comment


@pytest.mark.parametrize(
    "args, env, message",
    [
        ([], {"CANVAS_API_TOKEN": ""}, "no Canvas API token: set CANVAS_API_TOKEN"),
        (["--token-file", "/nonexistent/token"], {}, "cannot read --token-file"),
        (["--url", "http://canvas.example.edu"], {}, "refusing http:// for canvas.example.edu"),
        (["--url", "ftp://x"], {}, "not a Canvas URL"),
        (["--retries", "-1"], {}, "--retries must be 0 or more"),
    ],
)
def test_bad_input_exits_2(fake, folder, monkeypatch, capsys, args, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert push(fake, folder, *args) == 2
    assert f"error: {message}" in capsys.readouterr().err


def test_missing_url_and_required_options(folder, capsys):
    base = [
        "lms",
        "canvas",
        "push",
        str(folder / "results"),
        "--roster",
        str(folder / "roster.csv"),
    ]
    assert main([*base, "--course", "1", "--assignment", "2"]) == 2
    assert "error: no Canvas URL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--course", "abc", "--assignment", "2"])
    assert e.value.code == 2 and "invalid int value" in capsys.readouterr().err


def test_retry_policy_and_url_helpers():
    assert normalise_url("https://canvas.uni.edu/api/v1/") == "https://canvas.uni.edu"
    assert normalise_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    with pytest.raises(CanvasPushError):
        normalise_url("canvas.uni.edu")
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0)
    assert 8.0 <= policy.backoff(3) <= 9.0 and 10.0 <= policy.backoff(10) <= 11.0


def test_http_date_retry_after(fake, folder, sleeps):
    fake.fail(429, times=1, retry_after=formatdate(time.time() + 30, usegmt=True))
    session = CanvasSession(fake.url, fake.token, RetryPolicy(sleep=sleeps.append))
    course = session.call(lambda: session.canvas.get_course(COURSE), "course")
    assert course.id == COURSE and len(sleeps) == 1 and 25 <= sleeps[0] <= 31


def test_push_help(capsys):
    with pytest.raises(SystemExit):
        main(["lms", "canvas", "push", "--help"])
    out = capsys.readouterr().out
    assert "--dry-run" in out and "CANVAS_API_TOKEN" in out and "Retry-After" in out


# -- Canvas as it answers: refusals per student, grading schemes, throttling --------------------
def test_a_student_the_assignment_is_not_assigned_to_fails_alone(fake, folder, capsys):
    fake.add_assignment(COURSE, ASSIGNMENT, "Tensors", 6, assigned_to={101, 105})  # not bob
    assert push(fake, folder) == 1
    out, err = capsys.readouterr()
    assert "[2/3] bob (Bob Roberts): failed (Canvas refused (401: user not authorized" in err
    assert "[3/3] erin (Erin Eng): updated" in err  # the push went on after bob
    assert (
        "FAILED bob (Bob Roberts) [sis_user_id S2]: Canvas refused (401: user not authorized "
        "to perform that action): is the assignment assigned to this student" in out
    )
    assert "2 updated, 0 already up to date, 1 failed" in out
    assert fake.state(COURSE, ASSIGNMENT, 101)[0] == 3.5
    assert fake.state(COURSE, ASSIGNMENT, 105)[0] == 0.0
    assert fake.state(COURSE, ASSIGNMENT, 102) == (None, [])
    assert "Canvas refused every student" not in err


def test_a_moderated_assignment_before_publication_refuses_everyone_and_says_why(
    fake, folder, capsys
):
    fake.add_assignment(COURSE, ASSIGNMENT, "Tensors", 6, moderated=True, grades_published=False)
    assert push(fake, folder) == 1
    out, err = capsys.readouterr()
    assert out.count("FAILED") == 3 and "moderated, are its grades published?" in out
    assert "0 updated, 0 already up to date, 3 failed" in out
    assert "warning: Canvas refused every student: check that the token's user may grade" in err
    fake.assignments[(COURSE, ASSIGNMENT)]["grades_published"] = True
    assert push(fake, folder) == 0
    assert "3 updated" in capsys.readouterr().out


def test_a_refusal_of_the_course_itself_stops_before_any_student(fake, folder, capsys):
    fake.fail(401, times=1)
    assert push(fake, folder) == 2
    err = capsys.readouterr().err
    assert f"error: Canvas refused the request for course {COURSE} (401: user not authorized" in err
    assert fake.puts == 0


def _scored(sub, score):
    """A result of ``score`` out of 10."""
    return SubmissionResult("01_tensors", sub, "trusted", "graded",
                            [_t("q1", "t_a", score, 8), _t("q2", "t_b", 0, 2)])  # fmt: skip


def test_scores_are_points_even_where_a_scheme_has_grades_named_by_numbers(fake, folder):
    from fake_canvas import DUTCH_SCHEME

    fake.add_assignment(
        COURSE, ASSIGNMENT, "Tensors", 10, grading_type="letter_grade", scheme=DUTCH_SCHEME
    )
    # the fake reads a bare "8" as the scheme's grade 8 (one below 9's lower bound: 84%), as
    # Canvas does: without prefer_points_over_scheme, 8 points would be stored as 8.4
    import requests

    url = f"{fake.url}/api/v1/courses/{COURSE}/assignments/{ASSIGNMENT}/submissions/103"
    auth = {"Authorization": f"Bearer {fake.token}"}
    r = requests.put(url, data={"submission[posted_grade]": "8"}, headers=auth, timeout=10)
    assert r.json()["score"] == pytest.approx(8.4)
    data = {"submission[posted_grade]": "8", "prefer_points_over_scheme": "true"}
    assert requests.put(url, data=data, headers=auth, timeout=10).json()["score"] == 8.0

    fake.forms.clear()
    write_results_json(_scored("alice", 8), folder / "results" / "alice" / "results.json")
    write_results_json(_scored("bob", 10), folder / "results" / "bob" / "results.json")
    assert push(fake, folder) == 0
    assert fake.state(COURSE, ASSIGNMENT, 101)[0] == 8.0
    assert fake.state(COURSE, ASSIGNMENT, 102)[0] == 10.0
    graded = [f for f in fake.forms if "submission[posted_grade]" in f]
    assert graded and all(f["prefer_points_over_scheme"] == "true" for f in graded)
    assert not [f for f in fake.forms if "submission[posted_grade]" not in f and
                "prefer_points_over_scheme" in f]  # fmt: skip


def test_canvas_throttling_as_canvas_answers_it_is_retried_after_the_bucket_drains(
    fake, folder, sleeps, capsys
):
    import requests

    # what Canvas's middleware answers: 403, plain text, X-Rate-Limit-Remaining 0, no Retry-After
    fake.fail(403, times=1)
    r = requests.get(f"{fake.url}/api/v1/courses/{COURSE}",
                     headers={"Authorization": f"Bearer {fake.token}"}, timeout=10)  # fmt: skip
    assert (r.status_code, r.text) == (403, "403 Forbidden (Rate Limit Exceeded)\n")
    assert r.headers["X-Rate-Limit-Remaining"] == "0.0" and "Retry-After" not in r.headers

    fake.fail(403, times=3)
    assert push(fake, folder) == 0
    # each retry waits for the bucket to drain back to LOW_WATER (100 units at 10/s), at least
    assert len(sleeps) == 3 and all(10.0 <= s <= 12.0 for s in sleeps)
    assert [s for m, p, s in fake.log].count(403) == 4
    assert fake.puts == 3 and fake.state(COURSE, ASSIGNMENT, 101)[0] == 3.5


def test_a_low_rate_limit_remaining_slows_the_push_down(fake, folder, sleeps):
    fake.remaining = "40.0"  # of Canvas's 600: wait (100 - 40) / 10 s before the next request
    assert push(fake, folder) == 0
    assert sleeps and all(s == pytest.approx(6.0) for s in sleeps)
    assert len(sleeps) == 4  # before each step but the first: assignment, then each student
    sleeps.clear()
    fake.remaining = "550.0"
    assert push(fake, folder) == 0 and sleeps == []


def test_throttling_that_never_ends_stops_with_who_is_done(fake, folder, capsys):
    fake.fail(403, times=1000, method="PUT")
    assert push(fake, folder, "--retries", "1") == 1
    out, err = capsys.readouterr()
    assert (
        "stopped: Canvas kept failing on the submission of alice (Alice Doe): throttled (403)"
        in err
    )
    assert "not done (3): alice (Alice Doe), bob (Bob Roberts), erin (Erin Eng)" in out


def test_push_without_a_roster_uses_the_identity_results_carry(fake, folder, capsys):
    fake.add_student(COURSE, 106, "Pair Two", sis_user_id="S6")
    results = folder / "results"
    shutil.rmtree(results)
    canvas = {"source": "canvas", "canvas_user_id": "101", "members": [{"canvas_user_id": "101"}]}
    group = {"source": "gradescope", "members": [{"name": "Bob", "sis_user_id": "S2"},
                                                 {"name": "Pair Two", "sis_user_id": "S6"}]}  # fmt: skip
    for sub, lms in (("doealice_101", canvas), ("S2_S6", group)):
        r = _result(sub, 2, 3)
        r.lms = lms
        write_results_json(r, results / sub / "results.json")
    assert push(fake, folder, roster=None) == 0
    assert "3 updated, 0 already up to date, 0 failed" in capsys.readouterr().out
    assert fake.state(COURSE, ASSIGNMENT, 101)[0] == 5.0
    assert fake.state(COURSE, ASSIGNMENT, 102)[0] == fake.state(COURSE, ASSIGNMENT, 106)[0] == 5.0


def test_push_without_a_roster_or_identities_is_bad_input(fake, folder, capsys):
    assert push(fake, folder, roster=None) == 2
    assert "error: lms canvas push needs --roster" in capsys.readouterr().err
