"""The exercises of EXERCISES.md accept every correct answer and reject every wrong one, and a handout gives away no
solution. For each exercise, in this process: its function blanked fails its grading command with the two-line
message that names it; each solution of tests/exercise_variants.py passes; each mistake there fails, every failure
naming the function. The handout: a copy of the tracked files without .git, the chosen functions blanked, graded.
Run: python -m pytest tests/test_exercises.py     (about 25 s of one core)
     python tests/test_exercises.py --blank FILE:FUNCTION      blank a function in place (setting an exercise)
     python tests/test_exercises.py --handout DIR --blank FILE:FUNCTION [--blank FILE:FUNCTION ...]   a student copy"""

import argparse
import ast
import functools
import importlib
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXERCISES = os.path.join(ROOT, "EXERCISES.md")
NOT_HANDED_OUT = ("tests/exercise_variants.py", "tests/test_exercises.py")  # solutions, and the tool that grades them
TWO_LINES = "{name} is not implemented yet (it raises NotImplementedError).\nThis test needs it: implement {name}"  # conftest.py


def exercises():
    """[(number, file, qualified function name, grading command)] from the table of EXERCISES.md."""
    rows = []
    for line in open(EXERCISES, encoding="utf-8"):
        m = re.match(r"\| (\d+) \| [^|]+ \| `([\w/]+\.py)` `([\w.]+)` \| .* \| `(python -m pytest [^`]+)` \|$", line.strip())
        if m:
            rows.append((int(m.group(1)), m.group(2), m.group(3), m.group(4)))
    return rows


# -----------------------------------------------------------------------------------------------
# Blanking a function: the body becomes `raise NotImplementedError`, the signature and docstring stay


def function_node(tree, qualname, where):
    scope = tree
    for name in qualname.split("."):
        scope = next((n for n in ast.iter_child_nodes(scope) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name), None)
        if scope is None:
            raise SystemExit(f"error: {where}: no function {qualname}")
    return scope


def blank_source(source, qualname, where="<source>"):
    """The source with the body of the function `qualname` (e.g. RMSNorm.forward) replaced by `raise NotImplementedError`."""
    body = function_node(ast.parse(source), qualname, where).body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)
    first = body[1] if has_doc and len(body) > 1 else body[0]
    lines = source.splitlines(keepends=True)
    start = body[0].end_lineno if has_doc else first.lineno - 1  # 0-based index of the first line to replace
    lines[start : body[-1].end_lineno] = [" " * first.col_offset + "raise NotImplementedError\n"]
    return "".join(lines)


def blank(path, qualname):
    """Blank the function `qualname` in the file at `path`, in place."""
    source = open(path, encoding="utf-8").read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(blank_source(source, qualname, path))


def blanked_function(file, qualname):
    """The function as blank() leaves it, compiled under its own file name and line numbers (as if the file were
    blanked), so that conftest.py's two-line message names it as a blanked file would."""
    path = os.path.join(ROOT, file)
    namespace = {"__name__": "blanked_" + file[:-3].replace("/", "."), "__file__": path}
    exec(compile(blank_source(open(path, encoding="utf-8").read(), qualname, path), path, "exec"), namespace)
    return functools.reduce(lambda obj, name: obj[name] if isinstance(obj, dict) else getattr(obj, name), qualname.split("."), namespace)


# -----------------------------------------------------------------------------------------------
# Grading a substitute in this process: the grading command's own selection of tests, the function replaced


def put_in_place(monkeypatch, file, qualname, impl):
    """Make `impl` what every caller of the function gets: the class attribute of a method; for a function, its name
    in its module and in every module that imported it by name (the tests do)."""
    module = importlib.import_module(file[:-3].replace("/", "."))
    *outer, name = qualname.split(".")
    if outer:
        monkeypatch.setattr(functools.reduce(getattr, outer, module), name, impl)
        return
    original = getattr(module, name)
    for m in list(sys.modules.values()):
        if m is not None and vars(m).get(name) is original:
            monkeypatch.setattr(m, name, impl)


class Grader:
    """A pytest plugin: once the grading command's tests are collected, runs all of them with each substitute in place
    of the function, and records each test's outcome: {label: {test id: None (passed) or the failure's message}}. An
    error raised while the substitute was running (not an assertion of the test) is recorded as "raised in FUNCTION: ...":
    pytest's report shows it in the function's own lines."""

    def __init__(self, file, qualname, substitutes):
        self.file, self.qualname, self.substitutes, self.results, self.current, self.impl = file, qualname, substitutes, {}, None, None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        for label, impl in self.substitutes:
            self.current, self.impl = self.results.setdefault(label, {}), impl
            with pytest.MonkeyPatch.context() as mp:
                put_in_place(mp, self.file, self.qualname, impl)
                for item in session.items:
                    item.ihook.pytest_runtest_protocol(item=item, nextitem=None)  # setup, call, teardown, as pytest runs it
        self.current = None
        return True  # the tests ran here: pytest's own loop does not run them again

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outermost: sees the report as conftest.py leaves it
    def pytest_runtest_makereport(self, item, call):
        report = (yield).get_result()
        if self.current is None:
            return
        if not report.failed:
            self.current.setdefault(item.nodeid, None)
            return
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash else str(report.longrepr)
        excinfo = call.excinfo
        if excinfo and not excinfo.errisinstance((AssertionError, NotImplementedError)):
            if any(entry.frame.code.raw is self.impl.__code__ for entry in excinfo.traceback):
                message = f"raised in {self.qualname}: {message}"
        self.current[item.nodeid] = message


def grade(file, qualname, command, substitutes):
    """Run the grading command `python -m pytest ARGS` in this process, once, with each (label, function) of substitutes."""
    args = shlex.split(command)[3:]
    args = [os.path.join(ROOT, a) if a.endswith(".py") else a for a in args]  # from any working directory
    grader = Grader(file, qualname, substitutes)
    # quiet (no terminal report), no cache, and no unraisable-exception plugin (its gc.collect costs 0.6 s a session)
    rc = pytest.main([*args, "-p", "no:terminal", "-p", "no:cacheprovider", "-p", "no:unraisableexception", "--rootdir", ROOT], plugins=[grader])
    assert rc in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), f"`{command}` could not run its tests here: pytest exit code {rc!r}"
    return grader.results


# -----------------------------------------------------------------------------------------------
# The handout


def write_handout(dest, blanks):
    """A student copy of the repository in `dest`: the tracked files (no .git: no history that shows the solutions),
    without NOT_HANDED_OUT, the functions `blanks` [(file, qualname)] blanked, and HANDOUT.md with their grading commands."""
    for file, qualname in blanks:  # every name checked before anything is written
        path = os.path.join(ROOT, file)
        if not os.path.isfile(path):
            raise SystemExit(f"error: --blank {file}:{qualname}: no file {file}")
        function_node(ast.parse(open(path, encoding="utf-8").read()), qualname, path)
    if os.path.exists(dest) and os.listdir(dest):
        raise SystemExit(f"error: {dest} exists and is not empty: choose a new folder")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, tracked):
        if rel not in NOT_HANDED_OUT and os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))
    for file, qualname in blanks:
        blank(os.path.join(dest, file), qualname)
    commands = {(file, qualname): command for _, file, qualname, command in exercises()}
    rows = [f"| `{qualname}` | `{file}` | " + (f"`{commands[file, qualname]}`" if (file, qualname) in commands else "not graded: not an exercise of EXERCISES.md")
            + " |" for file, qualname in blanks]
    with open(os.path.join(dest, "HANDOUT.md"), "w", encoding="utf-8") as f:
        f.write(HANDOUT.format(rows="\n".join(rows)))


HANDOUT = """# Your exercises

The bodies of these functions were removed; each now raises `NotImplementedError`. Write them again: the docstring
above each says what it computes, and EXERCISES.md says more. The command beside each runs the tests that grade it.

| function | file | grade with |
|---|---|---|
{rows}

A function not written yet fails its tests with two lines that name it; a wrong one fails with a message that names
the function and the quantity that is off. When each command passes, `python -m pytest -m core` (about 20 s) runs
every teaching test: the model, the loss, training and evaluation together.
"""


# -----------------------------------------------------------------------------------------------
# The tests


def test_the_table_lists_the_exercises_the_issue_asks_for():
    rows = exercises()
    assert [r[0] for r in rows] == list(range(1, 14)), rows
    assert {r[2] for r in rows} == {"RMSNorm.forward", "apply_rope", "FeedForward.forward", "Attention.forward", "Llama.generate", "ensemble_log_probs",
                                    "distill_loss", "lr_at", "EpochSampler.indices", "mask_tokens", "sparse_target", "sparse_distill_loss", "score_batch"}
    for _, file, qualname, command in rows:
        function_node(ast.parse(open(os.path.join(ROOT, file), encoding="utf-8").read()), qualname, file)  # it exists where the table says
        m = re.fullmatch(r"python -m pytest (tests/test_\w+\.py) -m core -k (\w+|\"[\w ]+\")", command)
        assert m and os.path.isfile(os.path.join(ROOT, m.group(1))), f"{qualname}: {command}: expected python -m pytest tests/FILE -m core -k NAME"


def test_blank_keeps_signature_and_docstring(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('class A:\n    def f(self, x):\n        """Doc."""\n        y = x + 1\n        return y\n\n\ndef g():\n    return 2\n')
    blank(str(path), "A.f")
    assert path.read_text() == 'class A:\n    def f(self, x):\n        """Doc."""\n        raise NotImplementedError\n\n\ndef g():\n    return 2\n'
    blank(str(path), "g")
    assert path.read_text().endswith("def g():\n    raise NotImplementedError\n")
    with pytest.raises(SystemExit, match="no function A.h"):
        blank(str(path), "A.h")


def test_every_exercise_has_two_solutions_and_three_mistakes():
    from exercise_variants import VARIANTS

    assert set(VARIANTS) == {r[2] for r in exercises()}
    for qualname, variants in VARIANTS.items():
        assert len(variants["correct"]) >= 2 and len(variants["wrong"]) >= 3, qualname
        names = [f.__name__ for f in variants["correct"] + variants["wrong"]]
        assert len(set(names)) == len(names), f"{qualname}: two variants share a name: {names}"  # the results are keyed by name
        assert all(f.__doc__ for f in variants["correct"] + variants["wrong"]), f"{qualname}: a variant without a line that says what it does"


@pytest.mark.parametrize("row", exercises(), ids=lambda row: f"{row[0]}-{row[2]}")
def test_exercise_accepts_every_correct_answer_and_rejects_every_wrong_one(row):
    from exercise_variants import VARIANTS

    number, file, qualname, command = row
    correct, wrong = VARIANTS[qualname]["correct"], VARIANTS[qualname]["wrong"]
    substitutes = [("blanked", blanked_function(file, qualname))] + [(f.__name__, f) for f in correct + wrong]
    results = grade(file, qualname, command, substitutes)
    blanked = results["blanked"]
    assert blanked, f"exercise {number}: `{command}` selects no test"
    failures = {test: message for test, message in blanked.items() if message}
    assert failures, f"exercise {number}: with {qualname} blanked, `{command}` passes"
    raise_line = function_node(ast.parse(blank_source(open(os.path.join(ROOT, file), encoding="utf-8").read(), qualname)), qualname, file).body[-1].lineno
    two_lines = f"{file}:{raise_line}: " + TWO_LINES.format(name=qualname)  # where the student will write, and what
    for test, message in failures.items():  # every failure is the two-line message, naming the function
        assert message.startswith(two_lines), f"exercise {number}: {test} fails with {qualname} blanked, but not with the two-line message:\n{message}"
    for f in correct:
        failed = {test: message for test, message in results[f.__name__].items() if message}
        assert not failed, f"exercise {number}: the correct {f.__name__} ({f.__doc__}) fails:\n" + "\n".join(f"{t}: {m}" for t, m in failed.items())
    for f in wrong:
        failed = {test: message for test, message in results[f.__name__].items() if message}
        assert failed, f"exercise {number}: the mistake {f.__name__} ({f.__doc__}) passes `{command}`"
        unnamed = {test: message for test, message in failed.items() if qualname not in message}
        assert not unnamed, f"exercise {number}: the mistake {f.__name__} fails without naming {qualname}:\n" + "\n".join(f"{t}: {m}" for t, m in unnamed.items())
        assert any(m.startswith("AssertionError: " + qualname) for m in failed.values()), (
            f"exercise {number}: the mistake {f.__name__} fails only by raising, no test says what is wrong:\n" + "\n".join(failed.values()))


def start_command(command, cwd):
    """Start a grading command `python -m pytest ...` as a student runs it, in the folder cwd."""
    argv = shlex.split(command)
    return subprocess.Popen([sys.executable, *argv[1:], "-p", "no:cacheprovider"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(process):
    out, _ = process.communicate(timeout=600)
    return process.returncode, out


def put_back(path, qualname, solution):
    """Write the body of `solution` (a function of tests/exercise_variants.py, without its docstring) in place of the
    `raise NotImplementedError` of the blanked function `qualname` in the file at `path`: what a student hands in."""
    solution_source = textwrap.dedent(inspect.getsource(solution))
    definition = ast.parse(solution_source).body[0]
    body = definition.body[1:] if ast.get_docstring(definition) else definition.body
    body_text = textwrap.dedent("".join(solution_source.splitlines(keepends=True)[body[0].lineno - 1 : body[-1].end_lineno]))
    source = open(path, encoding="utf-8").read()
    raise_statement = function_node(ast.parse(source), qualname, path).body[-1]
    lines = source.splitlines(keepends=True)
    lines[raise_statement.lineno - 1 : raise_statement.end_lineno] = [textwrap.indent(body_text, " " * raise_statement.col_offset)]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def test_handout_has_no_history_and_grades_the_blanked_functions(tmp_path):
    from exercise_variants import rmsnorm_divide_by_sqrt

    dest = tmp_path / "handout"
    write_handout(str(dest), [("model.py", "RMSNorm.forward"), ("train.py", "lr_at")])
    assert not (dest / ".git").exists(), "the handout has a .git: its history shows the solutions"
    handed = [f for f in NOT_HANDED_OUT if (dest / f).exists()]
    assert not handed and (dest / "tests" / "conftest.py").exists(), f"the handout holds {handed}: other solutions of every exercise"
    rmsnorm = (dest / "model.py").read_text().split("class RMSNorm")[1].split("def rope_tables")[0]
    assert "raise NotImplementedError" in rmsnorm and "rsqrt(" not in rmsnorm, f"RMSNorm.forward is not blanked in the handout:\n{rmsnorm}"
    handout = (dest / "HANDOUT.md").read_text()
    commands = dict(re.findall(r"\| `([\w.]+)` \| `[\w/.]+` \| `(python -m pytest [^`]+)` \|", handout))
    assert set(commands) == {"RMSNorm.forward", "lr_at"}, handout
    running = {qualname: start_command(command, dest) for qualname, command in commands.items()}  # side by side: one import of torch each
    for qualname, process in running.items():
        rc, out = finish(process)
        assert rc == 1 and TWO_LINES.format(name=qualname) in out, f"`{commands[qualname]}` in the handout, {qualname} blanked, exited {rc}:\n{out[-3000:]}"
    put_back(str(dest / "model.py"), "RMSNorm.forward", rmsnorm_divide_by_sqrt)  # a student's solution, not the repository's
    rc, out = finish(start_command(commands["RMSNorm.forward"], dest))
    assert rc == 0, f"the handout with a correct RMSNorm.forward put back: `{commands['RMSNorm.forward']}` exited {rc}:\n{out[-3000:]}"


def test_handout_refuses_an_unknown_function_before_writing(tmp_path):
    with pytest.raises(SystemExit, match="no function RMSNorm.backward"):
        write_handout(str(tmp_path / "h"), [("model.py", "RMSNorm.forward"), ("model.py", "RMSNorm.backward")])
    assert not (tmp_path / "h").exists()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Set exercises (EXERCISES.md): blank functions in place, or write a student handout.")
    parser.add_argument("--blank", action="append", default=[], metavar="FILE:FUNCTION", help="e.g. model.py:RMSNorm.forward (repeatable)")
    parser.add_argument("--handout", metavar="DIR", help="write a student copy to DIR (tracked files, no .git) with the --blank functions blanked")
    args = parser.parse_args(argv)
    if not args.blank or any(":" not in b for b in args.blank):
        parser.error("expected at least one --blank FILE:FUNCTION, e.g. --blank model.py:RMSNorm.forward")
    blanks = [tuple(b.split(":", 1)) for b in args.blank]
    if args.handout:
        write_handout(args.handout, blanks)
        print(f"handout in {args.handout}: {len(blanks)} function(s) blanked, grading commands in {os.path.join(args.handout, 'HANDOUT.md')}")
        return
    for file, qualname in blanks:
        blank(os.path.join(ROOT, file), qualname)
        print(f"blanked {qualname} in {file}: its body now raises NotImplementedError")


if __name__ == "__main__":
    main()
