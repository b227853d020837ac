"""Push scores and feedback comments to a Canvas assignment through the REST API (canvasapi).

Per student: read the submission with its comments (GET .../submissions/:user_id with
``include[]=submission_comments``), compare, and only if something differs write it (PUT
.../submissions/:user_id with ``submission[posted_grade]`` and ``prefer_points_over_scheme``,
and/or ``comment[text_comment]``). ``prefer_points_over_scheme`` makes Canvas read "8" as 8
points even where the assignment shows a grading scheme whose grades are numbers (a Dutch 1-10
scheme would otherwise store "8" as that scheme's grade, 84% of the points). Our comment ends
with a marker line holding a hash of its text, so a re-run finds it and writes nothing; a regrade
changes the text, so its new comment is posted.

A refusal concerns one student and the push goes on: 401 without ``WWW-Authenticate`` (Canvas's
answer for a student the assignment is not assigned to, and for a moderated assignment before
its grades are published), 403 other than throttling, 404, other 4xx. Only a rejected token
(401 with ``WWW-Authenticate``) and refusals of the course or assignment themselves stop it.

Throttling, as Canvas does it (app/middleware/request_throttle.rb): each token has a bucket of
600 units that drains 10 units per second; a request reserves 50 units while it runs and costs
its CPU and database time; a request that finds the bucket full is answered 403 with the text
"403 Forbidden (Rate Limit Exceeded)", ``X-Rate-Limit-Remaining: 0.0`` and no Retry-After (newer
docs say 429; both are handled). Every answer carries ``X-Rate-Limit-Remaining``: when it falls
below ``LOW_WATER`` the push waits until the bucket has drained back to it, before the next
student. A throttled request is retried after the longer of that wait and an exponential backoff
(1, 2, 4, ... s plus jitter), or as long as a Retry-After asks. 5xx answers and dropped
connections are retried with the same backoff. The retried unit is "read, then write if needed",
so a PUT that Canvas applied before failing is seen on the next read and not repeated.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from requests.adapters import HTTPAdapter

from ..errors import TensorgradeError
from .feedback import comment_text, grade_for, points
from .roster import Matched, Student

SCORE_TOLERANCE = 0.005  # posted grades are rounded to 2 decimals
MAX_RETRY_AFTER = 600.0  # never sleep longer than this on one Retry-After
# Canvas's throttle, default settings: the bucket drains this many units per second, and the
# push keeps this many units of it free (a request reserves 50 while it runs).
CANVAS_DRAIN_PER_S = 10.0
LOW_WATER = 100.0
_sleep = time.sleep  # tests replace this to keep retries instant


class CanvasPushError(TensorgradeError):
    """The push cannot go on; the message is for the user.

    ``config`` is True when the cause is the command's input (token, course, assignment, rights)
    rather than Canvas being unavailable: exit status 2, else 1.
    """

    def __init__(self, message: str, config: bool = True):
        super().__init__(message)
        self.config = config
        self.exit_code = 2 if config else 1


class _NotFound(Exception):
    pass


class _StudentError(Exception):
    """Canvas refused this request (a 4xx that is not throttling, nor a rejected token); for a
    student's submission, that student's failure: the others go on."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class RetryPolicy:
    retries: int = 5  # further attempts after the first
    base_delay: float = 1.0  # seconds; doubles each attempt, plus up to base_delay of jitter
    max_delay: float = 60.0
    sleep: Callable[[float], None] | None = None  # None: time.sleep

    def backoff(self, attempt: int) -> float:
        delay = min(self.max_delay, self.base_delay * 2**attempt)
        return delay + random.uniform(0, self.base_delay)

    def wait(self, seconds: float) -> None:
        (self.sleep or _sleep)(seconds)

    def drain(self, remaining: float | None) -> float:
        """Seconds until Canvas's bucket, with ``remaining`` units left, is back to LOW_WATER."""
        if remaining is None or remaining >= LOW_WATER:
            return 0.0
        return min(self.max_delay, (LOW_WATER - max(remaining, 0.0)) / CANVAS_DRAIN_PER_S)


@dataclass
class Target:
    """What one student should have in Canvas."""

    submission: str
    label: str
    user: tuple[str, str]  # ("id", "123"), ("sis_user_id", "s1") or ("sis_login_id", "jdoe")
    grade: float | None
    comment: str
    marker: str

    @property
    def user_text(self) -> str:
        kind, value = self.user
        return f"user {value}" if kind == "id" else f"{kind} {value}"


@dataclass
class Outcome:
    target: Target
    action: str  # "unchanged" | "updated" | "would update" | "skipped" | "failed"
    detail: str = ""
    status: int | None = None  # Canvas's HTTP status of a failure


@dataclass
class PushReport:
    course: str = ""
    assignment: str = ""
    dry_run: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    not_attempted: list[Target] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    aborted: str = ""  # why the push stopped early

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return not self.aborted and not self.count("failed")


def canvas_user(st: Student) -> tuple[str, str] | None:
    """How to address a roster row in Canvas URLs: numeric id first, then SIS ids."""
    if st.canvas_user_id:
        return ("id", st.canvas_user_id)
    if st.sis_user_id:
        return ("sis_user_id", st.sis_user_id)
    if st.login_id:
        return ("sis_login_id", st.login_id)
    return None


@dataclass
class Skipped:
    """A matched student the push leaves alone, and why."""

    label: str
    why: str
    by_policy: bool  # ungradable with --ungradable blank: intended, not a delivery failure


def plan_targets(
    matched: Matched, ungradable: str = "blank", report_line: str = ""
) -> tuple[list[Target], list[Skipped]]:
    """Targets for the push, and the matched students that will not be pushed."""
    targets, skipped = [], []
    for r, st in matched.pairs:
        user = canvas_user(st)
        grade = grade_for(r, ungradable)
        if user is None:
            why = "no canvas_user_id, sis_user_id or login_id in the roster"
            skipped.append(Skipped(st.label, why, by_policy=False))
        elif grade is None:
            why = " ".join(r.reason.split())[:160] or "no reason given"
            skipped.append(Skipped(st.label, f"ungradable, left alone ({why})", by_policy=True))
        else:
            line = report_line.replace("{submission}", r.submission)
            text, mark = comment_text(r, line)
            targets.append(Target(r.submission, st.label, user, grade, text, mark))
    return targets, skipped


class _TimeoutAdapter(HTTPAdapter):
    """canvasapi sets no timeout; a hung connection must not hang the push."""

    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


def normalise_url(url: str) -> str:
    """Canvas's base URL as canvasapi wants it; http only for this machine (the token is sent)."""
    url = url.strip().rstrip("/")
    url = re.sub(r"/api/v1$", "", url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise CanvasPushError(f"not a Canvas URL: {url!r} (expected https://canvas.example.edu)")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise CanvasPushError(
            f"refusing http:// for {parts.hostname}: the token would travel unencrypted; "
            "use the https:// URL"
        )
    return url


class CanvasSession:
    """canvasapi's Canvas object plus retries, timeouts and the last HTTP response's headers."""

    def __init__(self, url: str, token: str, policy: RetryPolicy | None = None, timeout=60.0):
        from canvasapi import Canvas

        self.policy = policy or RetryPolicy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # canvasapi warns on http://; normalise_url decides
            self.canvas = Canvas(normalise_url(url), token)
        self._last: requests.Response | None = None
        self.remaining: float | None = None  # X-Rate-Limit-Remaining of the last answer
        # canvasapi (pinned 3.6.0) keeps its requests.Session private; without it we still work,
        # only without Retry-After and timeouts.
        requester = getattr(self.canvas, "_Canvas__requester", None)
        session = getattr(requester, "_session", None)
        if isinstance(session, requests.Session):
            session.hooks["response"].append(self._remember)
            adapter = _TimeoutAdapter(timeout)
            session.mount("https://", adapter)
            session.mount("http://", adapter)

    def _remember(self, response, *args, **kwargs):
        self._last = response
        try:
            self.remaining = float(response.headers["X-Rate-Limit-Remaining"])
        except (KeyError, ValueError):
            pass
        return response

    def _pace(self) -> None:
        """Before a request: if the last answer left little of the quota, let it drain."""
        seconds = self.policy.drain(self.remaining)
        if seconds > 0:
            self.policy.wait(seconds)
            self.remaining = None

    def call(self, fn: Callable[[], object], what: str):
        """Run ``fn`` (one or more canvasapi calls); retry throttling and server errors."""
        from canvasapi.exceptions import (
            CanvasException,
            Forbidden,
            InvalidAccessToken,
            RateLimitExceeded,
            ResourceDoesNotExist,
            Unauthorized,
        )

        attempt = 0
        while True:
            self._pace()
            self._last = None
            throttled = False
            try:
                return fn()
            except InvalidAccessToken as e:
                raise CanvasPushError(_auth_message(e, True)) from None
            except Unauthorized as e:
                raise _StudentError(f"401: {_errors(e)}", 401) from None
            except ResourceDoesNotExist:
                raise _NotFound(what) from None
            except (RateLimitExceeded, Forbidden) as e:
                if not _throttled(e):
                    raise _StudentError(f"403: {_errors(e)}", 403) from None
                reason, throttled = f"throttled ({self._status() or 429})", True
            except CanvasException as e:
                status = self._status() or _status_in(str(e))
                if status is None or status < 500:
                    raise _StudentError(f"{status or 'error'}: {_errors(e)}", status) from None
                reason = f"server error {status}"
            except (requests.ConnectionError, requests.Timeout) as e:
                reason = f"connection problem ({type(e).__name__})"
            if attempt >= self.policy.retries:
                raise CanvasPushError(
                    f"Canvas kept failing on {what}: {reason}, {attempt + 1} tries",
                    config=False,
                ) from None
            delay = self._retry_after() or self.policy.backoff(attempt)
            if throttled and not self._retry_after():  # Canvas's 403 names no time: let it drain
                delay = max(delay, self.policy.drain(self.remaining if self.remaining else 0.0))
            self.remaining = None
            self.policy.wait(delay)
            attempt += 1

    def _status(self) -> int | None:
        return self._last.status_code if self._last is not None else None

    def _retry_after(self) -> float | None:
        if self._last is None:
            return None
        value = self._last.headers.get("Retry-After", "").strip()
        if not value:
            return None
        if value.isdigit():
            return min(float(value), MAX_RETRY_AFTER)
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        return min(max(0.0, when - time.time()), MAX_RETRY_AFTER)


def _errors(e: Exception) -> str:
    """Canvas's error messages ({"errors": [{"message": ...}]}) from a canvasapi exception."""
    msg = getattr(e, "message", str(e))
    if isinstance(msg, list):
        texts = [m.get("message", str(m)) if isinstance(m, dict) else str(m) for m in msg]
        return "; ".join(texts)
    return str(msg)[:300]


def _throttled(e: Exception) -> bool:
    from canvasapi.exceptions import RateLimitExceeded

    return isinstance(e, RateLimitExceeded) or "rate limit exceeded" in str(e).lower()


def _status_in(text: str) -> int | None:
    m = re.search(r"status code (\d{3})", text)
    return int(m.group(1)) if m else None


def _refusal_text(e: _StudentError) -> str:
    """What a refused student's line says, with the likely causes of Canvas's answer."""
    if e.status == 401:
        return (
            f"Canvas refused ({e}): is the assignment assigned to this student, and if it is "
            "moderated, are its grades published?"
        )
    if e.status == 403:
        return f"Canvas refused ({e}): may the token's user grade this student?"
    return f"Canvas refused the write ({e})"


def _refused(e: _StudentError, what: str) -> CanvasPushError:
    """A refusal of the course or assignment itself: nothing can be pushed."""
    if e.status == 401:
        return CanvasPushError(
            f"Canvas refused the request for {what} ({e}): the token's user is not allowed to "
            "grade in this course"
        )
    if e.status == 403:
        return CanvasPushError(
            f"Canvas forbids {what} ({e}): the token's user needs the right to grade in this course"
        )
    return CanvasPushError(f"Canvas refused {what} ({e})")


def _auth_message(e: Exception, invalid_token: bool) -> str:
    if invalid_token:
        return (
            f"Canvas rejected the API token (401: {_errors(e)}): check CANVAS_API_TOKEN or "
            "--token-file (a token can expire or be revoked), and --url"
        )
    return (
        f"Canvas refused the request (401: {_errors(e)}): the token's user is not allowed to "
        "grade in this course"
    )


class Pusher:
    """One push: check the course and assignment, then sync each target in turn."""

    def __init__(self, session: CanvasSession, course_id: int, assignment_id: int):
        self.s = session
        self.course_id, self.assignment_id = course_id, assignment_id
        self._user_ids: dict[tuple[str, str], int] = {}

    def open(self, report: PushReport, max_score: float | None) -> None:
        try:
            self.course = self.s.call(lambda: self.s.canvas.get_course(self.course_id), "course")
        except _NotFound:
            raise CanvasPushError(
                f"course {self.course_id} not found (404): check --course, and that the token's "
                "user is enrolled as a teacher there"
            ) from None
        except _StudentError as e:
            raise _refused(e, f"course {self.course_id}") from None
        try:
            self.assignment = self.s.call(
                lambda: self.course.get_assignment(self.assignment_id), "assignment"
            )
        except _NotFound:
            raise CanvasPushError(
                f"assignment {self.assignment_id} not found in course {self.course_id} (404): "
                "check --assignment (the number in the assignment's URL)"
            ) from None
        except _StudentError as e:
            raise _refused(e, f"assignment {self.assignment_id}") from None
        report.course = f"{self.course_id} {getattr(self.course, 'name', '')!r}"
        possible = getattr(self.assignment, "points_possible", None)
        report.assignment = f"{self.assignment_id} {getattr(self.assignment, 'name', '')!r}"
        if possible is not None:
            report.assignment += f" ({points(possible)} points possible)"
        if max_score is not None and possible is not None and abs(possible - max_score) > 1e-9:
            report.warnings.append(
                f"the Canvas assignment has {points(possible)} points possible, the results are "
                f"out of {points(max_score)}: scores are posted as points, unscaled"
            )

    def _user_id(self, t: Target) -> int:
        kind, value = t.user
        if kind == "id":
            return int(value)
        if t.user not in self._user_ids:
            quoted = urllib.parse.quote(value, safe="")
            user = self.course.get_user(quoted, kind)
            self._user_ids[t.user] = int(user.id)
        return self._user_ids[t.user]

    def sync(self, t: Target, dry_run: bool) -> Outcome:
        """Read this student's submission; write what differs (unless dry_run)."""

        def unit() -> Outcome:
            uid = self._user_id(t)
            sub = self.assignment.get_submission(uid, include=["submission_comments"])
            current = getattr(sub, "score", None)
            excused = bool(getattr(sub, "excused", False))
            comments = getattr(sub, "submission_comments", None) or []
            has_comment = any(t.marker in (c.get("comment") or "") for c in comments)
            set_grade = (
                t.grade is not None
                and not excused
                and (current is None or abs(float(current) - t.grade) >= SCORE_TOLERANCE)
            )
            changes = []
            grade = t.grade if t.grade is not None else 0.0  # used only where set_grade holds it
            if set_grade:
                old = "-" if current is None else points(float(current))
                changes.append(f"score {old} -> {points(grade)}")
            if not has_comment:
                changes.append("add feedback comment")
            note = "; excused in Canvas, score left alone" if excused else ""
            if not changes:
                shown = "-" if current is None else points(float(current))
                return Outcome(t, "unchanged", f"score {shown}{note}")
            if dry_run:
                return Outcome(t, "would update", ", ".join(changes) + note)
            kwargs: dict = {}
            if set_grade:
                kwargs["submission"] = {"posted_grade": points(grade)}
                # points, even where a grading scheme has a grade of that name ("8")
                kwargs["prefer_points_over_scheme"] = "true"
            if not has_comment:
                kwargs["comment"] = {"text_comment": t.comment}
            sub.edit(**kwargs)
            stored = getattr(sub, "score", None)
            if set_grade and (stored is None or abs(float(stored) - grade) >= SCORE_TOLERANCE):
                note += f"; Canvas stored score {stored} (grading type?)"
            return Outcome(t, "updated", ", ".join(changes) + note)

        try:
            return self.s.call(unit, f"the submission of {t.label}")
        except _NotFound:
            return Outcome(
                t,
                "failed",
                f"{t.user_text} not found in course {self.course_id} (404): check the roster",
            )
        except _StudentError as e:
            return Outcome(t, "failed", _refusal_text(e), e.status)


def push(
    session: CanvasSession,
    course_id: int,
    assignment_id: int,
    targets: list[Target],
    *,
    dry_run: bool = False,
    max_score: float | None = None,
    progress: Callable[[int, int, Outcome], None] | None = None,
) -> PushReport:
    """Sync every target; stop early (report.aborted) only when going on cannot help."""
    report = PushReport(dry_run=dry_run)
    pusher = Pusher(session, course_id, assignment_id)
    pusher.open(report, max_score)  # CanvasPushError here: nothing was done yet
    for i, t in enumerate(targets):
        try:
            outcome = pusher.sync(t, dry_run)
        except CanvasPushError as e:
            report.aborted = str(e)
            report.not_attempted = targets[i:]
            break
        report.outcomes.append(outcome)
        if progress:
            progress(i + 1, len(targets), outcome)
    return report
