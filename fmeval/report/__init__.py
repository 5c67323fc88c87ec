"""Run results: one typed schema, one writer, views across runs.

- :mod:`~fmeval.report.schema` - :class:`RunResult`, the ``results.json`` schema
- :mod:`~fmeval.report.writer` - :func:`finish`, the only writer of a run folder
- :mod:`~fmeval.report.sections` - mode-specific parts, rendered by ``extras`` key
- :mod:`~fmeval.report.markdown`, :mod:`~fmeval.report.plots`, :mod:`~fmeval.report.terminal` - views
- :mod:`~fmeval.report.runs_index` - ``runs.csv``, append-only, rebuilt from JSON when damaged
- :mod:`~fmeval.report.leaderboard` - grouped leaderboards from ``results.json`` files
"""

from fmeval.report.leaderboard import (  # noqa: F401
    LEADERBOARD_METRICS,
    Leaderboard,
    build_leaderboard,
    leaderboard,
    load_runs,
    print_leaderboard,
    write_leaderboard,
)
from fmeval.report.markdown import render_markdown  # noqa: F401
from fmeval.report.runs_index import RUNS_CSV, append_run  # noqa: F401
from fmeval.report.schema import (  # noqa: F401
    RESULTS_FILE,
    SCHEMA_KEYS,
    SCHEMA_VERSION,
    ReportError,
    RunResult,
    jsonable,
    new_run_id,
    reports_dir,
)
from fmeval.report.terminal import print_result  # noqa: F401
from fmeval.report.writer import REPORT_FILE, ReportNotWritten, check_writable, finish, write_report  # noqa: F401
