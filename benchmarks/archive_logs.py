"""Files the logs of a `gpu_session.sh` device call into docs/bench/ with the header lines the README cites.

  python benchmarks/archive_logs.py /path/files_at --session 14
  python benchmarks/archive_logs.py DIR --session 14 --note dit_1_3b="after the scan_unroll default" --dry-run

Each log `NAME.txt` that `gpu_session.sh` writes starts with a JSON line (date, jax/flax/torch/diffusers versions,
card, driver, commit where the device command passed GIT_REV) and a line with the benchmark's command. It becomes
`docs/bench/<card>_<NAME>.txt` (card: h100, h200, or the card's name in lower case; `--card` overrides), with

  # <date> (session N), device tool, jax .., flax .., torch .., diffusers .., <card> (driver ..)[, commit ..]
  # <--note text for NAME, if any>
  # <command>
  <the log without absl/XLA info and warning lines and progress bars>

An existing file is never overwritten: the new one gets `_sN` before `.txt` (`--force` overwrites). Files are
written atomically. Logs without the two header lines (older sessions) are refused by name.
"""

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NOISE = re.compile(r"^[IWE]\d{4} |%\|")   # absl/XLA log lines (I1127 ...), tqdm bars


def card_prefix(card):
  """"NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA H200" -> "h200", anything else: its name in lower case."""
  m = re.search(r"\b([A-Z]\d{2,4})\b", card or "")
  if m:
    return m.group(1).lower()
  return re.sub(r"[^a-z0-9]+", "_", (card or "unknown").lower()).strip("_") or "unknown"


def read_log(path):
  """(header dict, command, body lines) of a gpu_session.sh log; ValueError naming the file if it has no header."""
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.read().splitlines()
  if len(lines) < 2 or not lines[0].startswith("# {") or not lines[1].startswith("# "):
    raise ValueError(f"{path}: no gpu_session.sh header (a JSON line, then the command); was it written by "
                     f"benchmarks/gpu_session.sh since session 13?")
  try:
    header = json.loads(lines[0][2:])
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: header line is not JSON ({e})") from None
  return header, lines[1][2:], [ln for ln in lines[2:] if not NOISE.search(ln)]


def header_line(h, session):
  parts = [f"# {h.get('date') or '?'} (session {session}), device tool"]
  parts += [f"{k} {h[k]}" for k in ("jax", "flax", "torch", "diffusers") if h.get(k)]
  card = h.get("card") or "unknown card"
  parts.append(f"{card} (driver {h['driver']})" if h.get("driver") else card)
  if h.get("commit"):
    parts.append(f"commit {h['commit']}")
  return ", ".join(parts)


def archive(src, dest, session, *, card=None, notes=None, force=False, dry_run=False):
  """Writes every `*.txt` log of `src` into `dest`; returns [(source, written path)]."""
  from wanjax.fileio import atomic_open
  logs = sorted(f for f in os.listdir(src) if f.endswith(".txt"))
  if not logs:
    raise ValueError(f"{src}: no *.txt logs")
  out = []
  for name in logs:
    header, command, body = read_log(os.path.join(src, name))
    stem = name[:-4]
    path = os.path.join(dest, f"{card or card_prefix(header.get('card'))}_{stem}.txt")
    if os.path.exists(path) and not force:
      path = path[:-4] + f"_s{session}.txt"
    text = [header_line(header, session)]
    if notes and stem in notes:
      text.append(f"# {notes[stem]}")
    text += [f"# {command}"] + body
    if not dry_run:
      with atomic_open(path) as f:
        f.write("\n".join(text) + "\n")
    out.append((name, path))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("src", help="the folder the device call's files came back in (files_at)")
  p.add_argument("--session", type=int, required=True, help="this session's number (goes into the header line)")
  p.add_argument("--dest", default=os.path.join(ROOT, "docs", "bench"))
  p.add_argument("--card", help="file name prefix instead of the one read from the card's name (h100, h200)")
  p.add_argument("--note", action="append", default=[], metavar="NAME=TEXT",
                 help="a second header line for log NAME (e.g. what changed since the last run); repeatable")
  p.add_argument("--force", action="store_true", help="overwrite an existing docs/bench file of the same name")
  p.add_argument("--dry-run", action="store_true", help="print what would be written, write nothing")
  args = p.parse_args()
  if not os.path.isdir(args.src):
    p.error(f"{args.src}: not a folder")
  notes = {}
  for n in args.note:
    if "=" not in n:
      p.error(f"--note {n!r}: expected NAME=TEXT (NAME: a log's file name without .txt)")
    k, v = n.split("=", 1)
    notes[k] = v
  try:
    done = archive(args.src, args.dest, args.session, card=args.card, notes=notes, force=args.force,
                   dry_run=args.dry_run)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  unknown = set(notes) - {n[:-4] for n, _ in done}
  for name, path in done:
    print(f"{name} -> {os.path.relpath(path)}" + (" (dry run)" if args.dry_run else ""))
  if unknown:
    print(f"note: --note for {', '.join(sorted(unknown))} matched no log", file=sys.stderr)


if __name__ == "__main__":
  main()
