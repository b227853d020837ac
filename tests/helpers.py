"""Helpers shared by test modules (no test module imports another one).

- where the course is: ``ROOT``, ``ASSIGNMENT_IDS``;
- ``Course``: the course copied into a temporary folder and built there on first use, one
  assignment at a time (the ``built_course`` fixture in conftest.py; nothing is written to the
  repository's own ``dist/`` or ``assignments/``);
- the catalogue of attacks on the trusted engine (``Attack``, ``ATTACKS``, ``attack_notebook``),
  run by test_adversarial.py and in part by test_gradescope.py and test_confidentiality.py;
- ``encrypted``: a zip marked password-protected.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import nbformat
import torch

from tensorgrade import testing as tg
from tensorgrade.course import Assignment, all_assignments
from tensorgrade.results import CRASHED, RAISED, WRONG_SHAPE

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT_IDS = [a.id for a in all_assignments(ROOT)]
# what a build reads: the masters (with their mutants and data) and the committed student files
COURSE_PARTS = ("solutions", "assignments")


class Course(Mapping[str, Assignment]):
    """The course's masters and student files copied into ``where`` and built there with
    `tensorgrade build`, each assignment on first use (``built_course["01_tensors"]``): a test session
    that needs one assignment pays for one build. Builds write only under ``where``."""

    def __init__(self, where: Path):
        self.root = where
        for part in COURSE_PARTS:
            shutil.copytree(ROOT / part, where / part)
        self._built: dict[str, Assignment] = {}
        self._lock = threading.Lock()

    def __getitem__(self, aid: str) -> Assignment:
        with self._lock:
            if aid not in self._built:
                if aid not in ASSIGNMENT_IDS:
                    raise KeyError(aid)
                self._built[aid] = build(self.root, aid)
            return self._built[aid]

    def __iter__(self) -> Iterator[str]:
        return iter(ASSIGNMENT_IDS)

    def __len__(self) -> int:
        return len(ASSIGNMENT_IDS)


def build(root: Path, aid: str) -> Assignment:
    """`tensorgrade build AID` on the course at ``root`` (its dist/ and assignments/ only)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tensorgrade", "build", aid],
        cwd=root,
        env={**os.environ, "TENSORGRADE_ROOT": str(root)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a = Assignment(aid, root)
    assert a.autograder_zip.is_file() and a.solution.is_file(), proc.stdout + proc.stderr
    return a


# --- attacks on the trusted engine ----------------------------------------------------------------


@dataclass
class Attack:
    name: str
    base: str  # "blank" or "solution"
    cells: list[str]
    score: float
    where: str = "end"  # "end", "start", or "after:<text in a cell>"
    note: str = ""  # text the result's reason must hold; "" means the reason must be empty
    absent: tuple[str, ...] = ()  # texts that must not appear in anything a student sees
    hidden_failure: str = ""  # the class of failure some hidden test must show (fixed sentence)
    # the cell may or may not end within the cell limit, depending on how fast the machine is:
    # the reason then holds the note or is empty (the score is the same either way)
    speed_dependent: bool = False


# What q1's hidden reference test sends first (float32, sigma ~ 1e-6: x = mu + sigma * z with
# z = 3 * randn(4, 9), seeds as in solutions/01_tensors): an attack below turns it into a
# five-digit number (its first five significant digits) and tries to get that number into
# feedback a student can read.
def _first_hidden_input() -> float:
    sigma = 1e-6 * (1 + 0.5 * float(tg.rand(1, seed=10)))
    mu = sigma * float(4 * tg.randn(1, seed=20))
    z = 3 * tg.randn(4, 9, seed=30)
    return float((mu + sigma * z).to(torch.float32).flatten()[0])


def _code(v: float) -> int:
    return int(f"{abs(v):.4e}"[:6].replace(".", ""))


CODE = _code(_first_hidden_input())
RECORD_HIDDEN_INPUTS = (
    "_SEEN = []\n"
    "_honest_density = gaussian_density\n"
    "def gaussian_density(x, mu, sigma):\n"
    "    if x.numel() == 36 and not _SEEN:  # q1's hidden reference input, the first one\n"
    "        _SEEN.append(int(f'{abs(float(x.flatten()[0])):.4e}'[:6].replace('.', '')))\n"
    "    return _honest_density(x, mu, sigma)\n"
)
# Writes 16 bytes to every pipe the process may write to: the answer pipe among them.
STRAY_BYTES = (
    "import os, stat, fcntl\n"
    "def _stray():\n"
    "    for fd in range(3, 1024):\n"
    "        try:\n"
    "            st = os.fstat(fd)\n"
    "        except OSError:\n"
    "            continue\n"
    "        if stat.S_ISFIFO(st.st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:\n"
    "            os.write(fd, b'x' * 16)\n"
)


ATTACKS = [
    Attack(
        "replace_otter_test_runner",
        "blank",
        [
            "from otter.test_files import exception_test as et\n"
            "def run(self, env):\n"
            "    self.test_case_results = []\n"
            "et.ExceptionTestFile.run = run\n"
            "import otter.test_files.abstract_test as at\n"
            "at.TestFile.grade = property(lambda self: 1.0)"
        ],
        0,
    ),
    Attack(
        "overwrite_test_files",
        "blank",
        [
            "import glob, os\n"
            "for p in glob.glob('/work/**/tests/q*.py', recursive=True) + glob.glob('tests/*.py'):\n"
            "    try:\n"
            "        open(p, 'w').write('OK_FORMAT = False\\nname = \"q1\"\\npoints = 100\\n')\n"
            "    except OSError as e:\n"
            "        print('denied', p)\n"
            "os.makedirs('tests', exist_ok=True)\n"
            "open('tests/q1.py', 'w').write('name = \"q1\"')"
        ],
        0,
    ),
    Attack(
        "print_hidden_tests",
        "blank",
        [
            "import glob\n"
            "for p in glob.glob('/work/**/*.py', recursive=True) + glob.glob('/work/**/*.ipynb', recursive=True):\n"
            "    try:\n"
            "        t = open(p).read()\n"
            "    except OSError:\n"
            "        continue\n"
            "    if 'HIDDEN' in t or 'hidden=True' in t:\n"
            "        print(t)"
        ],
        0,
    ),
    Attack(
        "exception_carrying_test_files",
        "blank",
        [
            "import glob\n"
            "found = ''.join(open(p).read() for p in glob.glob('/work/main/dist/*/tests/*.py'))\n"
            "raise RuntimeError('LEAK ' + found)"
        ],
        0,
        note="raised RuntimeError: LEAK",
    ),
    Attack(
        "fake_results_files",
        "blank",
        [
            "import json, os, pickle\n"
            "fake = {'tests': [{'name': 'q1', 'score': 100, 'max_score': 100}], 'score': 100}\n"
            "for d in ['.', 'results', '/autograder/results', os.environ.get('TMPDIR', '.')]:\n"
            "    try:\n"
            "        os.makedirs(d, exist_ok=True)\n"
            "        json.dump(fake, open(os.path.join(d, 'results.json'), 'w'))\n"
            "        pickle.dump(fake, open(os.path.join(d, 'results.pkl'), 'wb'))\n"
            "        open(os.path.join(d, '.OTTER_LOG'), 'wb').write(pickle.dumps(fake))\n"
            "    except OSError:\n"
            "        pass"
        ],
        0,
    ),
    Attack(
        "symlinks_at_output_paths",
        "blank",
        [
            "import os\n"
            "for name in ['results.json', 'grades.csv', 'results']:\n"
            "    try:\n"
            "        os.symlink('/etc/passwd', name)\n"
            "    except OSError:\n"
            "        pass"
        ],
        0,
    ),
    Attack(
        "monkeypatch_torch_comparisons",
        "blank",
        [
            "import torch, builtins\n"
            "torch.allclose = lambda *a, **k: True\n"
            "torch.equal = lambda *a, **k: True\n"
            "torch.Tensor.__eq__ = lambda self, other: True\n"
            "builtins.abs = lambda x: 0\n"
            "builtins.isinstance = lambda *a: True\n"
            "def gaussian_density(x, mu, sigma):\n"
            "    return torch.zeros_like(x)"
        ],
        0,
        note="ended the process",
    ),
    Attack(
        "eq_liar_object",
        "blank",
        [
            "class Liar:\n"
            "    def __eq__(self, other): return True\n"
            "    def __torch_function__(self, *a, **k): return True\n"
            "    def __float__(self): return 0.3989\n"
            "def gaussian_density(x, mu, sigma):\n"
            "    return Liar()\n"
            "def variance(x):\n"
            "    return Liar()"
        ],
        0,
    ),
    Attack(
        "torch_function_tensor_subclass",
        "blank",
        [
            "import torch\n"
            "class Liar(torch.Tensor):\n"
            "    @classmethod\n"
            "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
            "        return True\n"
            "def normalize_rows(X, p=2):\n"
            "    return torch.zeros_like(X).as_subclass(Liar)"
        ],
        0,
    ),
    Attack(
        "patch_tensorgrade_helpers_in_sandbox",
        "blank",
        [
            "import tensorgrade.testing as tg\n"
            "tg.assert_close = lambda *a, **k: None\n"
            "tg.check_tensor = lambda x, **k: x\n"
            "tg.TestFailure = type('Never', (Exception,), {})\n"
            "import tensorgrade.wire as wire\n"
            "wire.MAX_BLOB = 0"
        ],
        0,
    ),
    Attack(
        "patch_sandbox_worker_protocol",
        "blank",
        [
            "import sys, json\n"
            "w = sys.modules.get('__main__')\n"
            "import tensorgrade.wire as wire\n"
            "orig = wire.encode\n"
            "def forged(header, portable_type=None):\n"
            "    header = dict(header); header['ok'] = True; header['value'] = {'score': 100}\n"
            "    return orig(header, portable_type)\n"
            "wire.encode = forged"
        ],
        0,
        note="broke the sandbox",
    ),
    Attack(
        "input_transformer_blanks_later_cells",
        "solution",
        ["get_ipython().input_transformers_cleanup.append(lambda lines: [])"],
        0,
        where="start",
    ),
    Attack(
        "reseed_and_exhaust_rngs",
        "solution",
        [
            "import random, numpy as np, torch\n"
            "torch.manual_seed(0); np.random.seed(0); random.seed(0)\n"
            "for _ in range(1000):\n"
            "    torch.randn(100)\n"
            "torch.Generator.manual_seed = lambda self, s: self\n"
            "torch.manual_seed = lambda s: None"
        ],
        100,
        note="raised TypeError",
    ),
    Attack(
        "os_exit_in_a_cell",
        "solution",
        ["import os\nos._exit(0)"],
        100,
        where="after:def gaussian_density",
        note="ended the process",
    ),
    Attack(
        "infinite_loop_ignoring_sigterm",
        "solution",
        ["import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass"],
        100,
        where="after:def normalize_rows",
        note="did not finish within 6 s",
    ),
    Attack(
        "segfault",
        "solution",
        ["import ctypes\nctypes.string_at(0)"],
        100,
        where="after:def rgb_to_gray",
        note="SIGSEGV",
    ),
    Attack(
        "signal_the_grader",
        "solution",
        [
            "import os, signal\n"
            "for pid in [os.getppid(), 1]:\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError as e:\n"
            "        print('refused', e.errno)"
        ],
        100,
    ),
    Attack(
        "fork_bomb",
        "solution",
        [
            "import os\n"
            "children = 0\n"
            "try:\n"
            "    while True:\n"
            "        if os.fork() == 0:\n"
            "            import time\n"
            "            time.sleep(600)\n"
            "            os._exit(0)\n"
            "        children += 1\n"
            "except OSError:\n"
            "    print('fork refused after', children)"
        ],
        100,
        note="did not finish within 6 s",
        speed_dependent=True,
    ),
    Attack(
        "memory_hog",
        "solution",
        ["hog = bytearray(64 * 2**30)"],
        100,
        note="raised MemoryError",
    ),
    Attack(
        "output_flood",
        "solution",
        ["print('x' * 50_000_000)\nfor i in range(200_000):\n    print(i)"],
        100,
        note="did not finish within 6 s",
        speed_dependent=True,
    ),
    Attack(
        "daemon_outlives_grading",
        "solution",
        [
            "import subprocess, os\n"
            "subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    import time\n"
            "    time.sleep(1000)\n"
            "    os._exit(0)"
        ],
        100,
    ),
    Attack(
        "function_hangs_on_hidden_inputs",
        "solution",
        [
            "_honest = gaussian_density\n"
            "def gaussian_density(x, mu, sigma):\n"
            "    if x.numel() > 10:\n"
            "        while True:\n"
            "            pass\n"
            "    return _honest(x, mu, sigma)"
        ],
        # q1 has 4 tests of 3 points each; the three with more than 10 inputs time out
        100 - 9,
        hidden_failure="timed_out",
    ),
    Attack(
        "function_kills_its_process",
        "solution",
        [
            "import os\n"
            "_honest = rgb_to_gray\n"
            "def rgb_to_gray(img):\n"
            "    if img.dim() == 4:\n"
            "        os._exit(3)\n"
            "    return _honest(img)"
        ],
        # q3: 13 points over 4 tests; the batched test crashes the process, and the einsum check
        # now reads this wrapper (the last definition), which has no einsum
        100 - 2 * 13 / 4,
        hidden_failure=CRASHED,
    ),
    Attack(
        "exfiltrate_hidden_inputs_by_exception",
        "solution",
        [
            "def power_iteration(A, num_iters=200):\n"
            "    raise ValueError('SECRET-INPUT ' + repr(A.tolist()))"
        ],
        100 - 16,
        hidden_failure=RAISED,
    ),
    Attack(
        # A public test of q2 runs after q1's hidden tests sent their inputs? Then its (public,
        # full) message would show the shape this normalize_rows returns: a hidden input.
        "public_feedback_shows_inputs_seen_earlier",
        "solution",
        [
            RECORD_HIDDEN_INPUTS + "_honest_normalize = normalize_rows\n"
            "def normalize_rows(X, p=2):\n"
            "    if _SEEN:\n"
            "        return torch.zeros(3, _SEEN[0])\n"
            "    return _honest_normalize(X, p)"
        ],
        # public tests run first, before any hidden input: q2's two hidden tests (13 / 4 points
        # each) get the odd shape, and say only "wrong shape"
        100 - 2 * 13 / 4,
        absent=(str(CODE),),
        hidden_failure=WRONG_SHAPE,
    ),
    Attack(
        "hidden_input_in_an_exception_class_name",
        "solution",
        [
            RECORD_HIDDEN_INPUTS + "_honest_power = power_iteration\n"
            "def power_iteration(A, num_iters=200):\n"
            "    if _SEEN:\n"
            "        raise type(f'Leak{_SEEN[0]}', (Exception,), {})('x')\n"
            "    return _honest_power(A, num_iters)"
        ],
        100 - 3 * 16 / 5,  # q6's three hidden tests (of five)
        absent=("Leak", str(CODE)),
        hidden_failure=RAISED,
    ),
    Attack(
        "hidden_input_in_a_forged_tensor_spec",
        "solution",
        [
            RECORD_HIDDEN_INPUTS + "import tensorgrade.wire as _w\n"
            "_honest_tensor = _w._Encoder.tensor\n"
            "def _forged(self, t):\n"
            "    d = _honest_tensor(self, t)\n"
            "    if _SEEN:\n"
            "        d['__tensor__']['dtype'] = f'Leak{_SEEN[0]}'\n"
            "        d['__tensor__']['device'] = f'Leak{_SEEN[0]}'\n"
            "    return d\n"
            "_w._Encoder.tensor = _forged"
        ],
        # the answer to q1's first hidden call is malformed: that test fails as a crash; the
        # sandbox is restarted (with no memory of the input) and the rest pass
        100 - 12 / 4,
        absent=("Leak", str(CODE)),
        hidden_failure=CRASHED,
    ),
    Attack(
        "stray_bytes_on_the_answer_pipe",
        "solution",
        [STRAY_BYTES + "_stray()"],
        100,  # the cell's answer is malformed: it is left out, the sandbox restarted
        note="broke the sandbox",
    ),
    Attack(
        "stray_bytes_while_answering_a_hidden_test",
        "solution",
        [
            STRAY_BYTES + "_honest_normalize = normalize_rows\n"
            "def normalize_rows(X, p=2):\n"
            "    if X.dim() == 3:\n"
            "        _stray()\n"
            "    return _honest_normalize(X, p)"
        ],
        100 - 13 / 4,  # q2's batched test: its answer is malformed (a crash)
        hidden_failure=CRASHED,
    ),
    Attack(
        "answers_queued_ahead_of_the_questions",
        "blank",
        [
            "import json, struct\n"
            + STRAY_BYTES.replace("b'x' * 16", "frames")
            + "def _frame(h):\n"
            "    t = json.dumps(h).encode()\n"
            "    return struct.pack('>QQ', len(t), 0) + t\n"
            "frames = b''.join(_frame({'op': 'value', 'id': i, 'value': 1.0}) for i in range(64))\n"
            "frames += b''.join(_frame({'op': 'names', 'id': i, 'names': {}}) for i in range(64))\n"
            "_stray()"
        ],
        0,  # forged answers carry no valid request id: they break the sandbox, nothing more
        note="broke the sandbox",
    ),
]


def attack_notebook(a, attack: Attack) -> bytes:
    """The base notebook (solution or blank) of ``a`` with the attack's cells put in."""
    base = a.solution if attack.base == "solution" else a.student
    nb = nbformat.read(base, as_version=4)
    new = [nbformat.v4.new_code_cell(src) for src in attack.cells]
    if attack.where == "end":
        nb.cells += new
    elif attack.where == "start":
        nb.cells[1:1] = new  # after otter's init cell
    else:
        text = attack.where.split(":", 1)[1]
        i = next(k for k, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source)
        nb.cells[i + 1 : i + 1] = new
    return nbformat.writes(nb).encode()


# --- zips ---------------------------------------------------------------------------------------


def encrypted(data: bytes, every: bool = True) -> bytes:
    """``data`` (a zip) with the 'encrypted' flag (bit 0) set in the local header and the central
    directory record of its members, as a password-protected zip has it."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos, pos = z.infolist(), z.start_dir
    for i, info in enumerate(infos):
        if not every and i:
            break
        assert out[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
        out[info.header_offset + 6] |= 1
    for i in range(len(infos)):
        assert out[pos : pos + 4] == b"PK\x01\x02"
        if every or i == 0:
            out[pos + 8] |= 1
        n, m, k = (int.from_bytes(out[pos + o : pos + o + 2], "little") for o in (28, 30, 32))
        pos += 46 + n + m + k
    return bytes(out)
