"""A fake Canvas LMS on 127.0.0.1: the REST endpoints `tensorgrade lms canvas push` uses.

Shapes follow Canvas's API documentation (Courses, Assignments, Submissions, Throttling):

    GET /api/v1/courses/:id
    GET /api/v1/courses/:course_id/assignments/:id
    GET /api/v1/courses/:course_id/users/:id             (:id may be sis_user_id:X, sis_login_id:X)
    GET /api/v1/courses/:course_id/assignments/:assignment_id/submissions/:user_id
        include[]=submission_comments adds the SubmissionComment list
    PUT the same path, form-encoded: submission[posted_grade], comment[text_comment]

Errors as Canvas sends them: 401 with ``WWW-Authenticate: Bearer realm="canvas-lms"`` and
``{"errors":[{"message":"Invalid access token."}]}`` for a wrong token; 404 with
``{"errors":[{"message":"The specified resource does not exist."}]}``; 5xx with
``{"errors":[{"message":"An error occurred."}],"error_report_id":...}``.

Refusals of one student's write, as Canvas answers them: 401 without WWW-Authenticate,
``{"status":"unauthorized","errors":[{"message":"user not authorized to perform that action"}]}``,
for a student the assignment is not assigned to (``assigned_to``), and for a moderated assignment
whose grades are not published yet.

Throttling as Canvas's middleware (app/middleware/request_throttle.rb) answers it: 403, text/plain
"403 Forbidden (Rate Limit Exceeded)\n", ``X-Rate-Limit-Remaining: 0.0``, no Retry-After (a
``Fault`` can add one, and can answer 429 instead, as newer docs describe). ``remaining`` puts an
``X-Rate-Limit-Remaining`` on every other answer.

Grading schemes: an assignment with ``grading_type`` letter_grade or gpa_scale and a scheme reads
a ``posted_grade`` that is a scheme's grade name ("8" of a 1-10 scheme) as that grade, the score
one below the next grade's lower bound (GradingStandard#grade_to_score), unless
``prefer_points_over_scheme`` is true: then "8" is 8 points.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEACHER = {"id": 1, "display_name": "Ada Teacher", "avatar_image_url": "", "html_url": ""}
NOT_FOUND = {"errors": [{"message": "The specified resource does not exist."}]}
UNAUTHORIZED = {
    "status": "unauthorized",
    "errors": [{"message": "user not authorized to perform that action"}],
}
# A scheme with numeric grade names, as Dutch and other European courses use: (name, lower bound)
DUTCH_SCHEME = [
    ("10", 0.95), ("9", 0.85), ("8", 0.75), ("7", 0.65), ("6", 0.55),
    ("5", 0.45), ("4", 0.35), ("3", 0.25), ("2", 0.15), ("1", 0.0),
]  # fmt: skip


@dataclass
class Fault:
    """Answer ``status`` to the next ``times`` matching requests instead of serving them."""

    status: int  # 403 (throttled, as Canvas does), 429 (as newer docs say), 401, 500, 502, 503
    times: int
    retry_after: str | None = None
    method: str | None = None  # only requests with this method; None: any
    apply_first: bool = False  # serve the request (a PUT is applied), then answer the error


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeCanvas:
    def __init__(self, token: str = "test-token-123"):
        self.token = token
        self.courses: dict[int, dict] = {}
        self.assignments: dict[tuple[int, int], dict] = {}
        self.users: dict[int, dict] = {}
        self.enrolled: set[tuple[int, int]] = set()
        self.submissions: dict[tuple[int, int, int], dict] = {}
        self.comments: dict[tuple[int, int, int], list[dict]] = {}
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.forms: list[dict[str, str]] = []  # the form of each PUT, as sent
        self.remaining: str | None = None  # X-Rate-Limit-Remaining on every answer, if set
        self.schemes: dict[tuple[int, int], list[tuple[str, float]]] = {}
        self.assigned_to: dict[tuple[int, int], set[int]] = {}  # only these users, if set
        self.lock = threading.Lock()
        self._ids = iter(range(1000, 10**9))
        self._server: ThreadingHTTPServer | None = None

    # -- set-up --------------------------------------------------------------------------------
    def add_course(self, course_id: int, name: str = "Scientific PyTorch") -> None:
        self.courses[course_id] = {
            "id": course_id,
            "name": name,
            "course_code": "SPT",
            "workflow_state": "available",
            "account_id": 1,
            "uuid": f"course-{course_id}",
            "default_view": "modules",
            "is_public": False,
        }

    def add_assignment(
        self,
        course_id: int,
        assignment_id: int,
        name: str,
        points: float,
        *,
        grading_type: str = "points",
        scheme: list[tuple[str, float]] | None = None,
        moderated: bool = False,
        grades_published: bool = True,
        assigned_to: set[int] | None = None,
    ):
        """``scheme``: the grading scheme (name, lower bound) shown for ``grading_type``
        letter_grade or gpa_scale; ``assigned_to``: only these users (differentiated)."""
        self.assignments[(course_id, assignment_id)] = {
            "id": assignment_id,
            "course_id": course_id,
            "name": name,
            "points_possible": points,
            "grading_type": grading_type,
            "grading_standard_id": 7 if scheme else None,
            "moderated_grading": moderated,
            "grades_published": grades_published,
            "only_visible_to_overrides": assigned_to is not None,
            "published": True,
            "submission_types": ["online_upload"],
            "html_url": f"http://canvas.test/courses/{course_id}/assignments/{assignment_id}",
        }
        if scheme:
            self.schemes[(course_id, assignment_id)] = sorted(scheme, key=lambda g: -g[1])
        if assigned_to is not None:
            self.assigned_to[(course_id, assignment_id)] = set(assigned_to)

    def add_student(self, course_id: int, user_id: int, name: str, sis_user_id="", login_id=""):
        first, _, last = name.partition(" ")
        self.users[user_id] = {
            "id": user_id,
            "name": name,
            "sortable_name": f"{last}, {first}" if last else name,
            "short_name": name,
            "sis_user_id": sis_user_id or None,
            "login_id": login_id or None,
        }
        self.enrolled.add((course_id, user_id))

    def fail(self, status: int, times: int = 1, **kw) -> None:
        self.faults.append(Fault(status, times, **kw))

    def set_score(self, course_id, assignment_id, user_id, score: float | None) -> None:
        """As if a TA had changed the grade in SpeedGrader."""
        self._submission(course_id, assignment_id, user_id).update(
            score=score, grade=None if score is None else _grade_text(score)
        )

    # -- inspection ----------------------------------------------------------------------------
    def requests(self, method: str) -> list[str]:
        return [p for m, p, status in self.log if m == method and status < 400]

    @property
    def puts(self) -> int:
        return len(self.requests("PUT"))

    def state(self, course_id, assignment_id, user_id) -> tuple[float | None, list[str]]:
        sub = self._submission(course_id, assignment_id, user_id)
        texts = [c["comment"] for c in self.comments.get((course_id, assignment_id, user_id), [])]
        return sub["score"], texts

    # -- server --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeCanvas:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake._handle(self, "GET")

            def do_PUT(self):
                fake._handle(self, "PUT")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeCanvas:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling ----------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length).decode() if length else ""
        form = urllib.parse.parse_qs(raw, keep_blank_values=True)
        with self.lock:
            status, body, headers = self._respond(method, parts.path, query, form, h.headers)
            self.log.append((method, parts.path, status))
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        h.send_response(status)
        ctype = (
            "text/plain; charset=utf-8"
            if isinstance(body, str)
            else "application/json; charset=utf-8"
        )
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("X-Request-Cost", "0.01")
        if self.remaining is not None and "X-Rate-Limit-Remaining" not in headers:
            h.send_header("X-Rate-Limit-Remaining", self.remaining)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _respond(self, method, path, query, form, headers):
        auth = headers.get("Authorization", "")
        if not auth:
            return (
                401,
                {
                    "status": "unauthenticated",
                    "errors": [{"message": "user authorization required"}],
                },
                {},
            )
        if auth != f"Bearer {self.token}":
            return (
                401,
                {"errors": [{"message": "Invalid access token."}]},
                {"WWW-Authenticate": 'Bearer realm="canvas-lms"'},
            )
        fault = next((f for f in self.faults if f.times > 0 and f.method in (None, method)), None)
        if fault is not None:
            fault.times -= 1
            if fault.apply_first:
                self._route(method, path, query, form)
            return self._fault_answer(fault)
        return self._route(method, path, query, form)

    def _fault_answer(self, f: Fault):
        headers = {}
        if f.status in (403, 429):
            headers["X-Rate-Limit-Remaining"] = "0.0"
            if f.retry_after is not None:
                headers["Retry-After"] = f.retry_after
            reason = "Forbidden" if f.status == 403 else "Too Many Requests"
            return f.status, f"{f.status} {reason} (Rate Limit Exceeded)\n", headers
        if f.status == 401:  # as Canvas refuses an action to a user who may not do it
            return 401, UNAUTHORIZED, {}
        return f.status, {"errors": [{"message": "An error occurred."}], "error_report_id": 42}, {}

    def _route(self, method, path, query, form):
        segs = [urllib.parse.unquote(s) for s in path.strip("/").split("/")]
        if segs[:2] != ["api", "v1"] or len(segs) < 4 or segs[2] != "courses":
            return 404, NOT_FOUND, {}
        rest = segs[4:]
        course_id = _int(segs[3])
        if course_id not in self.courses:
            return 404, NOT_FOUND, {}
        if not rest and method == "GET":
            return 200, self.courses[course_id], {}
        if len(rest) == 2 and rest[0] == "users" and method == "GET":
            uid = self._find_user(course_id, rest[1])
            return (200, self.users[uid], {}) if uid else (404, NOT_FOUND, {})
        if len(rest) >= 2 and rest[0] == "assignments":
            aid = _int(rest[1])
            if (course_id, aid) not in self.assignments:
                return 404, NOT_FOUND, {}
            if len(rest) == 2 and method == "GET":
                return 200, self.assignments[(course_id, aid)], {}
            if len(rest) == 4 and rest[2] == "submissions":
                uid = self._find_user(course_id, rest[3])
                if uid is None:
                    return 404, NOT_FOUND, {}
                key = (course_id, aid, uid)
                if method == "PUT":
                    self.forms.append({k: v[0] for k, v in form.items()})
                    status, err = self._update(key, form)
                    if status != 200:
                        return status, err, {}
                    return 200, self._submission_json(key, with_comments=True), {}
                include = query.get("include[]", [])
                return 200, self._submission_json(key, "submission_comments" in include), {}
        return 404, NOT_FOUND, {}

    def _find_user(self, course_id: int, ref: str) -> int | None:
        kind, _, value = ref.partition(":")
        if not value:
            uid = _int(ref)
        else:
            field = {"sis_user_id": "sis_user_id", "sis_login_id": "login_id"}.get(kind)
            uid = next((u["id"] for u in self.users.values() if field and u[field] == value), None)
        return uid if uid in self.users and (course_id, uid) in self.enrolled else None

    def _submission(self, course_id, assignment_id, user_id) -> dict:
        key = (course_id, assignment_id, user_id)
        if key not in self.submissions:
            self.submissions[key] = {
                "id": next(self._ids),
                "assignment_id": assignment_id,
                "user_id": user_id,
                "attempt": None,
                "body": None,
                "grade": None,
                "score": None,
                "grade_matches_current_submission": True,
                "graded_at": None,
                "grader_id": None,
                "html_url": f"http://canvas.test/courses/{course_id}/assignments/{assignment_id}/submissions/{user_id}",
                "preview_url": "",
                "late": False,
                "missing": False,
                "excused": False,
                "late_policy_status": None,
                "points_deducted": None,
                "seconds_late": 0,
                "posted_at": None,
                "submission_type": None,
                "submitted_at": None,
                "url": None,
                "workflow_state": "unsubmitted",
                "extra_attempts": None,
                "redo_request": False,
            }
        return self.submissions[key]

    def _submission_json(self, key, with_comments: bool) -> dict:
        out = dict(self._submission(*key))
        if with_comments:
            out["submission_comments"] = [dict(c) for c in self.comments.get(key, [])]
        return out

    def _update(self, key, form) -> tuple[int, dict | None]:
        assignment = self.assignments[key[:2]]
        assigned = self.assigned_to.get(key[:2])
        if assigned is not None and key[2] not in assigned:
            return 401, UNAUTHORIZED  # not assigned to this student
        if assignment["moderated_grading"] and not assignment["grades_published"]:
            return 401, UNAUTHORIZED  # moderated: only the final grader, after publishing
        sub = self._submission(*key)
        posted = form.get("submission[posted_grade]", [None])[0]
        text = form.get("comment[text_comment]", [None])[0]
        prefer_points = form.get("prefer_points_over_scheme", ["false"])[0].lower()
        if posted is not None:
            possible = assignment["points_possible"]
            scheme = self.schemes.get(key[:2])
            uses_scheme = assignment["grading_type"] in ("letter_grade", "gpa_scale") and scheme
            try:
                if posted.endswith("%"):
                    score = float(posted[:-1]) * possible / 100
                elif (
                    uses_scheme
                    and prefer_points not in ("true", "1")
                    and _in_scheme(scheme, posted)
                ):
                    score = possible * _grade_to_score(scheme, posted) / 100
                else:
                    score = float(posted)
            except ValueError:
                return 400, {"errors": [{"message": f"invalid grade {posted!r}"}]}
            sub.update(
                score=score,
                grade=_grade_text(score),
                workflow_state="graded",
                graded_at=_now(),
                grader_id=TEACHER["id"],
                posted_at=_now(),
            )
        if text:
            self.comments.setdefault(key, []).append(
                {
                    "id": next(self._ids),
                    "author_id": TEACHER["id"],
                    "author_name": TEACHER["display_name"],
                    "author": TEACHER,
                    "comment": text,
                    "created_at": _now(),
                    "edited_at": None,
                    "media_comment": None,
                }
            )
        return 200, None


def _in_scheme(scheme: list[tuple[str, float]], grade: str) -> bool:
    return _place(scheme, grade) is not None


def _place(scheme: list[tuple[str, float]], grade: str) -> int | None:
    """GradingStandard#place_in_scheme: a number matches a numeric name by value."""
    try:
        value = float(grade)
    except ValueError:
        return next((i for i, (n, _) in enumerate(scheme) if n.lower() == grade.lower()), None)
    return next(
        (
            i
            for i, (n, _) in enumerate(scheme)
            if re.fullmatch(r"(\d*\.)?\d+", n) and float(n) == value
        ),
        None,
    )


def _grade_to_score(scheme: list[tuple[str, float]], grade: str) -> float:
    """GradingStandard#grade_to_score: the top grade is 100%, any other one below the next
    grade's lower bound (1 percentage point below, as Canvas does it)."""
    i = _place(scheme, grade)
    assert i is not None
    return 100.0 if i == 0 else scheme[i - 1][1] * 100 - 1


def _grade_text(score: float) -> str:
    return str(int(score)) if score == int(score) else str(score)


def _int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"\d+", text) else None
