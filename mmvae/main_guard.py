"""Worker processes from a script without `if __name__ == "__main__":`: run the work in this process instead.

Worker processes are started with `spawn` (fork does not copy JAX's threads safely), and a spawned process
imports the main module again before it runs anything. A script that calls mmvae at its top level, outside
the guard, would call it again in every worker, which then dies at start-up ("bootstrapping phase") while the
pool waits for it. `processes` sees such a call (the main script's own line that led to it, read with `ast`)
and gives the in-process count instead, with one note on stderr naming the script.
"""

import ast
import sys

_noted: set[str] = set()


def _is_main_test(test: ast.expr) -> bool:
  """Whether an `if` test is `__name__ == "__main__"` (either way round)."""
  if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
    return False
  sides = [test.left, test.comparators[0]]
  return ({type(s) for s in sides} == {ast.Name, ast.Constant}
          and {getattr(s, "id", None) for s in sides} >= {"__name__"}
          and {getattr(s, "value", None) for s in sides} >= {"__main__"})


def unguarded_script() -> str | None:
  """The main script's path when the code running now was reached from its top level outside the `__main__`
  guard (spawned workers would run that code again); None otherwise: a guarded call, the `mmvae` command,
  an interactive session or notebook (no main file to re-import), or a call from a thread."""
  main = sys.modules.get("__main__")
  path = getattr(main, "__file__", None)
  if not path:
    return None
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
    frame = frame.f_back
  if frame is None:
    return None
  try:
    with open(path, "rb") as f:
      tree = ast.parse(f.read())
  except (OSError, SyntaxError, ValueError):
    return None
  line = frame.f_lineno
  for node in ast.walk(tree):
    guarded = isinstance(node, ast.If) and _is_main_test(node.test)
    if guarded and node.body[0].lineno <= line <= node.body[-1].end_lineno:
      return None
  return str(path)


def processes(requested: int, in_process: int = 1) -> int:
  """`requested` worker processes, or `in_process` (with one note per script) when the caller is an unguarded
  script's top level."""
  if requested <= in_process:
    return requested
  script = unguarded_script()
  if script is None:
    return requested
  if script not in _noted:
    _noted.add(script)
    print(f"mmvae: note: {script} calls mmvae outside `if __name__ == \"__main__\":`, so mmvae starts no worker "
          "processes (each would run the script again) and works in this process; put the calls under that guard "
          "to use them", file=sys.stderr, flush=True)
  return in_process
