"""Code that runs INSIDE the sandbox, next to the student's code. Nothing here is trusted by the
judge: it only answers requests with data (see ``tensorgrade.wire``)."""
