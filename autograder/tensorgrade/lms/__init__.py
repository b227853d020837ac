"""Send grading results to learning management systems: Canvas (REST push) and CSV imports.

Everything here starts from a results folder written by `tensorgrade grade` and a roster CSV that
maps each submission folder to a student, so that every LMS sees the same scores.
"""
