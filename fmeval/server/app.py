"""The HTTP layer: Starlette routes over :mod:`fmeval.server.service`, Jinja2 pages with autoescape.

Starlette (the ASGI toolkit under FastAPI) is small, typed and run in
production by uvicorn/gunicorn; every page is server-rendered, so the site works
without JavaScript. Security defaults: no debug, no CORS middleware (same
origin only), HttpOnly SameSite=Lax session cookies (Secure with
``--secure-cookies`` behind TLS), a per-session CSRF token on every form, a
``Content-Security-Policy`` that forbids inline scripts, and every user string
escaped by the template engine.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fmeval.server import auth
from fmeval.server.models import Team, utcnow
from fmeval.server.scoring import LEADERBOARD_METRICS, RANKED, SubmissionError
from fmeval.server.service import AuthError, Leaderboard, LimitError, submission_summary
from fmeval.server.throttle import TooManyAttempts

COOKIE = "fmeval_session"
PRE_COOKIE = "fmeval_csrf"  # a visitor's pre-session cookie: the login and register forms' CSRF tokens are bound to it
STALE = "the form's CSRF token is missing or stale; reload the page and try again."
TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                        autoescape=select_autoescape(default=True, default_for_string=True))
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
           "script-src 'none'; frame-ancestors 'none'", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}


def _fmt(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


TEMPLATES.filters["num"] = _fmt


class _Site:
    """The leaderboard's request handlers, bound to one :class:`Leaderboard`.

    A class rather than closures in :func:`create_app`, so each handler is a method of one job
    and the app factory is only the route table."""

    def __init__(self, lb: Leaderboard) -> None:
        self.lb = lb

    def page(self, request: Request, name: str, status: int = 200, headers: dict | None = None, **ctx) -> HTMLResponse:
        """A rendered page. Every visitor has a pre-session cookie (made here when missing) and
        ``form_csrf``, the login and register forms' token bound to that cookie."""
        pre = request.cookies.get(PRE_COOKIE) or None
        with self.lb.sessions() as db:
            s = self.lb.session_of(db, request.cookies.get(COOKIE))
            me = {"name": db.get(Team, s.team_id).name, "csrf": self.lb.session_csrf(db, request.cookies[COOKIE])} \
                if s else None
            fresh = None
            if pre is None:
                pre = fresh = auth.new_secret()
            form_csrf = auth.form_token(self.lb.secret(db), pre)
        html = TEMPLATES.get_template(name).render(me=me, form_csrf=form_csrf, sizes=self.lb.labels.sizes, metrics=RANKED,
                                                   metric_labels={m: LEADERBOARD_METRICS.entry(m).tags["label"] for m in RANKED},
                                                   labels=self.lb.labels, **ctx)
        resp = HTMLResponse(html, status_code=status, headers={**HEADERS, **(headers or {})})
        if fresh:
            resp.set_cookie(PRE_COOKIE, fresh, httponly=True, samesite="lax", secure=self.lb.settings.secure_cookies, path="/")
        return resp

    def pre_session_ok(self, request: Request, form) -> bool:
        """The login/register form's token is the HMAC of this visitor's pre-session cookie (constant time)."""
        pre = request.cookies.get(PRE_COOKIE)
        if not pre:
            return False
        with self.lb.sessions() as db:
            return auth.same(form.get("csrf"), auth.form_token(self.lb.secret(db), pre))

    def error(self, request: Request, message: str, status: int = 400) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": message}, status_code=status, headers=HEADERS)
        return self.page(request, "error.html", status=status, message=message)

    def current(self, request: Request):
        """(team, session) of the cookie, or (team, None) of a Bearer token, or (None, None); an unknown
        or revoked token's one-line reason is kept in the request for the 401 answer."""
        with self.lb.sessions() as db:
            authz = request.headers.get("authorization", "")
            if authz.lower().startswith("bearer "):
                try:
                    return self.lb.team_of_token(db, authz[7:].strip()), None
                except AuthError as exc:
                    request.scope["fmeval_auth_error"] = str(exc)
                    return None, None
            s = self.lb.session_of(db, request.cookies.get(COOKIE))
            return (db.get(Team, s.team_id), s) if s else (None, None)

    async def form_with_csrf(self, request: Request, session) -> dict:
        """The form of a logged-in page; its token must be the session's (derived from the cookie, constant time)."""
        form = await request.form(max_files=1, max_fields=20, max_part_size=self.lb.settings.limits.max_upload_bytes)
        if session is not None:
            with self.lb.sessions() as db:
                expected = self.lb.session_csrf(db, request.cookies.get(COOKIE, ""))
            if not auth.same(form.get("csrf"), expected):
                raise AuthError(STALE)
        return form

    def too_many(self, request: Request, name: str, exc: TooManyAttempts) -> Response:
        """429 on the form's page with the refusal and ``Retry-After`` (seconds until one more attempt is let in)."""
        wait = max(1, int((exc.retry_at - utcnow()).total_seconds()) + 1)
        return self.page(request, name, status=429, message=str(exc), headers={"Retry-After": str(wait)})

    # -- pages ------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        size = int(request.query_params.get("size", self.lb.labels.sizes[0]))
        metric = request.query_params.get("metric", "auc")
        try:
            top = int(request.query_params.get("top", self.lb.settings.top))
            with self.lb.sessions() as db:
                board = self.lb.ranking(db, size, metric, top=max(1, min(top, 1000)))
        except (SubmissionError, ValueError) as exc:
            return self.error(request, str(exc))
        if _wants_json(request):
            return JSONResponse(board, headers=HEADERS)
        return self.page(request, "leaderboard.html", board=board, baseline_comparable=self.lb.benchmark_is_twelve)

    async def api_leaderboard(self, request: Request) -> Response:
        request.scope["fmeval_json"] = True
        return await self.index(request)

    async def submission(self, request: Request) -> Response:
        try:
            with self.lb.sessions() as db:
                sub = self.lb.detail(db, int(request.path_params["sid"]))
                data = {**submission_summary(sub), "scores": [
                    {"dataset": s.dataset, "n": s.n, "sha256": s.sha256,
                     **{m: getattr(s, m) for m in ("auc", "balanced_acc", "kappa", "acc", "precision")}, **s.detail}
                    for s in sub.scores]}
        except SubmissionError as exc:
            return self.error(request, str(exc), 404)
        if _wants_json(request):
            return JSONResponse(data, headers=HEADERS)
        return self.page(request, "submission.html", sub=data)

    async def compare(self, request: Request) -> Response:
        q = request.query_params
        try:
            with self.lb.sessions() as db:
                data = await run_in_threadpool(self.lb.compare, db, int(q.get("a", 0)), int(q.get("b", 0)),
                                               q.get("metric", "auc"))
        except (SubmissionError, ValueError) as exc:
            return self.error(request, str(exc))
        if _wants_json(request):
            return JSONResponse(data, headers=HEADERS)
        from fmeval.server.plots import comparison_png

        return self.page(request, "compare.html", cmp=data, figure=await run_in_threadpool(comparison_png, data))

    async def team(self, request: Request) -> Response:
        try:
            with self.lb.sessions() as db:
                t, subs = self.lb.team_page(db, request.path_params["name"])
                rows = [submission_summary(s) for s in subs]
        except SubmissionError as exc:
            return self.error(request, str(exc), 404)
        if _wants_json(request):
            return JSONResponse({"team": t.name, "submissions": rows}, headers=HEADERS)
        return self.page(request, "team.html", team=t.name, rows=rows)

    # -- accounts ---------------------------------------------------------------------------
    async def register(self, request: Request) -> Response:
        if request.method == "GET":
            return self.page(request, "register.html")
        form = await request.form(max_files=0, max_fields=10)
        if not self.pre_session_ok(request, form):
            return self.page(request, "register.html", status=403, message=STALE)
        try:
            with self.lb.sessions() as db:
                await run_in_threadpool(self.lb.register, db, str(form.get("team", "")), str(form.get("email", "")),
                                        str(form.get("password", "")), _address(request))
        except TooManyAttempts as exc:
            return self.too_many(request, "register.html", exc)
        except AuthError as exc:
            return self.page(request, "register.html", status=400, message=str(exc))
        return await self._login_response(request, str(form.get("email", "")), str(form.get("password", "")),
                                     throttled=False)  # the password was set a moment ago: not a guess

    async def _login_response(self, request: Request, email: str, password: str, throttled: bool = True) -> Response:
        try:
            with self.lb.sessions() as db:
                cookie, _ = await run_in_threadpool(self.lb.login, db, email, password, _address(request), throttled)
        except TooManyAttempts as exc:
            return self.too_many(request, "login.html", exc)
        except AuthError as exc:
            return self.page(request, "login.html", status=400, message=str(exc))
        resp = RedirectResponse("/me", status_code=303, headers=HEADERS)
        resp.set_cookie(COOKIE, cookie, max_age=14 * 86400, httponly=True, samesite="lax",
                        secure=self.lb.settings.secure_cookies, path="/")
        return resp

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.page(request, "login.html")
        form = await request.form(max_files=0, max_fields=10)
        if not self.pre_session_ok(request, form):
            return self.page(request, "login.html", status=403, message=STALE)
        return await self._login_response(request, str(form.get("email", "")), str(form.get("password", "")))

    async def logout(self, request: Request) -> Response:
        t, s = self.current(request)
        try:
            if s is not None:
                await self.form_with_csrf(request, s)
        except AuthError as exc:
            return self.error(request, str(exc), 403)
        with self.lb.sessions() as db:
            self.lb.logout(db, request.cookies.get(COOKIE))
        resp = RedirectResponse("/", status_code=303, headers=HEADERS)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    async def me(self, request: Request) -> Response:
        t, s = self.current(request)
        if t is None:
            if _wants_json(request):
                return self.error(request, request.scope.get("fmeval_auth_error") or "log in or send an API token.", 401)
            return RedirectResponse("/login", status_code=303)
        return self.my_page(request, t)

    def my_page(self, request: Request, t, token: str | None = None, message: str | None = None, status: int = 200) -> Response:
        with self.lb.sessions() as db:
            _, subs = self.lb.team_page(db, t.name)
            rows = [submission_summary(x) for x in subs]
            nxt = self.lb.next_allowed(db, t.id)
            tokens = [{"id": k.id, "prefix": k.prefix, "created": k.created.isoformat(timespec="seconds"),
                       "revoked": k.revoked} for k in self.lb.tokens(db, t.id)]
        if _wants_json(request):
            return JSONResponse({"team": t.name, "submissions": rows, "tokens": tokens,
                                 "next_allowed": nxt.isoformat(timespec="seconds") if nxt and nxt != datetime.max
                                 else None, "limit_reached": nxt is not None}, headers=HEADERS)
        return self.page(request, "me.html", status=status, rows=rows, next_allowed=nxt, token=token,
                    tokens=tokens, message=message)

    async def session_form(self, request: Request, action: str):
        """(team, None) for a logged-in browser's form with its session's CSRF token, else (None, the
        refusal: 401 "log in to <action>." without a session, 403 for a missing or stale token)."""
        t, s = self.current(request)
        if t is None or s is None:
            return None, self.error(request, f"log in to {action}.", 401)
        try:
            await self.form_with_csrf(request, s)
        except AuthError as exc:
            return None, self.error(request, str(exc), 403)
        return t, None

    async def new_token(self, request: Request) -> Response:
        t, refused = await self.session_form(request, "create an API token")
        if refused is not None:
            return refused
        with self.lb.sessions() as db:
            token = self.lb.new_token(db, t.id)
        return self.my_page(request, t, token=token)

    async def revoke_token(self, request: Request) -> Response:
        """POST /tokens/{id}/revoke: the team's own token, from its page (session + CSRF)."""
        t, refused = await self.session_form(request, "revoke an API token")
        if refused is not None:
            return refused
        try:
            with self.lb.sessions() as db:
                row = self.lb.revoke_token(db, request.path_params["tid"], t.id)
        except AuthError as exc:
            return self.error(request, str(exc), 403)
        except SubmissionError as exc:
            return self.error(request, str(exc), 404)
        return self.my_page(request, t, message=f"API token {row.prefix}... revoked; it is refused from now on.")

    async def api_revoke_token(self, request: Request) -> Response:
        """POST /api/tokens/revoke with ``Authorization: Bearer <token>``: revokes that token itself."""
        authz = request.headers.get("authorization", "")
        if not authz.lower().startswith("bearer "):
            return JSONResponse({"error": "send the token to revoke: Authorization: Bearer <token>."},
                                status_code=401, headers=HEADERS)
        try:
            with self.lb.sessions() as db:
                row = self.lb.revoke_presented(db, authz[7:].strip())
        except AuthError as exc:
            return JSONResponse({"error": str(exc)}, status_code=401, headers=HEADERS)
        return JSONResponse({"revoked": row.prefix, "id": row.id}, headers=HEADERS)

    async def upload(self, request: Request) -> Response:
        """POST /submit (form, CSRF) and POST /api/submissions (Bearer token): one zip, one resolution."""
        t, s = self.current(request)
        if t is None:
            return self.error(request, request.scope.get("fmeval_auth_error") or "log in (or send an API token) to submit.", 401)
        if request.headers.get("content-length", "0").isdigit() and \
                int(request.headers.get("content-length", "0")) > self.lb.settings.limits.max_upload_bytes + 65536:
            return self.error(request, f"upload larger than {self.lb.settings.limits.max_upload_bytes} bytes.", 413)
        try:
            form = await self.form_with_csrf(request, s)
            upload = form.get("file")
            if upload is None or not hasattr(upload, "read"):
                raise SubmissionError("attach the zip of prediction CSVs as the form field 'file'.")
            data = await upload.read(self.lb.settings.limits.max_upload_bytes + 1)  # chunked uploads have no length
            if len(data) > self.lb.settings.limits.max_upload_bytes:
                return self.error(request, f"upload larger than {self.lb.settings.limits.max_upload_bytes} bytes.", 413)
            with self.lb.sessions() as db:
                sub = await run_in_threadpool(
                    self.lb.submit, db, t, data, size=_size(form.get("size")),
                    model_name=str(form.get("model_name", "")), description=str(form.get("description", "")),
                    study_url=str(form.get("study_url", "")))
                sid, summary = sub.id, submission_summary(sub)
        except LimitError as exc:
            return self.error(request, str(exc), 429)
        except AuthError as exc:
            return self.error(request, str(exc), 403)
        except (SubmissionError, ValueError) as exc:
            return self.error(request, str(exc), 400)
        if _wants_json(request):
            return JSONResponse(summary, status_code=201, headers=HEADERS)
        return RedirectResponse(f"/submissions/{sid}", status_code=303, headers=HEADERS)

    async def api_upload(self, request: Request) -> Response:
        request.scope["fmeval_json"] = True
        if not request.headers.get("authorization", "").lower().startswith("bearer "):
            return self.error(request, "send an API token: Authorization: Bearer <token>.", 401)
        return await self.upload(request)


def _json_twin(fn):
    """The same handler answering JSON (the ``/api/...`` twin of a page)."""
    async def twin(request: Request) -> Response:
        request.scope["fmeval_json"] = True
        return await fn(request)
    return twin


def create_app(lb: Leaderboard) -> Starlette:
    site = _Site(lb)
    routes = [
        Route("/", site.index), Route("/api/leaderboard", site.api_leaderboard),
        Route("/submissions/{sid:int}", site.submission), Route("/api/submissions/{sid:int}", _json_twin(site.submission)),
        Route("/compare", site.compare), Route("/api/compare", _json_twin(site.compare)),
        Route("/teams/{name}", site.team), Route("/api/teams/{name}", _json_twin(site.team)),
        Route("/register", site.register, methods=["GET", "POST"]), Route("/login", site.login, methods=["GET", "POST"]),
        Route("/logout", site.logout, methods=["POST"]), Route("/me", site.me), Route("/api/me", _json_twin(site.me)),
        Route("/tokens", site.new_token, methods=["POST"]),
        Route("/tokens/{tid:int}/revoke", site.revoke_token, methods=["POST"]),
        Route("/api/tokens/revoke", site.api_revoke_token, methods=["POST"]),
        Route("/submit", site.upload, methods=["POST"]), Route("/api/submissions", site.api_upload, methods=["POST"]),
    ]
    return Starlette(debug=False, routes=routes)


def _size(value) -> int:
    text = str(value or "").strip()
    if not text.isdigit():
        raise SubmissionError(f"resolution must be a number of pixels (28, 64, 128 or 224), got {text!r}.")
    return int(text)


def _address(request: Request) -> str:
    """The client's address (uvicorn puts a trusted proxy's X-Forwarded-For here): the rate limits' key."""
    return request.client.host if request.client else ""


def _wants_json(request: Request) -> bool:
    return bool(request.scope.get("fmeval_json"))
