"""The leaderboard server: teams submit predictions, the server scores them against labels it holds.

A top-floor room beside :mod:`fmeval.cli`: it calls the same validation
(:mod:`fmeval.predictions`) and metrics (:mod:`fmeval.metrics`) as ``fmeval
score``, and nothing below imports it. Everything here needs the optional
extra ``fmeval[server]`` (Starlette, uvicorn, Jinja2, SQLAlchemy, Alembic).

- :mod:`~fmeval.server.labels` - the test labels, read from the server's own files (MD5 checked)
- :mod:`~fmeval.server.scoring` - zip checks, per-dataset validation and the leaderboard's metrics
- :mod:`~fmeval.server.models`, :mod:`~fmeval.server.db` - tables, engine, Alembic migrations
- :mod:`~fmeval.server.service` - accounts, limits, submissions, rankings, comparisons
- :mod:`~fmeval.server.app` - the HTTP routes and pages
- :mod:`~fmeval.server.client` - ``fmeval submit``'s packing and upload
"""

from __future__ import annotations

EXTRA_HINT = "the leaderboard server needs the optional extra: pip install 'fmeval[server]'"


def build(settings, *, migrate: bool = True):
    """(Leaderboard, ASGI app) for ``settings``: labels read and checked, database migrated,
    baselines loaded (``migrate=False``: a worker process of a server whose parent did both)."""
    from fmeval.server.app import create_app
    from fmeval.server.db import open_db
    from fmeval.server.labels import LabelStore
    from fmeval.server.service import Leaderboard

    labels = LabelStore(settings.datasets, settings.sizes, settings.data_root, md5=settings.md5)
    _, sessions = open_db(settings.db, migrate=migrate)
    lb = Leaderboard(settings, labels, sessions)
    if migrate:
        with sessions() as db:
            lb.preload_baselines(db)
    return lb, create_app(lb)


def worker_app():
    """The ASGI app of one worker of ``fmeval serve --workers N`` (uvicorn's factory): the settings
    travel from the parent in ``FMEVAL_SERVER_SETTINGS``; the parent has migrated the database."""
    import json

    from fmeval.server.service import ServerSettings
    from fmeval.settings import env

    raw = json.loads(env("FMEVAL_SERVER_SETTINGS") or "{}")
    return build(ServerSettings.from_json(raw), migrate=False)[1]
