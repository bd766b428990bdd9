"""Benchmark evaluation: loaders for the local copies of each benchmark and the official scorers.

One module per benchmark family, each with a `load_*` function yielding typed samples (an `id`,
the image(s) or prompt, the gold answer or metadata) and a `score_*` function that takes the
samples and the model outputs keyed by sample id and returns a `BenchmarkResult`:

- `mmmu`, `mmstar`, `mme`, `pope`: understanding (model answers as text; see
  `layout.load_predictions` for the JSON-lines hand-off format);
- `geneval`: generation, judged per image from object detections (`detectors`);
- `wise`: generation, judged by an OpenAI-compatible VLM (WiScore).

`layout` holds the expected directory layouts and download locations; `config` the `eval`
config section. docs/eval.md describes each benchmark, its source and every departure.
"""
