"""Feedback reports: one HTML page per submission for the student, and a summary for the instructor.

Both are self-contained files (inline CSS, images as ``data:`` URIs, no JavaScript, no network), so
they can be mailed, uploaded to an LMS or opened from a USB stick. See ``student.py`` for what a
student page may show of hidden tests.
"""

from .folder import page_names, write_reports
from .student import student_report
from .summary import summary_report

__all__ = ["page_names", "student_report", "summary_report", "write_reports"]
