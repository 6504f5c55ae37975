r"""Videos and captions (or prompts alone) -> cached training features (`train/features.py`).

Mirrors distill_wan2.1 `scripts/data_preprocess/preprocess_wan_dataset.py` + `resize_videos.py` (spec
`post_training.md` A.1): VAE latent of each resized clip, umT5 embedding of its caption (trimmed), and for I2V the
CLIP features of the first frame and the 20-channel `y`; plus the unconditional embeddings once. Unlike the
reference (pre-resized 16:9 clips, batch 1, one `.pt` per tensor) this reads raw clips, picks an aspect bucket,
centre-crops and resizes (antialiased bicubic, as PIL), samples `frames` (4k+1) at `fps`, encodes batches
sharded over the mesh, and resumes: clips already in the index are not read again, unless their file changed
(size, mtime, sha256 fingerprints); a moved clips folder reuses its records (`plan_work`). Reading and fitting
the input clips is `train/clips.py`.

  python -m train.preprocess --config configs/data/t2v_480p.py --input clips/ --output features/t2v \
      --config.vae=ckpt/Wan2.1_VAE.pth --config.text_encoder=ckpt/umt5 --config.tokenizer=ckpt/tokenizer
  python -m train.preprocess --config configs/data/toyworld.py --input data/toyworld --output /tmp/feat

Inputs: a folder of videos (mp4/webm/gif/mov/mkv, or lossless `.npy` clips as `wanjax.toyworld.dataset
--format npy` writes them) with `<name>.txt` caption sidecars; a `.csv` (columns
video|path|file and caption|prompt|text) or `.json`/`.jsonl` index (objects with the same keys, or {path:
caption}); or a `.txt` of prompts, one per line (prompt embeddings only, for the data-free DMD trainers).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging

from train import features
from train.clips import (Item, Skip, compare_file, fingerprint, input_root, list_inputs, parse_size, read_clip,
                         resize_clip, same_place)
from wanjax import sharding as shd
from wanjax.errors import UsageError

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}



class Interrupted(RuntimeError):
  """Raised by `debug_stop_after_shards` to simulate a crash (tests of resume)."""


# ------------------------------------------------------------------------------------------------ encoders

@dataclasses.dataclass
class Encoders:
  text: object            # wanjax.text.encode.TextEncoder
  vae: object = None      # WanVAE (None for prompt-only inputs)
  clip: object = None     # CLIPVisionTower (I2V)


def _random_module(build, seed):
  """`build()`'s module with host-drawn random parameters (tiny smoke models; on-device init compiles one
  program per parameter shape): norm scales 1, matrices ~ N(0, 1/fan_in), vectors ~ N(0, 0.1²)."""
  from flax import nnx
  graphdef, state = nnx.split(nnx.eval_shape(build))
  rng = np.random.default_rng(seed)
  out = []
  for path, var in nnx.to_flat_state(state):
    v = var.get_value()
    n_layers = shd.param_axes(var).count("layers")
    eff = v.shape[n_layers:]
    name = ".".join(map(str, path))
    if "norm" in name and len(eff) == 1 and path[-1] in ("scale", "weight", "gamma"):
      value = np.ones(v.shape)
    elif len(eff) >= 2:
      value = rng.standard_normal(v.shape) / np.sqrt(np.prod(eff[:-1]))
    else:
      value = 0.1 * rng.standard_normal(v.shape)
    out.append((path, var.replace(jnp.asarray(value, v.dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(out))


def _replicate(module, mesh):
  from flax import nnx
  graphdef, state = nnx.split(module)
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return nnx.merge(graphdef, state)


def toy_tokenizer(folder):
  """Writes the toy-world tokenizer.json under `folder` (random-encoder configs) and returns its path."""
  from wanjax.toyworld import vocab
  os.makedirs(folder, exist_ok=True)
  return vocab.write_tokenizer(folder)


def check_model_paths(c, *, need_video=True):
  """Every model path `c` needs is given and exists (checked before anything is written or loaded)."""
  if c.random_encoders:
    names = ("tokenizer",) if c.tokenizer else ()
  else:
    names = ("text_encoder", "tokenizer") + (("vae",) + (("clip",) if c.model_type == "i2v" else ())
                                              if need_video else ())
  for name in names:
    if not c[name]:
      raise UsageError(f"config.{name} is empty; give a converted {name} dir or raw checkpoint (or use "
                       f"configs/data/toyworld.py for tiny random encoders)")
    if not os.path.exists(os.path.expanduser(c[name])):
      raise UsageError(f"config.{name}={c[name]!r} does not exist")


def build_encoders(c, mesh, *, need_video=True, tokenizer=None) -> Encoders:
  """The encoders `c` names: converted dirs or raw torch files (converted once, `infer.models.resolve_model`),
  or with `c.random_encoders` tiny random ones drawn from `c.seed` (tests, smoke runs)."""
  from flax import nnx
  from wanjax.text.encode import TextEncoder, load_text_encoder
  from wanjax.text.tokenize import Tokenizer
  i2v = c.model_type == "i2v"
  if c.random_encoders:
    from wanjax.image import clip as clip_mod
    from wanjax.text import umt5
    from wanjax.vae import config as vae_config
    from wanjax.vae import create_vae
    tcfg = umt5.get_config(c.random_presets.text)
    text_model = _random_module(lambda: umt5.UMT5Encoder(tcfg, policy=c.text_dtype, rngs=nnx.Rngs(0)), c.seed + 1)
    text = TextEncoder(_replicate(text_model, mesh), Tokenizer(tokenizer, max_length=c.text_len))
    vae = clip = None
    if need_video:
      vae = _replicate(create_vae(vae_config.get_config(c.random_presets.vae), policy=c.vae_dtype, seed=c.seed),
                       mesh)
      if i2v:
        ccfg = clip_mod.get_config(c.random_presets.clip)
        clip = _replicate(_random_module(
            lambda: clip_mod.CLIPVisionTower(ccfg, policy=c.clip_dtype, rngs=nnx.Rngs(0)), c.seed + 2), mesh)
    return Encoders(text, vae, clip)
  from infer.models import resolve_model
  check_model_paths(c, need_video=need_video)
  text = load_text_encoder(resolve_model(os.path.expanduser(c.text_encoder), family="umt5"),
                           os.path.expanduser(c.tokenizer), policy=c.text_dtype, mesh=mesh, max_length=c.text_len)
  vae = clip = None
  if need_video:
    from wanjax.vae.load import load_vae
    vae = load_vae(resolve_model(os.path.expanduser(c.vae), family="vae"), policy=c.vae_dtype, mesh=mesh)
    if i2v:
      from wanjax.image.load import load_clip
      clip = load_clip(resolve_model(os.path.expanduser(c.clip), family="clip"), policy=c.clip_dtype, mesh=mesh)
  return Encoders(text, vae, clip)


def settings_of(c) -> dict:
  """Everything that decides the cached values (the index refuses to mix runs that differ in any)."""
  keys = ("model_type", "frames", "fps", "sizes", "max_aspect_change", "text_len", "dtype", "vae", "text_encoder",
          "tokenizer", "clip", "vae_dtype", "text_dtype", "clip_dtype", "random_encoders", "seed",
          "negative_prompt")
  s = {k: c[k] for k in keys}
  s["sizes"] = list(s["sizes"])
  if c.random_encoders:
    s["random_presets"] = dict(c.random_presets)
  return s


def clip_id(item: Item, settings: dict) -> str:
  key = json.dumps([item.source or "prompt", item.caption, settings], sort_keys=True, ensure_ascii=False)
  return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


# ------------------------------------------------------------------------------------------------ encoding

def _trimmed(context, lengths):
  return [np.asarray(context[i, :int(n)]) for i, n in enumerate(lengths)]


def encode_texts(text, captions, batch):
  """Trimmed `[L_i, D]` umT5 embeddings; batches are padded to `batch` rows so one program is compiled."""
  out = []
  for s in range(0, len(captions), batch):
    chunk = list(captions[s:s + batch])
    ctx, lengths = text.encode(chunk + [""] * (batch - len(chunk)))
    out += _trimmed(ctx, lengths)[:len(chunk)]
  return out


def encode_videos(enc, videos, *, mesh, i2v, num_frames):
  """videos: device `[B, T, h, w, 3]` in [−1, 1] -> {latent [B, F, h/8, w/8, z], (clip_fea, y)} host arrays.

  The batch is sharded over the mesh's batch axes (data, fsdp). I2V: the condition video is frame 0 then zeros;
  the reference bicubic-resizes frame 0 to (h, w) first (`condition_video`), an identity at the clip's own size.
  """
  from wanjax.image import i2v as i2v_mod
  from wanjax.image.clip import clip_features
  from wanjax.vae import encode_video
  spec = shd.spec_for(("batch", None, None, None, None), videos.shape, mesh)
  x = jax.device_put(videos, jax.sharding.NamedSharding(mesh, spec))
  out = {}
  if not i2v:
    out["latent"] = encode_video(enc.vae, x)
  else:
    cond = jnp.concatenate([x[:, :1], jnp.zeros_like(x[:, 1:])], axis=1)
    out["latent"] = encode_video(enc.vae, x)
    cond_lat = encode_video(enc.vae, cond)   # same shape: the same compiled program as the clip's
    f, lh, lw = cond_lat.shape[1:4]
    mask = np.broadcast_to(i2v_mod.i2v_mask(f, lh, lw, num_frames), cond_lat.shape[:-1] + (4,))
    out["y"] = i2v_mod.build_y(mask, cond_lat)
    out["clip_fea"] = clip_features(enc.clip, x[:, 0])
  return {k: np.asarray(jax.device_get(v), np.float32) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ driver

def check_config(c):
  if c.model_type not in ("t2v", "i2v"):
    raise UsageError(f"model_type={c.model_type!r}; valid: t2v, i2v")
  if c.frames < 1 or (c.frames - 1) % 4:
    lo = 1 + 4 * max(0, (c.frames - 1) // 4)
    raise UsageError(f"frames={c.frames} must be 4k+1 (e.g. {lo} or {lo + 4}; 81 for Wan2.1)")
  if c.fps <= 0:
    raise UsageError(f"fps={c.fps} must be > 0 (16 for Wan2.1)")
  if not c.sizes:
    raise UsageError("sizes is empty; give one W*H (fixed size) or several (aspect buckets), e.g. ('832*480',)")
  if c.dtype not in DTYPES:
    raise UsageError(f"dtype={c.dtype!r}; valid: {', '.join(DTYPES)}")
  for k in ("batch_size", "clips_per_shard", "num_workers", "text_len"):
    if c[k] < 1:
      raise UsageError(f"{k}={c[k]} must be >= 1")
  return [parse_size(s) for s in c.sizes]


def check_changed_captions(writer, items):
  """Raises if a video of `items` is cached in the folder under another caption (its sidecar or index row was
  edited, or the clips folder regenerated): caching it again would leave both versions in the folder."""
  now = {}   # source -> {caption} (an index may give one video several captions)
  for it in items:
    if it.source:
      now.setdefault(it.source, set()).add(it.caption)
  stale = [rec for rec in writer.index["clips"] if rec["source"] in now and rec["caption"] not in now[rec["source"]]]
  if stale:
    rec = stale[0]
    raise UsageError(f"{len(stale)} clip(s) of --input are cached in {writer.folder} with another caption, e.g. "
                     f"{rec['source']}: {rec['caption']!r} then, {sorted(now[rec['source']])[0]!r} now; "
                     f"the folder would hold both versions: use a new --output folder")


@dataclasses.dataclass
class Plan:
  todo: list                                        # items to encode
  already: int = 0                                  # cached and unchanged (moved ones included)
  moved: int = 0                                    # cached under a path that no longer exists: record moved
  changed: list = dataclasses.field(default_factory=list)   # sources edited since cached: encoded again
  duplicates: int = 0


def _moved_candidates(records):
  """Lookups over cached clips whose source is gone: by (caption, file name), and by (caption, size) for
  those with a sha256."""
  by_name, by_size = {}, {}
  for r in records:
    by_name.setdefault((r["caption"], os.path.basename(r["source"])), []).append(r)
    fp = r.get("fingerprint")
    if fp and fp.get("sha256"):
      by_size.setdefault((r["caption"], fp["size"]), []).append(r)
  return by_name, by_size


def _find_moved(it, candidates, taken, root):
  """The record of `candidates` (`_moved_candidates`) that holds `it`'s file, with the fingerprint to store,
  or (None, None): at the same place in the folder with the same size and mtime (a moved folder), else with
  the same sha256 (a copied or renamed file). A record without a fingerprint (an older folder) is trusted at
  the same place."""
  by_name, by_size = candidates
  st = os.stat(it.source)
  for rec in by_name.get((it.caption, os.path.basename(it.source)), ()):
    if rec["id"] in taken or not same_place(rec["source"], it.source, root):
      continue
    fp = rec.get("fingerprint")
    if fp is None:
      return rec, fingerprint(it.source)   # an older folder's record: fingerprinted now (one read)
    if (fp["size"], fp["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
      return rec, fp
  same_size = [r for r in by_size.get((it.caption, st.st_size), ()) if r["id"] not in taken]
  if same_size:
    try:
      digest = fingerprint(it.source)
    except OSError:   # unreadable: encoding it records why
      return None, None
    for rec in same_size:
      if rec["fingerprint"]["sha256"] == digest["sha256"]:
        return rec, digest
  return None, None


def plan_work(writer, items, root) -> Plan:
  """Which of `items` need encoding, updating `writer`'s records on the way. A video is cached when a record
  has its path and caption and its file is unchanged (`train/clips.py: compare_file`; a cached clip whose
  file was deleted stays cached); an edited file's record is dropped and the clip encoded again; a video with
  no record of its path reuses one whose path no longer exists (a moved or renamed clips folder) when the file
  is the same (`_find_moved`), and that record takes the new path. Clip ids stay unique in the folder."""
  by_path = {(r["source"], r["caption"]): r for r in writer.index["clips"]}
  plan, seen, new, dropped = Plan([]), set(), [], []
  for it in items:
    if it.id in seen:
      plan.duplicates += 1
      continue
    seen.add(it.id)
    rec = by_path.get((it.source, it.caption)) if it.source else None
    if rec is None:
      if it.source:
        new.append(it)
      elif it.id in writer.done:
        plan.already += 1
      else:
        plan.todo.append(it)
      continue
    state, refreshed = compare_file(rec.get("fingerprint"), it.source)
    if state == "changed":
      dropped.append(rec["id"])
      plan.changed.append(it.source)
      plan.todo.append(it)
      continue
    plan.already += 1
    if refreshed:
      writer.update(rec, fingerprint=refreshed)
  writer.drop(dropped)
  if new:
    current = {it.source for it in items}
    candidates = _moved_candidates([r for r in writer.index["clips"] if "latent" in r.get("keys", {}) and
                                    r["source"] not in current and not os.path.exists(r["source"])])
    taken = set()
    for it in new:
      rec, fp = _find_moved(it, candidates, taken, root) if os.path.isfile(it.source) else (None, None)
      if rec is None:
        plan.todo.append(it)
        continue
      taken.add(rec["id"])
      writer.update(rec, source=it.source, fingerprint=fp)
      plan.already += 1
      plan.moved += 1
  used = set(writer.done)
  for it in plan.todo:   # a moved record keeps its id, which a new clip at its old path would compute
    base, n = it.id, 0
    while it.id in used:
      n += 1
      it.id = hashlib.sha256(f"{base}+{n}".encode()).hexdigest()[:20]
    used.add(it.id)
  if plan.changed:
    logging.warning("%d cached clip(s) changed on disk since they were cached (e.g. %s); encoding them again",
                    len(plan.changed), plan.changed[0])
  return plan


def run(c, input_path, output):
  """Preprocesses `input_path` into the feature folder `output`; returns a summary dict."""
  t0 = time.time()
  sizes = check_config(c)
  # JAX warns on every fork; the ffmpeg readers' fork (subprocess) is followed by exec at once, so it cannot
  # deadlock. Set here, in the calling thread, before the reader threads start.
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning,
                          module="subprocess")
  if not output:
    raise UsageError("--output is required (the feature folder; an existing one is resumed)")
  output = os.path.expanduser(output)
  items, input_skips = list_inputs(input_path)
  prompt_only = all(not it.source for it in items)
  if any(not it.source for it in items) and not prompt_only:
    raise AssertionError("an input mixes prompts and videos")
  check_model_paths(c, need_video=not prompt_only)
  settings = settings_of(c)
  writer = features.FeatureWriter(output, settings, clips_per_shard=c.clips_per_shard)
  try:
    return _fill(c, writer, items, input_skips, input_path, settings, sizes, t0)
  except KeyboardInterrupt:
    writer.flush()   # the clips encoded so far are whole: keep them, a re-run resumes after them
    raise
  finally:
    writer.close()


def _fill(c, writer, items, input_skips, input_path, settings, sizes, t0):
  """`run` with the folder's writer open: plans the work, encodes it, returns the summary dict."""
  from tqdm import tqdm
  from configs.common import negative_prompt
  output = writer.folder
  prompt_only = all(not it.source for it in items)
  for it in items:
    it.id = clip_id(it, settings)
  check_changed_captions(writer, items)
  # Skip records of this input's clips are redone below (a clip skipped before may be cached now).
  here = {it.source or it.origin for it in items} | {origin for origin, _ in input_skips}
  writer.skipped = {k: v for k, v in writer.skipped.items() if v["source"] not in here}
  plan = plan_work(writer, items, input_root(input_path))
  todo = plan.todo
  for origin, reason in input_skips:
    writer.skip(hashlib.sha256(origin.encode()).hexdigest()[:20], origin, reason)

  mesh = shd.make_mesh(c.mesh)
  tokenizer = (toy_tokenizer(os.path.join(output, "toy_tokenizer")) if c.random_encoders and not c.tokenizer
               else os.path.expanduser(c.tokenizer))
  enc = build_encoders(c, mesh, need_video=not prompt_only, tokenizer=tokenizer)
  out_dtype = DTYPES[c.dtype]
  if not writer.has_uncond():
    neg = negative_prompt(c.model_type, c.negative_prompt)
    empty, negative = encode_texts(enc.text, ["", neg], c.batch_size)[:2]
    writer.write_uncond(empty.astype(out_dtype), negative.astype(out_dtype), neg)

  counts = {"cached": 0, "skipped": len(input_skips)}
  bar = tqdm(total=len(todo), desc="preprocess", unit="clip", disable=None)

  def add(item, tensors, extra):
    record = {"id": item.id, "source": item.source or item.origin, "caption": item.caption, **extra}
    writer.add(record, {k: v.astype(out_dtype) for k, v in tensors.items()})
    counts["cached"] += 1
    if c.debug_stop_after_shards and writer.shards_written >= c.debug_stop_after_shards:
      raise Interrupted(f"simulated interruption after {writer.shards_written} shard(s)")

  def skip(item, reason):
    writer.skip(item.id, item.source or item.origin, reason)
    counts["skipped"] += 1
    bar.set_postfix(skipped=counts["skipped"])

  with shd.activate(mesh):
    if prompt_only:
      for s in range(0, len(todo), c.batch_size):
        chunk = todo[s:s + c.batch_size]
        for it, ctx in zip(chunk, encode_texts(enc.text, [it.caption for it in chunk], c.batch_size)):
          add(it, {"context": ctx}, {"bucket": None})
        bar.update(len(chunk))
    else:
      pending = {}  # bucket -> [(item, device frames, info)]

      def encode_bucket(bucket):
        group = pending.pop(bucket)
        vids = [g[1] for g in group]
        vids += [vids[-1]] * (c.batch_size - len(vids))  # pad to the compiled batch; extra rows are dropped
        out = encode_videos(enc, jnp.stack(vids), mesh=mesh, i2v=c.model_type == "i2v", num_frames=c.frames)
        texts = encode_texts(enc.text, [g[0].caption for g in group], c.batch_size)
        for j, (it, _, info) in enumerate(group):
          tensors = {k: v[j] for k, v in out.items()}
          tensors["context"] = texts[j]
          add(it, tensors, dict(info, frames=c.frames, fps=c.fps, bucket=f"{bucket[1]}*{bucket[0]}"))

      read = lambda it: read_clip(it.source, num_frames=c.frames, fps=c.fps, sizes=sizes,  # noqa: E731
                                  max_aspect_change=c.max_aspect_change)
      with concurrent.futures.ThreadPoolExecutor(c.num_workers) as pool:
        window = 2 * c.num_workers
        futures = [pool.submit(read, it) for it in todo[:window]]
        for k, it in enumerate(todo):
          if k + window < len(todo):
            futures.append(pool.submit(read, todo[k + window]))
          try:
            frames, bucket, info = futures[k].result()
          except Skip as e:
            skip(it, str(e))
          else:
            futures[k] = None   # drop the host frames once they are on the device
            pending.setdefault(bucket, []).append((it, resize_clip(frames, *bucket), info))
            if len(pending[bucket]) == c.batch_size:
              encode_bucket(bucket)
          bar.update(1)
        for bucket in list(pending):
          encode_bucket(bucket)
  writer.flush()
  bar.close()
  reasons = {}
  for s in writer.skipped.values():
    r = s["reason"].split(":")[0].split(" (")[0]
    reasons[r] = reasons.get(r, 0) + 1
  summary = {"output": output, "cached": counts["cached"], "already_cached": plan.already, "moved": plan.moved,
             "changed": len(plan.changed), "duplicates": plan.duplicates,
             "skipped": len(writer.skipped), "skip_reasons": reasons, "shards_written": writer.shards_written,
             "total_clips": len(writer.index["clips"]), "seconds": round(time.time() - t0, 1)}
  logging.info("preprocess summary: %s", summary)
  return summary


def summary_line(s) -> str:
  why = ", ".join(f"{n} {r}" for r, n in sorted(s["skip_reasons"].items()))
  moved = f" ({s['moved']} of them moved)" if s["moved"] else ""
  changed = f", {s['changed']} changed since cached and encoded again" if s["changed"] else ""
  return (f"cached {s['cached']} clips in {s['shards_written']} new shard(s) ({s['already_cached']} already "
          f"cached{moved}{changed}, {s['skipped']} skipped{': ' + why if why else ''}; see skipped.json) -> "
          f"{s['output']} "
          f"[{s['total_clips']} clips in all, {s['seconds']} s]")


def main(argv):
  from absl import flags
  from infer import cli
  f = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  try:
    if f.config is None:
      raise UsageError("--config is required, e.g. --config configs/data/t2v_480p.py")
    if not f.input:
      raise UsageError("--input is required: a folder of videos, a .csv/.json/.jsonl index or a .txt of prompts")
    s = run(f.config, f.input, f.output)
  except UsageError as e:
    cli.fail(e)
  except KeyboardInterrupt:
    sys.stderr.write(f"interrupted: the clips cached so far are kept in {f.output}; run the same command again "
                     f"to resume\n")
    sys.exit(130)
  sys.stdout.write(summary_line(s) + "\n")
  if not s["total_clips"]:   # a folder no trainer can read: fail the command (scripts stop here, not later)
    cli.fail(f"no clip could be cached in {s['output']}; the reasons are in skipped.json", exit_code=1)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Preprocessing config (configs/data/<name>.py).", lock_config=True)
  flags.DEFINE_string("input", None, "Folder of videos with .txt sidecars, a .csv/.json/.jsonl index, or a .txt "
                      "of prompts.")
  flags.DEFINE_string("output", None, "Feature folder (shards + index.json); an existing one is resumed.")
  from infer import cli
  app.run(main, flags_parser=cli.flags_parser(what="config", hint="configs/data/<name>.py[:arg]"))
