"""Every bad value of every option of every command: one line, exit 2, nothing done.

The cases are generated, not listed: each command of the Typer app is walked,
each of its parameters gets bad values chosen by its type and declared range
(and, for the evaluation commands, by its entry in the option table of
``fmeval/cli/options.py``: lists, exclusive minimums). A new option or
command is therefore fuzzed without touching this file.

Each case runs ``fmeval.cli.main`` in a temporary working directory, with the
data, cache, reports and adapters folders inside it, and checks: exit status
2; stderr is at most the usage line plus one ``error:`` line that names the
option or the bad value; no traceback; no file or folder created anywhere in
the directory; no model built (building one raises an exception no handler
catches). Usage errors of issue 8 (missing options, unknown options with a
close match, wrong types) are checked on every command too.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
import typer.models

from fmeval.cli import app, main
from fmeval.cli.options import LIST_KINDS
from helpers import ROBUSTNESS_INSTALL, require_extra
from fmeval.data.synthetic import write_synthetic

BOGUS = "zz-bogus"
DATA = "data"  # synthetic PneumoniaMNIST inside the working directory
AFILE = "a-file.txt"  # an existing regular file: wrong wherever a folder is expected
EMPTY_DIR = "empty-dir"  # an existing empty folder (not a fine-tuning run)

FROZEN = ("--model", "vit-s16", "--tiny", "--dataset", "pneumoniamnist", "--data-root", DATA)
VISION_LANGUAGE = ("--model", "clip-vit-b16", "--tiny", "--dataset", "pneumoniamnist", "--data-root", DATA)
# A valid command line per command (only the bad option makes it fail); () when nothing is needed.
BASE: dict[str, tuple[str, ...]] = {
    "features": FROZEN,
    "knn": FROZEN,
    "linprobe": FROZEN,
    "zeroshot": VISION_LANGUAGE,
    "prompts compare": VISION_LANGUAGE,
    "finetune": ("--lora",) + FROZEN,
    "evaluate": ("--adapter", EMPTY_DIR),
    "protocols show": ("medmnist-plus",),
    "models show": ("vit-s16", "--tiny"),
    "study plan": ("quick",),
    "study run": ("quick",),
    "study report": ("quick",),
    "weights fetch": ("medclip",),
    "robustness": FROZEN + ("--head", "knn"),  # knn: --k is checked against the training set
    "score": ("preds.csv", "--dataset", "pneumoniamnist", "--data-root", DATA),
    "predict": ("--out", "p.csv", "--adapter", EMPTY_DIR),
    "data check": ("pneumoniamnist", "--data-root", DATA),
    "data init": (DATA,),
    # the leaderboard server: an empty data root, so a case that passed the option checks would stop
    # at "no test files" instead of serving
    "serve": ("--datasets", "pneumoniamnist", "--sizes", "28", "--data-root", EMPTY_DIR, "--db", "sqlite:///lb.sqlite3"),
    "submit": (".", "--server", "http://127.0.0.1:9", "--token", "fmv_" + "x" * 30, "--model-name", "m", "--size", "28"),
    "server hide": ("1", "--db", "sqlite:///lb.sqlite3"),
    "server rescore": ("--db", "sqlite:///lb.sqlite3", "--datasets", "pneumoniamnist", "--sizes", "28"),
    "server tokens": ("--db", "sqlite:///lb.sqlite3"),
    "server revoke-token": ("1", "--db", "sqlite:///lb.sqlite3"),
}
# Values that are wrong for an option whatever its type says (the rest come from its type).
SPECIAL: dict[str, tuple[str, ...]] = {
    "k": ("5,10000",),  # 10000 > the 60 synthetic training images: found before the model is built
    "predict out": (EMPTY_DIR,),  # a file option: a folder is what is wrong there
    "submit model_name": ("",),  # any other name is a name
    "submit description": ("x" * 5001,),
    "server tokens team": ("",),  # any other name may be a team of the database
    "server revoke-token team": ("",),
}


class ModelBuilt(BaseException):
    """Raised by the patched model factory: no handler in fmeval catches it."""


# -- the commands and their parameters -------------------------------------------------
@dataclass(frozen=True)
class Param:
    command: str  # "knn", "study run"
    name: str  # python parameter name
    kind: type  # int, float, str, Path, bool
    flags: tuple[str, ...]  # () for a positional argument
    is_list: bool
    min: float | None
    max: float | None
    min_open: bool
    list_of: str | None

    @property
    def flag(self) -> str:
        longs = [f for f in self.flags if f.startswith("--")]
        return longs[0] if longs else (self.flags[0] if self.flags else self.name.upper())


def _leaves(typer_app, prefix: tuple[str, ...] = ()):
    for info in typer_app.registered_commands:
        yield prefix + (info.name or info.callback.__name__.replace("_", "-"),), info.callback
    for group in typer_app.registered_groups:
        yield from _leaves(group.typer_instance, prefix + (group.name,))


def _click_leaf(path: tuple[str, ...]):
    cmd = typer.main.get_command(app)
    for part in path:
        cmd = cmd.commands[part]
    return cmd


def _unwrap(annotation) -> tuple[type, bool]:
    t, is_list = annotation, False
    for _ in range(3):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        origin = typing.get_origin(t)
        if origin is list:
            is_list, t = True, args[0]
        elif origin is typing.Union and len(args) == 1:
            t = args[0]
        else:
            break
    return t, is_list


def _params() -> list[Param]:
    out = []
    for path, callback in _leaves(app):
        table = getattr(callback, "fmeval_options", {})
        click_params = {p.name: p for p in _click_leaf(path).params}
        for p in inspect.signature(callback).parameters.values():
            ann = p.annotation
            if isinstance(ann, str) or not hasattr(ann, "__metadata__"):
                ann = typing.get_type_hints(callback, include_extras=True)[p.name]
            info = next(m for m in ann.__metadata__ if isinstance(m, typer.models.ParameterInfo))
            kind, is_list = _unwrap(typing.get_args(ann)[0])
            cp = click_params[p.name]
            flags = () if isinstance(info, typer.models.ArgumentInfo) else tuple(cp.opts) + tuple(cp.secondary_opts)
            opt = table.get(p.name)
            out.append(Param(
                " ".join(path), p.name, LIST_KINDS[opt.list_of] if opt and opt.list_of else kind, flags, is_list,
                opt.min if opt else info.min, opt.max if opt else info.max,
                bool(opt and opt.min_open), opt.list_of if opt else None,
            ))
    return out


PARAMS = _params()
COMMANDS = sorted({p.command for p in PARAMS} | {" ".join(path) for path, _ in _leaves(app)})


def _below(p: Param) -> str:
    low = p.min if p.min_open else p.min - (1 if p.kind is int else 0.5)
    return str(int(low)) if p.kind is int else repr(float(low))


def bad_values(p: Param) -> list[str]:
    """Values the parameter must refuse, from its type and declared range."""
    if p.kind is bool:
        return []  # flags take no value: see _cases
    if f"{p.command} {p.name}" in SPECIAL:  # command-specific: exactly these (predict --out is a file)
        return list(SPECIAL[f"{p.command} {p.name}"])
    if p.name in SPECIAL:
        vals = list(SPECIAL[p.name])
    else:
        vals = []
    if p.kind in (int, float):
        vals += ["abc"] if not p.list_of else ["1,abc", ","]
        if p.kind is int and not p.list_of:
            vals.append("1.5")
        if p.kind is float:
            vals += ["nan"] if not p.list_of else ["0.1,nan"]
            vals += ["inf"] if not p.list_of else ["0.1,inf"]
        if p.min is not None:
            vals.append(_below(p) if not p.list_of else f"{'1' if p.kind is int else '0.1'},{_below(p)}")
        if p.max is not None:
            high = p.max + (1 if p.kind is int else 0.5)
            vals.append(str(int(high)) if p.kind is int else repr(float(high)))
    elif p.kind is str:
        vals.append(BOGUS if not p.list_of else f"templates,{BOGUS}")
    elif p.kind is Path:
        vals.append(AFILE)
    return vals


@dataclass(frozen=True)
class Case:
    command: str
    argv: tuple[str, ...]
    mentions: tuple[str, ...]  # the error line names at least one of these

    def __str__(self) -> str:
        return " ".join(self.argv)


def _with(command: str, p: Param, value: str) -> tuple[str, ...]:
    base = list(BASE.get(command, ()))
    if not p.flags:  # a positional argument: replaces the base's
        positional = [a for a in base if not a.startswith("-")][:1]
        base = [a for a in base if a not in positional]
        return (*command.split(), *base, value)
    # the option's own flag in the base (e.g. --data-root) is replaced, not repeated
    clean, skip = [], False
    for a in base:
        if skip:
            skip = False
            continue
        if a in p.flags:
            skip = True
            continue
        clean.append(a)
    return (*command.split(), *clean, p.flag, value)


def _cases() -> list[Case]:
    cases = []
    for p in PARAMS:
        if p.kind is bool and p.flags:
            flag = p.flags[0]
            if "/" not in flag:
                cases.append(Case(p.command, (*p.command.split(), *BASE.get(p.command, ()), f"{flag}=x"),
                                  (flag,)))
            continue
        for v in bad_values(p):
            cases.append(Case(p.command, _with(p.command, p, v), (p.flag, p.name, v, *v.split(","))))
    return cases


CASES = _cases()


# -- running a case ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    write_synthetic(root / DATA, "pneumoniamnist", 28, n=(60, 20, 20))
    (root / AFILE).write_text("not a folder\n")
    (root / EMPTY_DIR).mkdir()
    # a valid predictions file of the synthetic test split (20 images, 2 classes) for `score`
    (root / "preds.csv").write_text("index,0,1\n" + "".join(f"{i},0.25,0.75\n" for i in range(20)))
    return root


@pytest.fixture
def cli(workdir, monkeypatch, capsys):
    """Run fmeval in ``workdir`` with every output folder inside it; model builds explode."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HOME", str(workdir / "home"))
    for var, sub in (("FMEVAL_CACHE_DIR", "cache"), ("FMEVAL_REPORTS_DIR", "reports"),
                     ("FMEVAL_ADAPTERS_DIR", "adapters"), ("FMEVAL_WEIGHTS_DIR", "weights")):
        monkeypatch.setenv(var, str(workdir / sub))
    monkeypatch.setenv("FMEVAL_OFFLINE", "1")
    monkeypatch.delenv("FMEVAL_DATA_ROOT", raising=False)

    def boom(*a, **k):
        raise ModelBuilt("a model was built for a command that should have failed first")

    import fmeval.adapters.base as adapters_base
    import fmeval.pipeline as pipeline

    monkeypatch.setattr(pipeline, "create_adapter", boom)
    monkeypatch.setattr(adapters_base, "create_adapter", boom)

    def run(*argv: str) -> tuple[int, str, str, set[str]]:
        before = _tree(workdir)
        with pytest.raises(SystemExit) as exc:
            main(list(argv))
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err, _tree(workdir) - before

    return run


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check_one_line_error(code, out, err, created, case: str, mentions=()) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"{case}: exit {code}\n{out}\n{err}"
    assert "Traceback" not in out + err, f"{case}: traceback\n{err}"
    assert not created, f"{case}: wrote {sorted(created)}"
    assert lines and lines[-1].startswith("error: "), f"{case}: {err!r}"
    assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("Usage: ")), f"{case}: {err!r}"
    if mentions:
        assert any(m and m in lines[-1] for m in mentions), f"{case}: {lines[-1]!r} names none of {mentions}"
    return lines[-1]


# -- the tests ---------------------------------------------------------------------------------
def test_every_command_and_parameter_is_fuzzed():
    """The generator sees every command and finds bad values for what matters."""
    assert {"knn", "linprobe", "zeroshot", "finetune", "features", "evaluate", "report",
            "study run", "cache clear", "weights fetch", "prompts compare"} <= set(COMMANDS)
    fuzzed = {(c.command, a) for c in CASES for a in c.argv if a.startswith("--")}
    for p in PARAMS:
        if p.flags:
            assert any(cmd == p.command and (a in p.flags or a.split("=")[0] in p.flags)
                       for cmd, a in fuzzed), f"{p.command} {p.flag} has no bad value"
    argv = {str(c) for c in CASES}
    for expected in ("knn " + " ".join(FROZEN) + " --k 5,10000", "knn " + " ".join(FROZEN) + " --temperature 0.0",
                     "linprobe " + " ".join(FROZEN) + " --lr 0.1,0.0", "knn " + " ".join(FROZEN) + " --batch-size 0",
                     "linprobe " + " ".join(FROZEN) + " --probe-batch-size 0",
                     "knn " + " ".join(FROZEN) + " --geometry " + BOGUS):
        assert expected in argv, expected
    assert len(CASES) > 300


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_value_fails_in_one_line_before_any_work(cli, case):
    code, out, err, created = cli(*case.argv)
    if "needs the medmnistc package" in err:  # stopped at the missing extra, before the value
        require_extra("medmnistc.corruptions.registry", "robustness", ROBUSTNESS_INSTALL)
    if "needs the optional extra: pip install 'fmeval[server]'" in err:  # the leaderboard server's extra
        require_extra("starlette", "server", "pip install -c constraints.txt -e \".[server]\"")
    check_one_line_error(code, out, err, created, str(case), case.mentions)


# Bad values a user types, as in issue 11: the message says what is wrong.
NAMED = [
    ("knn", "--k", "5,10000", "exceeds the 60 training samples"),
    ("knn", "--temperature", "0", "--temperature must be > 0"),
    ("knn", "--batch-size", "0", "--batch-size"),
    ("linprobe", "--lr", "0", "--lr values must be > 0"),
    ("linprobe", "--wd", "-1", "--wd values must be >= 0"),
    ("linprobe", "--patience", "-1", "--patience"),
    ("linprobe", "--probe-batch-size", "0", "--probe-batch-size"),
    ("linprobe", "--epochs", "0", "--epochs"),
    ("knn", "--geometry", "stretch", "--geometry: unknown geometry 'stretch'"),
    ("knn", "--norm", "foo", "--norm: unknown normalisation 'foo'"),
    ("knn", "--precision", "fp16", "--precision: unknown precision 'fp16'"),
    ("knn", "--md5", "maybe", "--md5: unknown MD5 policy 'maybe'"),
    ("knn", "--device", "tpu", "--device must be auto, cpu, cuda or cuda:N"),
    ("knn", "--rule", "cosin", "Did you mean: cosine?"),
    ("zeroshot", "--ensemble", "mean-logits", "Did you mean: mean-logit"),
    ("linprobe", "--init", "zeroshots", "Did you mean: zeroshot"),
    ("linprobe", "--feature-norm", "standardise", "Did you mean: standardize?"),
    ("finetune", "--schedule", "cosin", "Did you mean: cosine"),
    ("finetune", "--optimizer", "adamx", "Did you mean: adam"),
    ("knn", "--select-metric", "aucc", "Did you mean: auc"),
    ("knn", "--pad-fill", "zeros", "Did you mean: zero?"),
    ("knn", "--interpolation", "bilinaer", "Did you mean: bilinear?"),
    ("knn", "--model", "vit-s61", "Did you mean: vit-s16"),
    ("finetune", "--lr", "inf", "--lr must be a finite number"),
]


@pytest.mark.parametrize("command,flag,value,says", NAMED, ids=lambda v: str(v))
def test_named_bad_values_say_what_is_wrong(cli, command, flag, value, says):
    code, out, err, created = cli(*command.split(), *BASE[command], flag, value)
    line = check_one_line_error(code, out, err, created, f"{command} {flag} {value}")
    assert says in line, line


USAGE_COMMANDS = [c for c in COMMANDS if c not in ("config",)] + ["config"]


@pytest.mark.parametrize("command", USAGE_COMMANDS)
def test_unknown_option_is_a_usage_error_on_every_command(cli, command):
    code, out, err, created = cli(*command.split(), "--bogus")
    line = check_one_line_error(code, out, err, created, f"{command} --bogus", ("--bogus",))
    assert err.splitlines()[0].startswith(f"Usage: fmeval {command}"), err
    assert "No such option" in line


@pytest.mark.parametrize("command", sorted({p.command for p in PARAMS if any(
    f.startswith("--") and len(f) >= 7 for f in p.flags)}))
def test_misspelt_option_suggests_the_close_one(cli, command):
    flag = next(f for p in PARAMS if p.command == command for f in p.flags
                if f.startswith("--") and len(f) >= 7 and "/" not in f)
    typo = flag[:4] + flag[5:]  # one letter dropped
    code, out, err, created = cli(*command.split(), typo)
    line = check_one_line_error(code, out, err, created, f"{command} {typo}", (typo,))
    assert flag in line, line


MISSING = [  # issue 8: what a new user types first
    (("knn",), ("--model", "--dataset")),
    (("finetune", "--lora"), ("--model", "--dataset")),
    (("finetune",), ("--lora / --full",)),
    (("linprobe", "--model", "vit-s16"), ("--dataset",)),
    (("evaluate",), ("--adapter",)),
    (("study", "run"), ("file",)),
    (("protocols", "show"), ("name",)),
    (("weights", "fetch"), ("names",)),
]


@pytest.mark.parametrize("argv,names", MISSING, ids=lambda v: " ".join(v))
def test_missing_required_input_is_named(cli, argv, names):
    code, out, err, created = cli(*argv)
    line = check_one_line_error(code, out, err, created, " ".join(argv))
    assert all(n.lower() in line.lower() for n in names), line


def test_issue8_first_contact_commands(cli):
    """``fmeval knn``, ``finetune --lora``, ``knn --bogus``, ``knn --size abc``: one line each."""
    for argv, says in ((("knn",), "knn needs --model and --dataset"),
                       (("finetune", "--lora"), "finetune needs --model, --dataset"),
                       (("knn", "--bogus"), "No such option: --bogus"),
                       (("knn", "--tmperature", "1"), "--temperature"),
                       (("knn", "--size", "abc", *FROZEN), "'--size'")):
        code, out, err, created = cli(*argv)
        assert says in check_one_line_error(code, out, err, created, " ".join(argv)), err


def test_values_of_the_fuzz_are_really_bad_not_just_unparsed(cli):
    """Guard against a vacuous fuzz: the base command lines are valid (they get as far as
    building the model, which the fixture turns into ModelBuilt)."""
    for command in ("knn", "linprobe", "features", "finetune", "zeroshot"):
        with pytest.raises(ModelBuilt):
            main([*command.split(), *BASE[command]])
