"""The trusted side of grading: it holds the hidden tests, talks to the sandbox only through
``tensorgrade.wire``, never imports student code and never unpickles student bytes."""
