"""The toy world: procedural text-to-video clips, their closed-vocabulary tokenizer and an analytic score.

`world` (scenes, prompts, rendering), `vocab` (words, tokenizer.json), `dataset` (clip folders, the held-out
prompt set), `detect` + `evaluate` (prompt-adherence score of a video). See docs/toyworld.md.
"""
