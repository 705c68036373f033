"""Log lines of several processes sharing one stderr (`--workers N`) never run into each
other: each line is one write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WRITER = """
import sys
import structlog
from gateway import log
if sys.argv[1] == "print":  # structlog's own PrintLogger, for contrast
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
else:
    log.configure("info", "json")
logger = log.get_logger("t").bind(writer=sys.argv[2])
for index in range(3000):
    logger.info("line", index=index, pad="x" * (index % 300))
"""


def write_together(path: Path, mode: str) -> list[str]:
    """Two processes logging 3000 lines each into one file description (as workers share
    the control process's stderr); the lines the file holds."""
    with path.open("wb") as out:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, mode, str(n)], stderr=out, cwd=Path(__file__).parents[2]
            )
            for n in range(2)
        ]
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    return path.read_text().splitlines()


def test_every_line_of_two_processes_is_whole(tmp_path: Path) -> None:
    # With structlog's PrintLogger (print: the text, then the newline) this load gave about
    # 2000 broken lines per run on the 2-core machine; WRITER's "print" mode shows it.
    lines = write_together(tmp_path / "log", "line")
    entries = [json.loads(line) for line in lines]  # each a whole JSON object
    for writer in ("0", "1"):
        assert [e["index"] for e in entries if e["writer"] == writer] == list(range(3000))
