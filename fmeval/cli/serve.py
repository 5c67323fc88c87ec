"""``fmeval serve`` (the leaderboard server), ``fmeval submit`` (upload predictions) and
``fmeval server hide|unhide|token`` (admin commands on the server's database)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmeval.cli.app import ReportsDir, app, console, user_defaults
from fmeval.errors import ConfigError

server_app = typer.Typer(help="Administer a leaderboard server's database.", no_args_is_help=True)
app.add_typer(server_app, name="server")

DbOption = Annotated[str, typer.Option("--db", help="SQLAlchemy URL of the database (default: SQLite file "
                                       "leaderboard.sqlite3 here; postgresql+psycopg://... for a server database).")]


def _need_extra():
    try:
        import fmeval.server.app  # noqa: F401
    except ModuleNotFoundError as exc:
        from fmeval.server import EXTRA_HINT

        raise ConfigError(f"{EXTRA_HINT} ({exc.name} is missing).") from None


def _check_db(db: str, must_exist: bool = False) -> str:
    """A SQLAlchemy URL (refused before anything is created); ``must_exist``: an admin command
    on a SQLite file that is not there would create an empty database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(db)
    except ArgumentError:
        raise ConfigError(f"--db {db!r} is not a SQLAlchemy URL (sqlite:///file.sqlite3, "
                          "postgresql+psycopg://user:pass@host/db).") from None
    if must_exist and url.get_backend_name() == "sqlite" and not Path(url.database or "").expanduser().is_file():
        raise ConfigError(f"--db {db}: no database file {url.database!r} (start fmeval serve on it first).")
    return db


def _check_host(host: str, port: int) -> None:
    import socket

    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ConfigError(f"--host {host!r} is not an address of this machine (127.0.0.1, 0.0.0.0, ::1 or a "
                          "name that resolves).") from None


def _csv_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected a comma-separated list, got {text!r}.") from None
    if not items:
        raise ConfigError(f"{what} is empty.")
    return items


def _settings(db: str, datasets: str | None = None, sizes: str = "28,64,128,224", data_root: Path | None = None,
              md5: str = "warn", daily_limit: int = 10, total_limit: int = 100, secure_cookies: bool = False):
    from fmeval.data import dataset_info
    from fmeval.server.service import TWELVE_2D, ServerSettings
    from fmeval.settings import data_root as env_data_root

    from fmeval.errors import DataError
    from fmeval.validation import check_folder

    flags = _csv_list(datasets, "--datasets") if datasets else list(TWELVE_2D)
    for f in flags:
        try:
            if dataset_info(f).is_volume:
                raise ConfigError(f"--datasets: {f} is a 3D dataset; the leaderboard ranks 2D datasets.")
        except DataError as exc:
            raise ConfigError(f"--datasets: {exc}") from None
    size_list = _csv_list(sizes, "--sizes", int)
    if bad := [z for z in size_list if z not in (28, 64, 128, 224)]:
        raise ConfigError(f"--sizes: {', '.join(map(str, bad))} is not a MedMNIST+ size (28, 64, 128, 224).")
    if md5 not in ("warn", "strict"):
        raise ConfigError(f"--md5 must be warn or strict, not {md5!r}.")
    root = check_folder(data_root, "--data-root") if data_root else env_data_root()
    if data_root is not None and not Path(data_root).expanduser().is_dir():
        raise ConfigError(f"--data-root {data_root} is not a folder.")
    return ServerSettings(db=db, datasets=flags, sizes=size_list, data_root=str(root) if root else None,
                          md5=md5, daily_limit=daily_limit, total_limit=total_limit, secure_cookies=secure_cookies)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only; put a reverse "
                                      "proxy in front for the world).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    db: DbOption = "sqlite:///leaderboard.sqlite3",
    datasets: Annotated[Optional[str], typer.Option(help="Comma-separated dataset flags a complete submission "
                                                    "covers \\[default: the 12 2D MedMNIST+ datasets].")] = None,
    sizes: Annotated[str, typer.Option(help="Resolutions to open (each needs every dataset's file).")] = "28,64,128,224",
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Folder with the MedMNIST npz files "
                                                      "holding the test labels \\[env FMEVAL_DATA_ROOT].")] = None,
    md5: Annotated[str, typer.Option(help="warn: show files that are not the official ones; strict: refuse to start.")] = "warn",
    daily_limit: Annotated[int, typer.Option(help="Submissions per team in any 24 hours.", min=1)] = 10,
    total_limit: Annotated[int, typer.Option(help="Submissions per team in total.", min=1)] = 100,
    secure_cookies: Annotated[bool, typer.Option(help="Mark cookies Secure (serving behind TLS).")] = False,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for each dataset's CIs.", min=0)] = 200,
    workers: Annotated[int, typer.Option(help="Worker processes (uvicorn); limits hold across them.", min=1)] = 1,
    max_upload_mb: Annotated[int, typer.Option(help="Largest accepted upload (the zip), in MB.", min=1)] = 50,
    login_attempts: Annotated[int, typer.Option(help="Login attempts per account (email) in the window.",
                                                min=1)] = 5,
    login_attempts_per_address: Annotated[int, typer.Option(help="Login attempts per client address in the window.",
                                                            min=1)] = 20,
    login_window: Annotated[int, typer.Option(help="The login rate limit's sliding window, in minutes.", min=1)] = 15,
    registrations_per_address: Annotated[int, typer.Option(
        help="Registration attempts per client address in the window (a valid form counts, even one "
        "answered 'already registered').", min=1)] = 5,
    registration_window: Annotated[int, typer.Option(help="The registration limit's sliding window, in minutes.",
                                                     min=1)] = 60,
) -> None:
    """Run the leaderboard server: teams upload prediction zips, the server scores them against its own labels."""
    _need_extra()
    import logging

    import uvicorn

    from fmeval.server import build

    _check_host(host, port)
    settings = _settings(db, datasets, sizes, data_root, md5, daily_limit, total_limit, secure_cookies)
    _check_db(db)
    from dataclasses import replace

    settings.n_boot = bootstrap
    settings.limits = replace(settings.limits, max_upload_bytes=max_upload_mb << 20)
    from fmeval.server.throttle import LoginLimits, RegistrationLimits

    settings.login = LoginLimits(per_account=login_attempts, per_address=login_attempts_per_address,
                                 window_s=login_window * 60)
    settings.registration = RegistrationLimits(per_address=registrations_per_address,
                                               window_s=registration_window * 60)
    lb, asgi = build(settings)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    console.print(f"leaderboard: {len(settings.datasets)} datasets, sizes {', '.join(map(str, lb.labels.sizes))} open"
                  + (f" (no files for {', '.join(lb.labels.missing)})" if lb.labels.missing else "")
                  + f"; database {settings.db}; http://{host}:{port}/", highlight=False, soft_wrap=True)
    common = dict(host=host, port=port, log_level="info", proxy_headers=True, server_header=False)
    if workers == 1:
        uvicorn.run(asgi, **common)
        return
    import json
    import os

    os.environ["FMEVAL_SERVER_SETTINGS"] = json.dumps(settings.to_json())  # read by each worker (settings.env)
    uvicorn.run("fmeval.server:worker_app", factory=True, workers=workers, **common)


@app.command()
def submit(
    study_or_folder: Annotated[str, typer.Argument(
        help="A study (shipped name or YAML, as for fmeval study run) whose finished runs "
        "are packed, or a folder of <dataset>.csv prediction files or of fmeval runs (each with predictions.csv).",
        show_default=False)],
    server: Annotated[str, typer.Option(help="The leaderboard's base URL.", show_default=False)],
    token: Annotated[str, typer.Option(envvar="FMEVAL_LEADERBOARD_TOKEN", help="API token (from your team page).",
                                       show_default=False)],
    model_name: Annotated[str, typer.Option("--model-name", help="The name shown on the leaderboard.",
                                            show_default=False)],
    size: Annotated[Optional[int], typer.Option(help="Resolution \\[default: the runs' own].", min=1)] = None,
    select: Annotated[Optional[list[str]], typer.Option(
        "--select", help="A study: keep the runs with AXIS=VALUE (model, mode, seed, input_size, style, shots); "
        "repeat until one run per dataset is left.", show_default=False)] = None,
    reports_dir: ReportsDir = None,
    description: Annotated[str, typer.Option(help="Free text shown on the submission page.")] = "",
    study_url: Annotated[str, typer.Option("--study-url", help="Link to a paper or study (marked on the board).")] = "",
) -> None:
    """Pack a study's (or a folder's) predictions into a zip and upload it to a leaderboard server."""
    import tempfile

    from fmeval.server.auth import TOKEN_PREFIX
    from fmeval.server.client import collect, pack, upload

    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"--server must be an http(s) URL, got {server!r}.")
    if not token.startswith(TOKEN_PREFIX) or len(token) < 20:
        raise ConfigError(f"--token: not an fmeval API token ({TOKEN_PREFIX}..., from your team page).")
    if not 1 <= len(model_name.strip()) <= 200:
        raise ConfigError("--model-name must have 1-200 characters.")
    if len(description) > 5000:
        raise ConfigError("--description must have at most 5000 characters.")
    if study_url and not study_url.startswith(("http://", "https://")):
        raise ConfigError(f"--study-url must be an http(s) URL, got {study_url!r}.")
    from fmeval.validation import check_folder

    check_folder(reports_dir, "--reports-dir")
    target = study_or_folder
    folder = Path(target).expanduser()
    with tempfile.TemporaryDirectory(prefix="fmeval-submit-") as work:
        if folder.is_dir():
            if select:
                raise ConfigError("--select picks runs of a study; a folder is submitted as it is.")
            files, found_size = collect(folder, size)
        else:
            files, found_size = _study_files(target, size, select or [], reports_dir, Path(work))
        if found_size is None:
            raise ConfigError("the CSVs do not say their resolution; pass --size.")
        data = pack(files)
    answer = upload(server, token, data, {"size": str(found_size), "model_name": model_name,
                                          "description": description, "study_url": study_url})
    status = "complete" if answer.get("complete") else "incomplete (not ranked)"
    means = "; ".join(f"{m} {v['mean']:.4f}" for m, v in (answer.get("means") or {}).items() if v.get("mean") is not None)
    console.print(f"submission {answer['id']}: {len(files)} datasets at {found_size} px, {status}"
                  + (f"; {means}" if means else "") + f"; {server.rstrip('/')}/submissions/{answer['id']}",
                  highlight=False, soft_wrap=True)


def _study_files(target: str, size: int | None, select: list[str], reports_dir: Path | None, work: Path):
    """A study's chosen runs as <dataset>.csv files in ``work`` (``fmeval predict``'s path), said line by line."""
    from fmeval.server.packing import parse_selects, study_predictions
    from fmeval.settings import data_root, reports_root
    from fmeval.studies.plan import plan_study
    from fmeval.studies.spec import StudyError, load_study, resolve_study_path

    picks = parse_selects(select)
    try:
        path = resolve_study_path(target)
    except StudyError as exc:
        raise ConfigError(f"{target} is neither a folder of predictions nor a study: {exc}") from None
    spec, digest = load_study(path)
    plan = plan_study(spec, digest, reports_root=reports_dir or reports_root(), user=user_defaults())
    root = data_root()
    files, found_size, said = study_predictions(plan, size, picks, work, str(root) if root else None)
    for line in said:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    return files, found_size


@server_app.command("rescore")
def rescore(
    db: DbOption = "sqlite:///leaderboard.sqlite3",
    datasets: Annotated[Optional[str], typer.Option(help="As for fmeval serve.")] = None,
    sizes: Annotated[str, typer.Option(help="As for fmeval serve.")] = "28,64,128,224",
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="As for fmeval serve.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for each dataset's CIs.", min=0)] = 200,
) -> None:
    """Recompute every submission's scores from the predictions the server kept (e.g. after a metric fix)."""
    _need_extra()
    from fmeval.server import build

    settings = _settings(db, datasets, sizes, data_root)
    _check_db(db, must_exist=True)
    settings.n_boot = bootstrap
    lb, _ = build(settings)
    with lb.sessions() as s:
        n = lb.rescore(s)
    console.print(f"rescored {n} submissions.", highlight=False)


def _open(db: str):
    _need_extra()
    from fmeval.server.db import open_db

    return open_db(_check_db(db, must_exist=True))[1]


@server_app.command("hide")
def hide(submission_id: Annotated[int, typer.Argument(help="Submission id.")], db: DbOption = "sqlite:///leaderboard.sqlite3",
         unhide: Annotated[bool, typer.Option("--unhide", help="Show it again.")] = False) -> None:
    """Hide a submission from every page and ranking (or show it again with --unhide)."""
    _need_extra()

    from fmeval.server.models import Submission

    sessions = _open(db)
    with sessions() as s:
        sub = s.get(Submission, submission_id)
        if sub is None:
            raise ConfigError(f"no submission {submission_id} in {db}.")
        sub.hidden = not unhide
        s.commit()
        console.print(f"submission {submission_id} ({sub.model_name}) {'shown' if unhide else 'hidden'}.", highlight=False)


@server_app.command("tokens")
def tokens(db: DbOption = "sqlite:///leaderboard.sqlite3",
           team: Annotated[Optional[str], typer.Option(help="Only this team's tokens.")] = None) -> None:
    """List the API tokens (id, team, prefix, created, revoked); the server keeps no token itself."""
    _need_extra()
    from sqlalchemy import select

    from fmeval.server.models import ApiToken, Team

    _check_team(team)
    sessions = _open(db)
    with sessions() as s:
        q = select(ApiToken, Team.name).join(Team, Team.id == ApiToken.team_id).order_by(ApiToken.id)
        if team is not None:
            if s.scalar(select(Team).where(Team.name == team)) is None:
                raise ConfigError(f"no team {team!r} in {db}.")
            q = q.where(Team.name == team)
        rows = s.execute(q).all()
    for tok, name in rows:
        console.print(f"{tok.id}\t{name}\t{tok.prefix}...\t{tok.created:%Y-%m-%d %H:%M}\t"
                      + ("revoked" if tok.revoked else "live"), highlight=False, markup=False, soft_wrap=True)
    if not rows:
        console.print("no API tokens.", highlight=False)


@server_app.command("revoke-token")
def revoke_token(
    token_id: Annotated[Optional[int], typer.Argument(help="Token id (from fmeval server tokens).",
                                                      show_default=False)] = None,
    db: DbOption = "sqlite:///leaderboard.sqlite3",
    team: Annotated[Optional[str], typer.Option(help="Revoke every token of this team instead.")] = None,
) -> None:
    """Revoke an API token (or all of a team's): the server refuses it from then on."""
    _need_extra()
    from sqlalchemy import select

    from fmeval.server.models import ApiToken, Team

    if (token_id is None) == (team is None):
        raise ConfigError("give a token id or --team NAME (not both).")
    _check_team(team)
    sessions = _open(db)
    with sessions() as s:
        if team is not None:
            t = s.scalar(select(Team).where(Team.name == team))
            if t is None:
                raise ConfigError(f"no team {team!r} in {db}.")
            rows = list(s.scalars(select(ApiToken).where(ApiToken.team_id == t.id, ApiToken.revoked.is_(False))))
        else:
            row = s.get(ApiToken, token_id)
            if row is None:
                raise ConfigError(f"no API token {token_id} in {db}.")
            rows = [row]
        for row in rows:
            row.revoked = True
        s.commit()
        console.print(f"revoked {len(rows)} API token(s): " + (", ".join(f"{r.id} ({r.prefix}...)" for r in rows) or "none live"),
                      highlight=False, markup=False, soft_wrap=True)


def _check_team(team: str | None) -> None:
    if team is not None and not team.strip():
        raise ConfigError("--team is empty; give a team name.")
