"""Flag plumbing shared by the CLIs (`infer.sample`, `infer.serve`; the trainers and tools use `flags_parser` and
`fail` too): the `--config` preset flag and a flags parser that turns preset and `--config.<field>` mistakes
into one `error: ...` line with exit code 2, like every other usage error, instead of ml_collections' tracebacks.

Exit codes, in every CLI: 2 = the user's input is at fault, 1 = the run failed, 130 = interrupted (Ctrl-C).
A help request (--help, --helpfull, ...) prints the help on stdout and exits 0 (absl itself exits 1).

ml_collections applies `--config.<field>` overrides while parsing the preset: when `--config` is not given the
default preset is parsed as the flag is defined (a typo raises from `DEFINE_config_file`), otherwise during
`FLAGS(argv)` (a typo raises a bare AttributeError/KeyError there, a preset error a flags error whose message
embeds the preset's traceback).
"""

import re
import sys

from absl import flags
from ml_collections import config_flags

USAGE_EXIT = 2


def fail(message, exit_code=USAGE_EXIT):
  """Prints `error: <message>` as one line on stderr and exits (2 unless told otherwise)."""
  print("error: " + " ".join(str(message).split()), file=sys.stderr)
  sys.exit(exit_code)


INTERRUPTED_EXIT = 130


def call_main(main, argv, kept):
  """`main(argv)` as a CLI runs it: a `UsageError` is one line and exit 2 (`fail`), Ctrl-C one line saying what was
  kept (`kept`: a string, or a callable giving one, read after the flags are parsed) and exit 130 (`interrupted`).
  Anything else propagates. Returns what `main` returns."""
  from wanjax.errors import UsageError
  try:
    return main(argv)
  except UsageError as e:
    fail(e)
  except KeyboardInterrupt:
    interrupted(kept() if callable(kept) else kept)


def interrupted(message):
  """Ctrl-C: prints `interrupted: <message>` (what was kept, how to go on) as one line on stderr and exits 130."""
  print("interrupted: " + " ".join(str(message).split()), file=sys.stderr)
  sys.exit(INTERRUPTED_EXIT)


def config_error_message(e) -> str:
  """One sentence for an exception raised while parsing `--config` and its overrides."""
  if isinstance(e, (AttributeError, KeyError)):   # an override names a field the preset does not have
    text = str(e).encode().decode("unicode_escape")  # ml_collections nests repr()s of its KeyError message
    names = re.findall(r"'([A-Za-z_][\w.]*)'", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    given = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")]
    field = names[0] if names else "?"
    flag = next((g for g in given if re.search(rf"\.{re.escape(field)}(\.|$)", g)), f"--config.{field}")
    return (f"{flag}: the preset has no field {field!r}" + (f"; did you mean {hint.group(1)!r}?" if hint else
                                                           "; see the preset file for its fields"))
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  last = lines[-1] if lines else str(e)
  # A preset's own UsageError arrives as the last line of the embedded traceback: keep only its sentence.
  m = re.match(r"^(?:[\w.]+\.)?(?:UsageError|ValueError|TypeError|KeyError): (.*)$", last)
  return m.group(1) if m else (" ".join(lines) if len(lines) <= 3 else last)


def define_config_flag(default, help_text):
  """`--config` (a `configs/sample/<preset>.py[:arg]` file, locked: unknown `--config.<field>` fails)."""
  try:
    config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)
  except (AttributeError, KeyError, flags.Error) as e:
    fail(config_error_message(e))
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["config"])   # listed under --help


def flags_parser(*, what="preset", hint="configs/sample/<preset>.py[:arg]"):
  """A `flags_parser` for `absl.app.run`: parses argv; flag and `--config` errors become one line and exit 2.
  `what` / `hint` word the message for a config file that cannot be loaded (the trainers say "config file" and
  point to configs/train/)."""
  def parse(argv):
    try:
      rest = flags.FLAGS(argv)
    except SystemExit as e:   # absl's help flags print the help, then exit 1 from inside the parse
      if e.code == 1 and _help_exit(e):
        sys.exit(0)
      raise
    except (AttributeError, KeyError, flags.Error) as e:
      fail(config_error_message(e))
    if "config" in flags.FLAGS:
      try:   # ml_collections defers a config file that cannot be loaded until the config is first read
        getattr(flags.FLAGS.config, "get", None)
      except OSError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        fail(f"--config={flags.FLAGS['config'].serialize().partition('=')[2]}: cannot load the {what} file "
             f"({lines[-1] if lines else e}); pass {hint}")
    return rest
  return parse


def _help_exit(e) -> bool:
  """Whether the SystemExit `e` came from absl's --help / --helpshort / --helpfull / --helpxml flag."""
  from absl import app
  tb = e.__traceback__
  while tb is not None:
    if isinstance(tb.tb_frame.f_locals.get("self"), (app.HelpFlag, app.HelpfullFlag, app.HelpXMLFlag)):
      return True
    tb = tb.tb_next
  return False


parse_flags = flags_parser()   # the inference CLIs'
